"""Run directories: atomic stage outputs and the run manifest.

A run lives in ``<runs_dir>/<run_id>/``. Each stage writes into a hidden temporary
sibling and renames it into place only when complete, so a failed or interrupted stage
leaves nothing a later stage would read. The run directory itself appears with its
first completed stage: bad input leaves no trace at all.

An object store has no rename (a "rename" copies every object, one at a time, and readers
would see a half-copied stage). There a stage is written under a new prefix of its own
(``etl@<owner>-<token>/``) and the run's manifest, one object written whole, is the commit:
it records which prefix holds each completed stage, and readers resolve a stage through it
(:meth:`RunDir.stage`). Until the manifest names it, a prefix is invisible; the prefix it
replaces is deleted after the commit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import re
import socket
import time
import uuid
from pathlib import Path

from shardflow.core.storage import StorePath, location, remove_tree
from shardflow.pipelines.records.manifest import Manifest, ManifestError, StageRecord

logger = logging.getLogger("shardflow.rundir")

MANIFEST = "manifest.json"


def _host_id() -> str:
    """This host, and its PID namespace where there is one: containers that share a host
    name but not their process ids must not read each other's pids as their own."""
    host = socket.gethostname().replace("/", "_")
    try:
        return f"{host}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return host


#: This host (and PID namespace): the owner part of staging names and claims.
HOST_ID = _host_id()


def new_run_id() -> str:
    now = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{now}-{uuid.uuid4().hex[:6]}"


