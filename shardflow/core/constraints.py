"""Typed YAML: parse a config, apply dotted overrides, coerce sections to dataclasses.

Every error is a :class:`ConfigError` that names the key (``config key 'train.mlp.lr'``)
and, for an unknown key, suggests the closest known one.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

import yaml

from shardflow.core.errors import ShardflowError
from shardflow.core.numbers import number_problem

#: Upper bounds of the numeric options: far above any real job, below what fails deep inside
#: a library (a seed NumPy's legacy generator refuses, a layer whose weights no memory holds)
#: or runs for ever (a billion boosting rounds).
MAX_SEED = 2**32 - 1  #: what NumPy, XGBoost and torch all accept as a seed
MAX_ROUNDS = 1_000_000  #: boosting rounds, epochs, patience
MAX_ROWS = 2**31 - 1  #: rows of a partition, a chunk or a batch
MAX_PARTITIONS = 100_000  #: input.partitions: the scheduler's cost grows with every task
MAX_LAYER_WIDTH = 16_384  #: two such layers hold 1 GiB of weights
MAX_EMBEDDING_DIM = 1_024
MAX_SECONDS = 30 * 24 * 3600


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
# YAML 1.2 numbers: ``1e-3`` and ``1e6`` are floats (YAML 1.1 wants a dot, ``1.0e-3``, and
# reads them as text, so ``lr: 1e-3`` would be refused as "not a number").
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


#: Values a config may hold once its YAML aliases are expanded: far above any real job, far
#: below what an alias "bomb" (a few lines that expand exponentially) would make every later
#: copy, comparison and hash of the config do.
MAX_VALUES = 100_000


def parse_yaml(text: str, source="the value"):
    """Plain YAML data (a SafeLoader: no Python objects), refused if its aliases expand to
    more than :data:`MAX_VALUES` values (the error names ``source``).

    Examples
    --------
    >>> parse_yaml("a: &x [1, 2]\\nb: *x")
    {'a': [1, 2], 'b': [1, 2]}
    """
    data = yaml.load(text, Loader=_Loader)
    count, stack = 0, [data]
    while stack:  # every value as the YAML's aliases repeat it (no memo: that is what expands)
        value = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(
                f"{source}: the YAML expands to more than {MAX_VALUES:,} values (through its aliases, "
                "`*name`); write the values out"
            )
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return data


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
            node[parts[-1]] = parse_yaml(value, source=f"override {key!r}")
        except yaml.YAMLError as err:
            problem = getattr(err, "problem", None) or str(err).splitlines()[0]
            raise ConfigError(
                f"override {item!r}: the value of '{key.strip()}' is not valid YAML ({problem}); "
                "close the brackets or quote the value, e.g. train.models=[xgboost]"
            ) from None
    return raw


def list_hint(key: str, value) -> str:
    """How a list is written, for a one-item list of a comma list (``--set train.models=a,b``)."""
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and "," in value[0]:
        return f"; a list is written in brackets: {key}=[{value[0]}]"
    return ""


def build_section(cls, data, prefix: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}': expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = set(data) - set(fields)
    if unknown:
        odd = [key for key in unknown if not isinstance(key, str)]
        if odd:  # YAML reads an unquoted true/false or number as a non-string key
            raise ConfigError(
                f"config key '{prefix}{odd[0]}' is a {type(odd[0]).__name__}, not a name (YAML reads unquoted "
                "true/false and numbers so): quote the key, or remove it"
            )
        key = sorted(unknown)[0]
        moved = getattr(cls, "MOVED_KEYS", {}).get(key)
        if moved:
            raise ConfigError(f"config key '{prefix}{key}' has moved: set '{moved}' instead")
        replaced = getattr(cls, "REPLACED_KEYS", {}).get(key)
        if replaced:
            raise ConfigError(
                f"config key '{prefix}{key}' was replaced by '{replaced[0]}' ({replaced[1]}): set that instead"
            )
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
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}{list_hint(key, [value])}")
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
        if isinstance(value, float) and value.is_integer():  # 1e6, 300.0: a whole number
            value = int(value)
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


# ----------------------------------------------------------------------------- declared constraints


class Constraint:
    """What a config field accepts; :meth:`problem` says what is wrong with a value, or None.

    Every number in a field's value (nested in its lists and mappings too) must be finite
    and fit 64 bits (:func:`number_problem`) unless the constraint ``allows_non_finite``.
    """

    allows_none = False
    allows_non_finite = False

    def problem(self, value) -> str | None:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class Between(Constraint):
    """A number in ``[low, high]`` (an open end: ``None``; ``open_low``/``open_high`` exclude the end);
    for a list, each of its items.

    Examples
    --------
    >>> Between(0, 1, open_high=True).problem(1.0)
    'must be between 0 and 1 (excluding 1), got 1.0'
    >>> Between(1).problem(0)
    'must be at least 1, got 0'
    >>> Between(1).problem(3) is None
    True
    >>> Between(0, 1).problem(float("nan"))
    'must be a finite number, got nan'
    >>> Between(1, 2**14).problem([64, 10**11])
    'item 1 must be between 1 and 16,384, got 100000000000'
    """

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def problem(self, value):
        if isinstance(value, list):
            for i, item in enumerate(value):
                problem = self.problem(item)
                if problem:
                    return f"item {i} {problem}"
            return None
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison
            return f"must be a finite number, got {value!r}"
        too_low = self.low is not None and (value <= self.low if self.open_low else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.open_high else value > self.high)
        if not (too_low or too_high):
            return None
        low, high = _bound(self.low), _bound(self.high)
        if self.low is not None and self.high is not None:
            excluded = [_bound(v) for v, is_open in ((self.low, self.open_low), (self.high, self.open_high)) if is_open]
            note = " (exclusive)" if len(excluded) == 2 else f" (excluding {excluded[0]})" if excluded else ""
            allowed = f"between {low} and {high}{note}"
        elif self.low is not None:
            allowed = f"{'above' if self.open_low else 'at least'} {low}"
        else:
            allowed = f"{'below' if self.open_high else 'at most'} {high}"
        return f"must be {allowed}, got {value!r}"


def _bound(value) -> str:
    """A bound as a message writes it: whole numbers with thousands separators (a seed's
    4,294,967,295, not 4.29497e+09)."""
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class OneOf(Constraint):
    """One of ``options`` (each item, for a list), or of what a function gives (options that grow)."""

    options: tuple | Callable

    def problem(self, value):
        options = tuple(self.options()) if callable(self.options) else self.options
        items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
        bad = [v for v in items if v not in options]
        return None if not bad else f"{bad[0]!r} is not one of {', '.join(map(str, options))}"


@dataclass(frozen=True)
class ByteSize(Constraint):
    """A byte size Dask parses (``128MB``); ``fraction`` also takes a share (``0.8``), ``auto`` takes auto."""

    fraction: bool = False
    auto: bool = False

    def problem(self, value):
        try:
            check_byte_size("", value, fraction=self.fraction, auto=self.auto)
        except ConfigError as err:
            return str(err).split(": ", 2)[-1]
        return None


@dataclass(frozen=True)
class Text(Constraint):
    """Free text: a path, a column name, an address; ``what`` says which (documentation).

    ``nonempty`` refuses the empty string.
    """

    what: str
    nonempty: bool = False

    def problem(self, value):
        return f"is required ({self.what})" if self.nonempty and not value else None


@dataclass(frozen=True)
class Names(Constraint):
    """A list (or mapping) of column names, none empty, none twice."""

    def problem(self, value):
        names = list(value)
        if any(not str(n) for n in names):
            return "holds an empty name"
        repeated = sorted({n for n in names if names.count(n) > 1})
        return f"names {repeated[0]!r} more than once; list each column once" if repeated else None


@dataclass(frozen=True)
class Anything(Constraint):
    """Passed through unchecked, for the reason given (e.g. XGBoost's own parameters), but
    for its numbers, finite unless ``allows_non_finite`` (XGBoost's ``missing: .nan``)."""

    why: str
    allows_non_finite: bool = False

    def problem(self, value):
        return None


@dataclass(frozen=True)
class Section(Constraint):
    """A nested section (checked field by field)."""

    def problem(self, value):
        return None


def option(default=dataclasses.MISSING, *, factory=dataclasses.MISSING, check: Constraint, **metadata):
    """A config field with its constraint: ``lr: float = option(3e-3, check=Between(0, open_low=True))``."""
    metadata = {**metadata, "check": check}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def field_problems(section, prefix: str = "") -> list:
    """Every violation of every declared constraint in ``section`` and its subsections,
    as ``"config key 'a.b': <value> — <what is allowed>"`` lines."""
    problems = []
    for f in dataclasses.fields(section):
        if f.metadata.get("internal"):
            continue
        key, value = f"{prefix}{f.name}", getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            problems.extend(field_problems(value, f"{key}."))
            continue
        if isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
            for i, item in enumerate(value):
                problems.extend(field_problems(item, f"{key}[{i}]."))
            continue
        check = f.metadata.get("check")
        if value is None or check is None:
            continue
        problem = check.problem(value) or (None if check.allows_non_finite else number_problem(value))
        if problem:
            problems.append(f"config key '{key}': {problem}{list_hint(key, value)}")
    return problems
