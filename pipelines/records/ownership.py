"""Who may write where: one process per run directory, outputs kept off what they read, and a
runs directory cleaned of what dead processes left behind.

Two jobs on one runs directory may pick the same run to reuse its stages; only one may
write it (:func:`claim_run`). An output directory replaced with ``--overwrite`` must never be
the run or the input being read (:func:`new_output_dir`). Staging directories of killed
processes are removed when their owner is provably gone (:func:`prepare_runs_dir`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

from shardflow.core.errors import ShardflowError
from shardflow.core.storage import StorePath, location, remove_tree
from shardflow.pipelines.records.rundir import HOST_ID, RunDir, owner, pid_alive

logger = logging.getLogger("shardflow.ownership")

#: A temporary stage directory: ``.<name>.tmp-<host>-<pid>-<token>`` (or ``.old-``).
_STAGING = re.compile(r"^\..+\.(?:tmp|old)-(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}$")
#: An older shardflow's staging directory (``.etl.tmp-<token>``, no owner) older than this is removed.
STALE_AFTER_SECONDS = 24 * 3600
_LEGACY_STAGING = re.compile(r"^\..+\.(?:tmp|old)-[0-9a-f]{8}$")


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
    shardflow.core.errors.ShardflowError: --output /runs/r1/scores: lies inside --run /runs/r1, which it would
    change; write the output elsewhere
    """
    from shardflow.core.errors import ShardflowError

    out = location(path).expanduser().resolve()
    if isinstance(out, StorePath) and "/" not in out.key:
        raise ShardflowError(f"{option} {out}: a whole bucket; give a prefix in it ({out}/predictions)")
    checks = [(o, p, True) for o, p in (keep or {}).items()] + [(o, p, False) for o, p in (inputs or {}).items()]
    for other_option, other, inside_too in checks:
        other = location(other).expanduser().resolve()
        relation = _nesting(out, other)
        if relation is not None and (inside_too or relation != "lies inside"):
            raise ShardflowError(
                f"{option} {out}: {relation} {other_option} {other}, which it would "
                f"{'destroy' if relation != 'lies inside' else 'change'}; write the output elsewhere"
            )
    if out.exists() and not overwrite:
        raise ShardflowError(f"{option} {out}: already exists; choose another path or pass --overwrite")
    return out


#: Schemes that name the same stores (``s3a://b/k`` is ``s3://b/k``).
_SCHEME_ALIASES = {"s3a": "s3", "gcs": "gs", "abfss": "abfs", "az": "abfs"}


def _comparable(path) -> str:
    """``path`` as text that equals another's when both name the same place."""
    text = str(path)
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        text = f"{_SCHEME_ALIASES.get(scheme, scheme)}://{re.sub('/+', '/', rest)}"
    return text.rstrip("/")


def _nesting(out, other) -> str | None:
    """How ``out`` and ``other`` overlap: ``"is"``, ``"holds"``, ``"lies inside"`` or None.

    Examples
    --------
    >>> _nesting("s3a://b/runs//r1/", "s3://b/runs/r1"), _nesting("/a", "/a/b"), _nesting("/a/b", "/a")
    ('is', 'holds', 'lies inside')
    """
    a, b = _comparable(out), _comparable(other)
    if a == b:
        return "is"
    if b.startswith(a + "/"):
        return "holds"
    if a.startswith(b + "/"):
        return "lies inside"
    return None


class RunInUseError(ShardflowError):
    """A run directory that another live process is writing (the message names it)."""


#: This process's claims on local run directories: open, locked claim files. The kernel drops
#: a lock with the process that holds it, so a claim never outlives its owner.
_HELD: dict = {}


def claim_run(run_dir) -> bool:
    """Make ``run_dir`` this process's until :func:`release_run`; False when another live
    process holds it.

    Two jobs on one runs directory may pick the same run to reuse its stages; only one may
    write it, or one would print its table while the directory holds the other's models.
    On a file system the claim is an exclusive ``flock`` on ``<run>/.lock`` (which also
    names the holder for messages): a killed process's claim is gone with it, whatever its
    pid becomes. In an object store (no locks) it is an object written and read back: two
    jobs racing within the same instant may both pass, so keep one job per run directory
    there; a claim of this host's process that no longer runs is taken over.
    """
    run_dir = location(run_dir)
    if isinstance(run_dir, StorePath):
        return _claim_object(run_dir)
    import fcntl

    if str(run_dir) in _HELD:
        return True
    lock = RunDir(run_dir).lock
    for _ in range(5):
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # the run directory was removed by its last holder meanwhile: again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # the holder released and removed this file between our open and lock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(_me()).encode())
        _HELD[str(run_dir)] = fd
        return True
    return False


