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
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

MANIFEST = "manifest.json"
def _host_id() -> str:
    """This host, and its PID namespace where there is one: containers that share a host
    name but not their process ids must not read each other's pids as their own."""
    host = socket.gethostname().replace("/", "_")
    try:
        return f"{host}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return host


_HOST = _host_id()
#: A temporary stage directory: ``.<name>.tmp-<host>-<pid>-<token>`` (or ``.old-``).
_STAGING = re.compile(r"^\..+\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
#: An older shardflow's staging directory (``.etl.tmp-<token>``, no owner) older than this is removed.
STALE_AFTER_SECONDS = 24 * 3600
_LEGACY_STAGING = re.compile(r"^\..+\.(?:tmp|old)-[0-9a-f]{8}$")


def new_run_id() -> str:
    now = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def new_output_dir(path, option: str, overwrite: bool) -> Path:
    """``path`` resolved, refused if it exists and ``overwrite`` is not given (``option``
    names the command-line option in the message)."""
    out = Path(path).expanduser().resolve()
    if out.exists() and not overwrite:
        from shardflow.tasks.errors import ShardflowError

        raise ShardflowError(f"{option} {out}: already exists; choose another path or pass --overwrite")
    return out


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
    tmp = staging / f".{final.name}.tmp-{_owner()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.parent / f".{final.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)


def _owner() -> str:
    return f"{_HOST}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def prepare_runs_dir(runs_dir, key: str = "output.runs_dir") -> Path:
    """Make sure ``runs_dir`` is a writable directory before any work, and clean it.

    Temporary stage directories left by a killed process (``.etl.tmp-*``) are removed when
    their owner is known to be gone: a process of this host (and PID namespace) that no
    longer runs. Another host's are left alone (its run may be live; a directory's mtime
    does not tell), as are names this version does not write, but for an older
    version's owner-less ones older than a day.

    Raises
    ------
    ShardflowError
        ``runs_dir`` is a file, or cannot be created or written; the message names ``key``.
    """
    from shardflow.tasks.errors import ShardflowError

    runs_dir = Path(runs_dir)
    # Nothing is created here (bad input must leave no trace): the directory, or the
    # nearest ancestor it would be created in, is probed.
    existing = runs_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == runs_dir else f"cannot be created: {existing} is a file"
        raise ShardflowError(f"{key} {runs_dir}: {what}; choose a directory for runs")
    try:
        probe = existing / f".write-probe-{_owner()}-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise ShardflowError(f"{key} {runs_dir}: cannot write in {existing} ({err.strerror or type(err).__name__}); "
                             "choose a writable directory") from None
    if existing != runs_dir:
        return runs_dir
    now = time.time()
    for entry in runs_dir.iterdir():
        if not entry.name.startswith(".") or not entry.is_dir():
            continue
        match = _STAGING.match(entry.name)
        if match:
            stale = match["host"] == _HOST and not _pid_alive(int(match["pid"]))
        elif _LEGACY_STAGING.match(entry.name):
            try:
                stale = now - entry.stat().st_mtime > STALE_AFTER_SECONDS
            except FileNotFoundError:
                continue
        else:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
    return runs_dir


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


def update_manifest(run_dir: Path, *, replace_artifacts: str | None = None, **fields) -> dict:
    """Merge ``fields`` into the run's manifest (atomically).

    ``stages`` and ``artifacts`` (``{relative path: sha256}``) are merged by key;
    ``replace_artifacts`` (a path prefix such as ``"train/"``) first drops the recorded
    hashes under it, so a recomputed stage leaves no stale entry behind.
    """
    manifest = read_manifest(run_dir)
    stages = {**manifest.get("stages", {}), **fields.pop("stages", {})}
    artifacts = dict(manifest.get("artifacts", {}))
    if replace_artifacts is not None:
        artifacts = {k: v for k, v in artifacts.items() if not k.startswith(replace_artifacts)}
    artifacts.update(fields.pop("artifacts", {}))
    manifest.update(fields)
    manifest["stages"] = stages
    manifest["artifacts"] = artifacts
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


