"""Run directories: atomic stage outputs and the run manifest.

A run lives in ``<runs_dir>/<run_id>/``. Each stage writes into a hidden temporary
sibling and renames it into place only when complete, so a failed or interrupted stage
leaves nothing a later stage would read. The run directory itself appears with its
first completed stage: bad input leaves no trace at all.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import uuid
from pathlib import Path

MANIFEST = "manifest.json"


def new_run_id() -> str:
    now = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_directory(final: Path, staging: Path | None = None):
    """Yield a temporary directory that becomes ``final`` when the block succeeds.

    The temporary directory is a hidden sibling (in ``staging``, default ``final``'s
    parent) on the same file system, so the last step is one rename. On any exception
    (or KeyboardInterrupt) it is removed and ``final`` is untouched; an existing
    ``final`` is replaced only after the new one is complete.
    """
    final = Path(final)
    staging = Path(staging) if staging is not None else final.parent
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def stage_output(run_dir: Path, stage: str):
    """:func:`atomic_directory` for ``run_dir / stage``, staged beside the run directory:
    a run directory appears only with its first completed stage."""
    run_dir = Path(run_dir)
    return atomic_directory(run_dir / stage, staging=run_dir.parent)


def read_manifest(run_dir: Path) -> dict:
    path = Path(run_dir) / MANIFEST
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def update_manifest(run_dir: Path, **fields) -> dict:
    """Merge ``fields`` into the run's manifest (atomically); ``stages`` is merged by key."""
    manifest = read_manifest(run_dir)
    stages = {**manifest.get("stages", {}), **fields.pop("stages", {})}
    manifest.update(fields)
    manifest["stages"] = stages
    write_text_atomic(Path(run_dir) / MANIFEST, json.dumps(manifest, indent=1, default=str))
    return manifest


def library_versions() -> dict:
    """Versions of the libraries a run's results depend on (absent ones omitted)."""
    from importlib import metadata

    names = ["shardflow", "dask", "distributed", "pandas", "pyarrow", "numpy", "zarr", "xgboost",
             "torch", "scikit-learn", "cudf-cu13", "dask-cuda"]
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions
