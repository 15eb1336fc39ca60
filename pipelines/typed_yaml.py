"""Typed YAML: parse a config, apply dotted overrides, coerce sections to dataclasses.

Every error is a :class:`ConfigError` that names the key (``config key 'train.mlp.lr'``)
and, for an unknown key, suggests the closest known one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing

import yaml

from shardflow.tasks.errors import ShardflowError


class ConfigError(ShardflowError, ValueError):
    """A config value is missing, of the wrong type or inconsistent; the message names the key."""


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 also reads ``on``/``off``/``yes``/``no``
    as booleans, which would turn the join key ``on:`` into ``True``."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def apply_overrides(raw: dict, overrides) -> dict:
    """A copy of ``raw`` with each ``dotted.key=value`` override set."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. cluster.n_workers=2")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        try:
            node[parts[-1]] = parse_yaml(value)
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(f"override {item!r}: the value of '{key.strip()}' is not valid YAML ({problem}); "
                              "close the brackets or quote the value, e.g. train.models=[xgboost]") from None
    return raw


def build_section(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = set(data) - set(fields)
    if unknown:
        key = sorted(unknown)[0]
        close = difflib.get_close_matches(key, fields, n=1)
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f"; known: {', '.join(fields)}"
        raise ConfigError(f"config key '{prefix}{key}' is not a known option{hint}")
    values = {name: coerce(data[name], hints[name], f"{prefix}{name}") for name in fields if name in data}
    return cls(**values)


def coerce(value, hint, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, f"{key}.")
    if origin is list:
        if isinstance(value, (str, int, float)) and args and args[0] is str:
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        if args:
            return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if isinstance(value, bool):  # `persist: true` reads as the boolean; keep its spelling
            return str(value).lower()
        if isinstance(value, (int, float)):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    return value


def check_byte_size(key: str, value, fraction: bool = False, auto: bool = False) -> None:
    """Refuse a byte size Dask cannot parse ("128MB", "2GiB", 1e9), naming the key.

    ``fraction`` also accepts a share of the total ("0.8"); ``auto`` accepts ``"auto"``.

    Examples
    --------
    >>> check_byte_size("input.blocksize", "64MB")
    >>> try:
    ...     check_byte_size("input.blocksize", "lots")
    ... except ConfigError as err:
    ...     print(err)
    config key 'input.blocksize': 'lots' is not a byte size; write e.g. 128MB or 2GiB
    """
    from dask.utils import parse_bytes

    if value is None or (auto and value == "auto"):
        return
    try:
        number = float(value)
        if fraction and 0 < number <= 1:
            return
    except (TypeError, ValueError):
        pass
    try:
        size = parse_bytes(value)
    except (TypeError, ValueError):
        size = None
    if size is None or size <= 0:
        extra = (", a fraction such as 0.8" if fraction else "") + (" or auto" if auto else "")
        raise ConfigError(f"config key '{key}': {value!r} is not a byte size; write e.g. 128MB or 2GiB{extra}")
