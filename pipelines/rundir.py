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
import os
import re
import socket
import time
import logging
import uuid
from pathlib import Path

from shardflow.tasks.errors import ShardflowError
from shardflow.tasks.storage import StorePath, location, remove_tree

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


_HOST = _host_id()
#: A temporary stage directory: ``.<name>.tmp-<host>-<pid>-<token>`` (or ``.old-``).
_STAGING = re.compile(r"^\..+\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
#: An older shardflow's staging directory (``.etl.tmp-<token>``, no owner) older than this is removed.
STALE_AFTER_SECONDS = 24 * 3600
_LEGACY_STAGING = re.compile(r"^\..+\.(?:tmp|old)-[0-9a-f]{8}$")


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


def new_output_dir(path, option: str, overwrite: bool, keep: dict | None = None, inputs: dict | None = None) -> Path:
    """``path`` resolved, refused if it exists and ``overwrite`` is not given (``option``
    names the command-line option in the message); if it is, holds or lies inside one of
    ``keep`` (``{option: path}``: the run being read, which an overwrite would destroy and
    the output's files would change); or if it is or holds one of ``inputs`` (an output may
    lie beside or below its input files, never over them).

    Examples
    --------
    >>> new_output_dir("/runs/r1/scores", "--output", True, keep={"--run": "/runs/r1"})
    Traceback (most recent call last):
    ...
    shardflow.tasks.errors.ShardflowError: --output /runs/r1/scores: lies inside --run /runs/r1, which it would change; write the output elsewhere
    """
    from shardflow.tasks.errors import ShardflowError

    out = location(path).expanduser().resolve()
    if isinstance(out, StorePath) and "/" not in out.key:
        raise ShardflowError(f"{option} {out}: a whole bucket; give a prefix in it ({out}/predictions)")
    checks = [(o, p, True) for o, p in (keep or {}).items()] + [(o, p, False) for o, p in (inputs or {}).items()]
    for other_option, other, inside_too in checks:
        other = location(other).expanduser().resolve()
        relation = _nesting(out, other)
        if relation is not None and (inside_too or relation != "lies inside"):
            raise ShardflowError(f"{option} {out}: {relation} {other_option} {other}, which it would "
                                 f"{'destroy' if relation != 'lies inside' else 'change'}; write the output elsewhere")
    if out.exists() and not overwrite:
        raise ShardflowError(f"{option} {out}: already exists; choose another path or pass --overwrite")
    return out


def _nesting(out, other) -> str | None:
    """How ``out`` and ``other`` overlap: ``"is"``, ``"holds"``, ``"lies inside"`` or None."""
    a, b = str(out).rstrip("/"), str(other).rstrip("/")
    if a == b:
        return "is"
    if b.startswith(a + "/"):
        return "holds"
    if a.startswith(b + "/"):
        return "lies inside"
    return None


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
    tmp = staging / f".{final.name}.tmp-{_owner()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        remove_tree(tmp)
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        old = final.parent / f".{final.name}.old-{_owner()}-{uuid.uuid4().hex[:8]}"
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


#: The file that says which process a run directory belongs to while it runs.
LOCK_FILE = ".lock"


class RunInUseError(ShardflowError):
    """A run directory that another live process is writing (the message names it)."""


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (None: no such process): a pid reused later is another process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, another user's


def claim_run(run_dir) -> bool:
    """Make ``run_dir`` this process's until :func:`release_run`; False when another live
    process holds it.

    Two jobs on one runs directory may pick the same run to reuse its stages; only one may
    write it, or one would print its table while the directory holds the other's models.
    The claim is a lock file created exclusively (``O_EXCL``) holding the owner's host, pid
    and start time; a claim left by a process that is gone (same host, pid not alive or
    reused) is taken over. In an object store the claim is an object written and read back:
    two jobs racing within the same second may both pass, which the manifest's hashes then
    reveal, so keep one job per run directory there.
    """
    run_dir = location(run_dir)
    lock = run_dir / LOCK_FILE
    me = {"host": _HOST, "pid": os.getpid(), "started": _process_started(os.getpid())}
    for _ in range(2):
        holder = _read_lock(lock)
        if holder is not None:
            if holder == me:
                return True
            if _holder_alive(holder):
                return False
            logger.info("run %s: taking over the claim of process %s, which is gone", run_dir.name, holder.get("pid"))
            _remove_lock(lock)
        run_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(run_dir, StorePath):
            lock.write_text(json.dumps(me))
            return _read_lock(lock) == me
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            continue  # another process claimed it between the read and the create: look again
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(me))
        return True
    return False


def _holder_alive(holder: dict) -> bool:
    """Whether the claim's process may still be running (another host's, or a damaged
    claim, cannot be proven gone)."""
    pid = holder.get("pid")
    if holder.get("host") != _HOST or not isinstance(pid, int) or pid <= 0:
        return True
    started = _process_started(pid)
    if started is None:
        return False
    recorded = holder.get("started")
    return started < 0 or not isinstance(recorded, (int, float)) or abs(started - recorded) < 1.0


def release_run(run_dir) -> None:
    """Give up this process's claim on ``run_dir`` (nothing if it is not ours)."""
    lock = location(run_dir) / LOCK_FILE
    holder = _read_lock(lock)
    if holder is not None and holder.get("host") == _HOST and holder.get("pid") == os.getpid():
        _remove_lock(lock)


def _remove_lock(lock) -> None:
    if isinstance(lock, StorePath):
        lock.remove_tree()
    else:
        lock.unlink(missing_ok=True)


def run_holder(run_dir) -> str:
    """Who holds ``run_dir``'s claim, in words (for messages)."""
    holder = _read_lock(location(run_dir) / LOCK_FILE) or {}
    return f"process {holder.get('pid', '?')} on {str(holder.get('host', '?')).split('.')[0]}"


def _read_lock(lock) -> dict | None:
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged: not ours, not provably stale
    return holder if isinstance(holder, dict) else {}


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

    runs_dir = location(runs_dir)
    if isinstance(runs_dir, StorePath):
        # A write probe, as for a directory: credentials allowed a prefix only (no HeadBucket)
        # pass it, and a read-only or missing bucket is found before any work.
        probe = runs_dir / f".write-probe-{_owner()}-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"")
        except FileNotFoundError:
            raise ShardflowError(f"{key} {runs_dir}: bucket {runs_dir.bucket!r} does not exist (or these "
                                 "credentials cannot see it); create it or choose another") from None
        except PermissionError:
            raise ShardflowError(f"{key} {runs_dir}: these credentials cannot write there; give them write "
                                 "access to the prefix, or choose another") from None
        except Exception as err:  # noqa: BLE001 - any client failure: say which store and why
            raise ShardflowError(f"{key} {runs_dir}: cannot reach the store ({type(err).__name__}: "
                                 f"{str(err).splitlines()[0] if str(err) else ''}); check the URL, "
                                 "storage_options and the credentials in the environment") from None
        try:
            probe.unlink(missing_ok=True)
        except OSError as err:
            raise ShardflowError(f"{key} {runs_dir}: these credentials can write there but not delete "
                                 f"({type(err).__name__}); shardflow replaces stages: give them delete access "
                                 f"(and remove {probe.name})") from None
        return runs_dir
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
            remove_tree(entry)
    return runs_dir


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
    prefix = run_dir / f"{stage}@{_owner()}-{uuid.uuid4().hex[:8]}"
    try:
        yield prefix
    except BaseException:
        remove_tree(prefix)
        raise
    manifest = read_manifest(run_dir)
    old = manifest.get("locations", {}).get(stage)
    # The commit: one object, naming the new prefix. The stage's record (its key, what it
    # holds) is written by the caller next; until then the stage does not count as current.
    manifest["locations"] = {**manifest.get("locations", {}), stage: prefix.name}
    manifest.setdefault("stages", {}).pop(stage, None)
    manifest["artifacts"] = {k: v for k, v in manifest.get("artifacts", {}).items() if stage_of(k) != stage}
    write_text_atomic(run_dir / MANIFEST, json.dumps(manifest, indent=1, default=str))
    for entry in run_dir.iterdir():
        match = _STAGE_PREFIX.match(entry.name)
        if entry.name == old or (match and match["stage"] == stage and entry != prefix
                                 and match["host"] == _HOST and not _pid_alive(int(match["pid"]))):
            remove_tree(entry)  # the replaced stage, and this host's abandoned attempts


