"""Paths a config or a command names: local paths, ``file://`` URLs and object-store URLs,
checked before anything is read (see :mod:`shardflow.core.storage`)."""

from __future__ import annotations

from pathlib import Path

from shardflow.core.constraints import ConfigError
from shardflow.core.storage import check_url, url_scheme
from shardflow.core.storage_options import check_storage_options


def check_config_locations(config) -> None:
    """Every path of ``config`` a local path or an accepted object-store URL, and
    ``storage_options`` plain values without credentials; raises :class:`ConfigError`."""
    if config.storage_options is None:  # `storage_options:` left empty in the YAML
        config.storage_options = {}
    try:
        check_storage_options(config.storage_options)
        for key, path in [
            ("input.path", config.input.path),
            ("output.runs_dir", config.output.runs_dir),
            *((f"joins[{i}].path", j.path) for i, j in enumerate(config.joins)),
        ]:
            check_url(path, f"config key '{key}':")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def resolve_path(path: str, base_dir: str) -> str:
    """``path`` made absolute against ``base_dir``: globs kept, ``file://`` URLs as their path,
    object-store URLs as they are; relative to a ``base_dir`` in an object store, a URL there.

    Examples
    --------
    >>> resolve_path("trips/*.csv", "/data"), resolve_path("zones.csv", "s3://bucket/jobs")
    ('/data/trips/*.csv', 's3://bucket/jobs/zones.csv')
    """
    if url_scheme(path):
        return str(path)
    if url_scheme(base_dir):  # a config in an object store: its relative paths are there too
        return f"{str(base_dir).rstrip('/')}/{path}"
    p = Path(path[len("file://") :] if str(path).lower().startswith("file://") else path).expanduser()
    return str(p if p.is_absolute() else Path(base_dir) / p)