def release_run(run_dir) -> None:
    """Give up this process's claim on ``run_dir`` (nothing if it is not ours); a run whose
    first stage failed leaves no empty directory behind."""
    run_dir = location(run_dir)
    lock = RunDir(run_dir).lock
    if isinstance(run_dir, StorePath):
        if _read_lock(lock) == _me():
            lock.remove_tree()
        return
    fd = _HELD.pop(str(run_dir), None)
    if fd is None:
        return
    try:  # removed while still locked: whoever opened the old file finds it replaced and looks again
        lock.unlink(missing_ok=True)
        if not any(run_dir.iterdir()):
            run_dir.rmdir()
    except OSError:
        pass  # another process created something there meanwhile: the directory is its
    finally:
        os.close(fd)


def run_holder(run_dir) -> str:
    """Who holds ``run_dir``'s claim, in words (for messages)."""
    holder = _read_lock(RunDir(run_dir).lock) or {}
    return f"process {holder.get('pid', '?')} on {str(holder.get('host', '?')).split('.')[0]}"


def _me() -> dict:
    return {"host": HOST_ID, "pid": os.getpid(), "started": _process_started(os.getpid())}


def _claim_object(run_dir: StorePath) -> bool:
    lock = RunDir(run_dir).lock
    holder = _read_lock(lock)
    if holder is not None and holder != _me():
        if _holder_alive(holder):
            return False
        logger.info("run %s: taking over the claim of process %s, which is gone", run_dir.name, holder.get("pid"))
    lock.write_text(json.dumps(_me()))
    return _read_lock(lock) == _me()


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started (None: no such process): a pid reused later is another process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, another user's


def _holder_alive(holder: dict) -> bool:
    """Whether an object-store claim's process may still be running (another host's, or a
    damaged claim, cannot be proven gone)."""
    pid = holder.get("pid")
    if holder.get("host") != HOST_ID or not isinstance(pid, int) or pid <= 0:
        return True
    started = _process_started(pid)
    if started is None:
        return False
    recorded = holder.get("started")
    return started < 0 or not isinstance(recorded, (int, float)) or abs(started - recorded) < 1.0


def _read_lock(lock) -> dict | None:
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or damaged
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
    from shardflow.core.errors import ShardflowError

    runs_dir = location(runs_dir)
    if isinstance(runs_dir, StorePath):
        # A write probe, as for a directory: credentials allowed a prefix only (no HeadBucket)
        # pass it, and a read-only or missing bucket is found before any work.
        probe = runs_dir / f".write-probe-{owner()}-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"")
        except FileNotFoundError:
            raise ShardflowError(
                f"{key} {runs_dir}: bucket {runs_dir.bucket!r} does not exist (or these "
                "credentials cannot see it); create it or choose another"
            ) from None
        except PermissionError:
            raise ShardflowError(
                f"{key} {runs_dir}: these credentials cannot write there; give them write "
                "access to the prefix, or choose another"
            ) from None
        except Exception as err:
            raise ShardflowError(
                f"{key} {runs_dir}: cannot reach the store ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}); check the URL, "
                "storage_options and the credentials in the environment"
            ) from None
        try:
            probe.unlink(missing_ok=True)
        except OSError as err:
            raise ShardflowError(
                f"{key} {runs_dir}: these credentials can write there but not delete "
                f"({type(err).__name__}); shardflow replaces stages: give them delete access "
                f"(and remove {probe.name})"
            ) from None
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
        probe = existing / f".write-probe-{owner()}-{uuid.uuid4().hex[:8]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as err:
        raise ShardflowError(
            f"{key} {runs_dir}: cannot write in {existing} ({err.strerror or type(err).__name__}); "
            "choose a writable directory"
        ) from None
    if existing != runs_dir:
        return runs_dir
    now = time.time()
    for entry in runs_dir.iterdir():
        if not entry.name.startswith(".") or not entry.is_dir():
            continue
        match = _STAGING.match(entry.name)
        if match:
            stale = match["host"] == HOST_ID and not pid_alive(int(match["pid"]))
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