def stage_of(relative: str) -> str:
    """The stage an artifact's manifest name belongs to (``train@x-1-ab12cd34/a.json`` → ``train``)."""
    return relative.split("/", 1)[0].split("@", 1)[0]


#: The manifest's sections and what each holds: a manifest whose sections are of another
#: type would fail later with a traceback far from the file, so it is damaged too.
_MANIFEST_SECTIONS = {"stages": dict, "artifacts": dict, "locations": dict, "seeds": dict, "input": dict,
                      "cluster": dict, "versions": dict, "plan": dict, "tracking": dict, "joins": list}


class ManifestError(ShardflowError):
    """A run's ``manifest.json`` cannot be read: the message names the file and why."""

    def __init__(self, path, why: str):
        super().__init__(f"{path}: damaged ({why}); the run cannot be used: restore the file, or remove the run "
                         f"directory {location(path).parent} and run again")
        self.path = path


def read_manifest(run_dir) -> dict:
    """The run's manifest (``{}`` for a directory that has none): the one place it is read.

    A run directory is untrusted (shared, copied, cut short by a full disk): the file must be
    a JSON object whose sections have their types.

    Raises
    ------
    ManifestError
        The file is truncated, not JSON, or not a manifest; the message names the file.
    """
    path = location(run_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(path, "not UTF-8 text") from None
    except IsADirectoryError:
        raise ManifestError(path, "a directory, not a file") from None
    except json.JSONDecodeError as err:
        why = "empty file" if not err.doc.strip() else f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}"
        raise ManifestError(path, why) from None
    if not isinstance(manifest, dict):
        raise ManifestError(path, f"holds a {type(manifest).__name__}, not a JSON object")
    for section, kind in _MANIFEST_SECTIONS.items():
        if section in manifest and not isinstance(manifest[section], kind):
            raise ManifestError(path, f"'{section}' is not a JSON {'object' if kind is dict else 'array'}")
    if not all(isinstance(info, dict) for info in manifest.get("stages", {}).values()):
        raise ManifestError(path, "a stage's entry is not a JSON object")
    return manifest


def record_config(run_dir, text: str) -> None:
    """Write the resolved job (``text``, YAML) as the run's ``config.yaml`` and record its
    hash. The ETL writes it; a job that reuses a run's ETL with other training options
    writes it again before it trains, so the file always says what the models were trained
    with (the ETL's part is the same: the ETL's key says so)."""
    import hashlib

    run = RunDir(run_dir)
    write_text_atomic(run.config, text)
    update_manifest(run_dir, artifacts={run.relative(run.config): hashlib.sha256(run.config.read_bytes()).hexdigest()})


def update_manifest(run_dir: Path, *, replace_artifacts: str | None = None, **fields) -> dict:
    """Merge ``fields`` into the run's manifest (atomically).

    ``stages`` and ``artifacts`` (``{relative path: sha256}``) are merged by key;
    ``replace_artifacts`` (a stage such as ``"train"``) first drops the recorded hashes of
    its files, so a recomputed stage leaves no stale entry behind.
    """
    manifest = read_manifest(run_dir)
    stages = {**manifest.get("stages", {}), **fields.pop("stages", {})}
    artifacts = dict(manifest.get("artifacts", {}))
    if replace_artifacts is not None:
        artifacts = {k: v for k, v in artifacts.items() if stage_of(k) != replace_artifacts}
    artifacts.update(fields.pop("artifacts", {}))
    manifest.update(fields)
    manifest["stages"] = stages
    manifest["artifacts"] = artifacts
    write_text_atomic(location(run_dir) / MANIFEST, json.dumps(manifest, indent=1, default=str))
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
        """The claim of the process writing the run (:func:`claim_run`)."""
        return self.path / LOCK_FILE

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
            return self.path / read_manifest(self.path).get("locations", {}).get(name, name)
        return self.path / name

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
    def comparison(self) -> Path:
        return self.evaluate_file(self.stage(self.EVALUATE), "comparison")
