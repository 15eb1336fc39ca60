"""Stage keys: what each stage's output was computed from.

The ETL's key covers the input files' fingerprint, the config sections it reads and
the code version; training's covers the ETL key and the ``train`` section; evaluation's
covers the training key. A stage whose recorded key equals the current one is not
recomputed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from dask.base import tokenize

from shardflow.pipelines.config import Config


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of shardflow's own source: a code change makes every stage stale."""
    import shardflow.cluster
    import shardflow.data
    import shardflow.pipelines
    import shardflow.tasks

    digest = hashlib.sha256()
    for package in (shardflow.tasks, shardflow.pipelines, shardflow.cluster, shardflow.data):
        root = Path(package.__file__).parent
        for path in sorted(root.glob("*.py")) + sorted(root.glob("*.yaml")):
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def stage_keys(config: Config, source=None) -> dict:
    """The key of each stage's output for ``config`` (see the module docstring).

    ``source`` is the inspected input when the caller has it (its footers are not read again).
    """
    from shardflow.pipelines.source import file_fingerprint, inspect_source

    source = source or inspect_source(config)
    dims = [config.resolve(j.path) for j in config.joins]
    data = config.to_dict()
    etl_config = {k: data[k] for k in ("input", "joins", "target", "features", "clean", "encode", "split")}
    etl_config["input"] = {k: v for k, v in data["input"].items() if k != "persist"}  # how, not what
    etl_config["output"] = {k: data["output"][k] for k in ("keep_columns", "zarr_chunk_rows")}
    etl = tokenize(source.fingerprint, file_fingerprint(dims) if dims else "", etl_config, code_version())
    train = tokenize(etl, data["train"], code_version())
    return {"etl": etl[:16], "train": train[:16], "evaluate": evaluate_key(train[:16])}


def evaluate_key(train_key: str) -> str:
    """The evaluation's key, from the key of the training it evaluates."""
    return tokenize(train_key, code_version())[:16]