def write_bytes_atomic(path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one: through a
    temporary file and an atomic rename, or as one object (an object store's writes are whole)."""
    path = location(path)
    if isinstance(path, StorePath):
        path.write_bytes(data)
        return
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text_atomic(path, text: str) -> None:
    """:func:`write_bytes_atomic` for text (UTF-8)."""
    write_bytes_atomic(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_directory(final: Path, staging: Path | None = None):
    """Yield a temporary directory that becomes ``final`` when the block succeeds.

    The temporary directory is a hidden sibling (in ``staging``, default ``final``'s
    parent) on the same file system, so the last step is one rename. On any exception
    (or KeyboardInterrupt) it is removed and ``final`` is untouched; an existing
    ``final`` is replaced only after the new one is complete.
    """
    final = location(final)
    if isinstance(final, StorePath):
        with _object_store_directory(final) as tmp:
            yield tmp
        return
    staging = Path(staging) if staging is not None else final.parent
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".{final.name}.tmp-{owner()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove_tree(tmp)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.parent / f".{final.name}.old-{owner()}-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        remove_tree(old)
    else:
        os.rename(tmp, final)


#: Written last into an output prefix on an object store (predictions, exports): the
#: prefix is complete when this object lists every file of it.
COMMIT_FILE = "_shardflow_commit.json"


@contextlib.contextmanager
def _object_store_directory(final: StorePath):
    """An output prefix outside a run (predictions, an export) on an object store: an
    existing one is deleted first, the files are written in place, and :data:`COMMIT_FILE`
    (the list of files) is written last; on failure the prefix is deleted again."""
    remove_tree(final)
    try:
        yield final
        files = [p.relative_to(final).as_posix() for p in final.rglob("*")]
        (final / COMMIT_FILE).write_text(json.dumps({"files": files, "completed": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    except BaseException:
        remove_tree(final)
        raise


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def owner() -> str:
    """This process, as staging names spell their owner."""
    return f"{HOST_ID}-{os.getpid()}"


def stage_output(run_dir, stage: str):
    """:func:`atomic_directory` for ``run_dir / stage``, staged beside the run directory:
    a run directory appears only with its first completed stage. On an object store, a
    prefix of its own committed by the manifest (see the module's notes)."""
    run_dir = location(run_dir)
    if isinstance(run_dir, StorePath):
        return _object_store_stage(run_dir, stage)
    return atomic_directory(run_dir / stage, staging=run_dir.parent)


#: A stage's prefix in a run on an object store: ``<stage>@<host>-<pid>-<token>``.
_STAGE_PREFIX = re.compile(r"^(?P<stage>[a-z]+)@(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")


@contextlib.contextmanager
def _object_store_stage(run_dir: StorePath, stage: str):
    prefix = run_dir / f"{stage}@{owner()}-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    except BaseException:
        remove_tree(prefix)
        raise
    manifest = read_manifest(run_dir)
    old = manifest.locations.get(stage)
    # The commit: one object, naming the new prefix. The stage's record (its key, what it
    # holds) is written by the caller next; until then the stage does not count as current.
    write_manifest(run_dir, manifest.without_stage(stage, location=prefix.name))
    for entry in run_dir.iterdir():
        match = _STAGE_PREFIX.match(entry.name)
        if entry.name == old or (
            match
            and match["stage"] == stage
            and entry != prefix
            and match["host"] == HOST_ID
            and not pid_alive(int(match["pid"]))
        ):
            remove_tree(entry)  # the replaced stage, and this host's abandoned attempts


def read_manifest(run_dir) -> Manifest:
    """The run's manifest (an empty one, false, for a directory that has none): the one place
    it is read (validated by :meth:`Manifest.from_bytes`).

    Raises
    ------
    ManifestError
        The file is truncated, not JSON, or not a manifest; the message names the file.
    """
    path = location(run_dir) / MANIFEST
    if not path.exists():
        return Manifest()
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise ManifestError(path, "a directory, not a file") from None
    return Manifest.from_bytes(raw, path)


def write_manifest(run_dir, manifest: Manifest) -> None:
    """Write ``manifest`` as the run's ``manifest.json`` (atomically: one rename, or one object)."""
    write_text_atomic(location(run_dir) / MANIFEST, manifest.to_json())


def record_config(run_dir, text: str) -> None:
    """Write the resolved job (``text``, YAML) as the run's ``config.yaml`` and record its
    hash. The ETL writes it; a job that reuses a run's ETL with other training options
    writes it again before it trains, so the file always says what the models were trained
    with (the ETL's part is the same: the ETL's key says so)."""
    import hashlib

    run = RunDir(run_dir)
    write_text_atomic(run.config, text)
    update_manifest(run_dir, artifacts={run.relative(run.config): hashlib.sha256(run.config.read_bytes()).hexdigest()})


def update_manifest(run_dir, *, replace_artifacts: str | None = None, **fields) -> Manifest:
    """Merge ``fields`` into the run's manifest (atomically; see :meth:`Manifest.merged`)."""
    manifest = read_manifest(run_dir).merged(replace_artifacts=replace_artifacts, **fields)
    write_manifest(run_dir, manifest)
    return manifest


def find_run(runs_dir, etl_key: str):
    """The newest run under ``runs_dir`` whose ETL output is current for ``etl_key`` (None if
    none); a run whose manifest is damaged is reported and passed over (it is not this job's
    to repair)."""
    runs_dir = location(runs_dir)
    if not runs_dir.is_dir():
        return None
    for run_dir in sorted((p for p in runs_dir.iterdir() if not p.name.startswith(".") and p.is_dir()), reverse=True):
        try:
            if RunDir(run_dir).is_current(RunDir.ETL, etl_key):
                return run_dir
        except ManifestError as err:
            logger.warning("not reused: %s", err)
    return None


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
    _ETL_FILES = {
        "features": "features",
        "quarantine": "quarantine",
        "zarr": "features.zarr",
        "preprocessor": "preprocessor.json",
        "summary": "summary.json",
    }
    _TRAIN_FILES = {"seconds": "seconds.json", "peak_memory": "peak_memory.json", "task": "task.json"}
    _EVALUATE_FILES = {"metrics": "metrics.json", "comparison": "comparison.md", "explanations": "explanations.json"}
    _CHECKPOINT_FILES = {"model": "model.ubj", "state": "state.json", "params": "params.pt", "best": "best.pt"}

    def __init__(self, path):
        self.path = location(path)

    def __fspath__(self) -> str:
        if isinstance(self.path, StorePath):
            raise TypeError(f"{self.path} is in an object store, not a local path")
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # the run's own files
    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def lock(self) -> Path:
        """The claim of the process writing the run (:func:`shardflow.pipelines.records.ownership.claim_run`)."""
        return self.path / ".lock"

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
        """The stage's directory; on an object store, the prefix the manifest committed."""
        if isinstance(self.path, StorePath):
            return self.path / read_manifest(self.path).locations.get(name, name)
        return self.path / name

    def read_manifest(self) -> Manifest:
        """The run's :class:`~shardflow.pipelines.records.manifest.Manifest` (see :func:`read_manifest`)."""
        return read_manifest(self.path)

    def is_current(self, stage: str, key: str) -> bool:
        """Whether ``stage``'s output exists here and was produced under ``key``."""
        return self.read_manifest().key_of(stage) == key and self.stage(stage).is_dir()

    def record_stage(self, stage: str, record: StageRecord, *, artifacts: dict, **sections) -> Manifest:
        """Record ``stage`` as completed (its ``record``, the SHA-256 of its files in
        ``artifacts``, which replace the stage's old ones) and any other manifest ``sections``."""
        return update_manifest(
            self.path, stages={stage: record}, artifacts=artifacts, replace_artifacts=stage, **sections
        )

    def checkpoints(self, family: str | None = None) -> Path:
        root = self.path / "checkpoints"
        return root / family if family else root

    def relative(self, path) -> str:
        """``path``'s name in the manifest (relative to the run, with forward slashes)."""
        return location(path).relative_to(self.path).as_posix()

    # the stages' files, in a (temporary or final) stage directory
    @classmethod
    def etl_file(cls, stage_dir, what: str) -> Path:
        return location(stage_dir) / cls._ETL_FILES[what]

    @classmethod
    def train_file(cls, stage_dir, what: str) -> Path:
        """``what``: seconds, peak_memory, task, or a family's own file name (``mlp.pt``)."""
        return location(stage_dir) / cls._TRAIN_FILES.get(what, what)

    @classmethod
    def checkpoint_file(cls, directory, what: str) -> Path:
        """A checkpoint's ``model``, ``state``, ``params`` or ``best`` file (written with
        :func:`write_bytes_atomic`)."""
        return location(directory) / cls._CHECKPOINT_FILES[what]

    @classmethod
    def evaluate_file(cls, stage_dir, what: str) -> Path:
        return location(stage_dir) / cls._EVALUATE_FILES[what]

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
    def explanations(self) -> Path:
        return self.evaluate_file(self.stage(self.EVALUATE), "explanations")

    @property
    def comparison(self) -> Path:
        return self.evaluate_file(self.stage(self.EVALUATE), "comparison")
