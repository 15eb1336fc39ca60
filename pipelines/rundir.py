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
def stage_output(run_dir: Path, stage: str):
    """Yield a temporary directory that becomes ``run_dir / stage`` when the block succeeds.

    On any exception (or KeyboardInterrupt) the temporary directory is removed and
    nothing appears at ``run_dir / stage``. A previous output of the same stage is
    replaced only after the new one is complete.
    """
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f".{run_dir.name}.{stage}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    run_dir.mkdir(exist_ok=True)
    final = run_dir / stage
    if final.exists():
        old = run_dir / f".{stage}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


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