class RunDir:
    """Every path inside a run directory; no other module spells one.

    ::

        <run>/manifest.json, config.yaml, report.html, performance-report.html
        <run>/etl/        features/ (Parquet), quarantine/, features.zarr, preprocessor.json, summary.json
        <run>/train/      <family>.json and its model files, seconds.json, peak_memory.json, task.json
        <run>/evaluate/   metrics.json, comparison.md
        <run>/checkpoints/<family>/

    A stage is written into a temporary directory first (:func:`stage_output`); the
    ``*_file`` helpers take that directory, the properties the final one.

    Examples
    --------
    >>> run = RunDir("/runs/20261122-101500-ab12cd")
    >>> run.relative(run.preprocessor)
    'etl/preprocessor.json'
    >>> RunDir.etl_file("/tmp/.etl.tmp-x", "features").as_posix()
    '/tmp/.etl.tmp-x/features'
    """

    ETL, TRAIN, EVALUATE = "etl", "train", "evaluate"
    STAGES = (ETL, TRAIN, EVALUATE)
    _ETL_FILES = {"features": "features", "quarantine": "quarantine", "zarr": "features.zarr",
                  "preprocessor": "preprocessor.json", "summary": "summary.json"}
    _TRAIN_FILES = {"seconds": "seconds.json", "peak_memory": "peak_memory.json", "task": "task.json"}
    _EVALUATE_FILES = {"metrics": "metrics.json", "comparison": "comparison.md"}
    _CHECKPOINT_FILES = {"model": "model.ubj", "state": "state.json", "params": "params.pt", "best": "best.pt"}

    def __init__(self, path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # the run's own files
    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def performance_report(self) -> Path:
        return self.path / "performance-report.html"

    def stage(self, name: str) -> Path:
        return self.path / name

    def checkpoints(self, family: str | None = None) -> Path:
        root = self.path / "checkpoints"
        return root / family if family else root

    def relative(self, path) -> str:
        """``path``'s name in the manifest (relative to the run, with forward slashes)."""
        return Path(path).relative_to(self.path).as_posix()

    # the stages' files, in a (temporary or final) stage directory
    @classmethod
    def etl_file(cls, stage_dir, what: str) -> Path:
        return Path(stage_dir) / cls._ETL_FILES[what]

    @classmethod
    def train_file(cls, stage_dir, what: str) -> Path:
        """``what``: seconds, peak_memory, task, or a family's own file name (``mlp.pt``)."""
        return Path(stage_dir) / cls._TRAIN_FILES.get(what, what)

    @classmethod
    def checkpoint_file(cls, directory, what: str, temporary: bool = False) -> Path:
        """A checkpoint's ``model``, ``state``, ``params`` or ``best`` file; ``temporary``: the
        hidden sibling it is written to first (same suffix: XGBoost picks the format from it)."""
        name = cls._CHECKPOINT_FILES[what]
        return Path(directory) / (f".{os.getpid()}-{name}" if temporary else name)

    @classmethod
    def evaluate_file(cls, stage_dir, what: str) -> Path:
        return Path(stage_dir) / cls._EVALUATE_FILES[what]

    # the final stage outputs
    @property
    def features(self) -> Path:
        return self.etl_file(self.stage(self.ETL), "features")

    @property
    def quarantine(self) -> Path:
        return self.etl_file(self.stage(self.ETL), "quarantine")

    @property
    def zarr(self) -> Path:
        return self.etl_file(self.stage(self.ETL), "zarr")

    @property
    def preprocessor(self) -> Path:
        return self.etl_file(self.stage(self.ETL), "preprocessor")

    @property
    def summary(self) -> Path:
        return self.etl_file(self.stage(self.ETL), "summary")

    def trained(self, what: str) -> Path:
        return self.train_file(self.stage(self.TRAIN), what)

    @property
    def metrics(self) -> Path:
        return self.evaluate_file(self.stage(self.EVALUATE), "metrics")

    @property
    def comparison(self) -> Path:
        return self.evaluate_file(self.stage(self.EVALUATE), "comparison")
