"""The command line's terminal: shardflow's lines on it, everything else through the log.

A job's terminal receives output from many writers that know nothing of each other:
worker processes (which inherit the terminal as their stderr) print Dask's multi-line
"Compute Failed" blocks and Python warnings, XGBoost's native code prints "Task … got
rank N", the dashboard's web server prints tracebacks. :class:`CapturedStderr` gives
the terminal to shardflow's log handler and progress bars alone, and reads what
everything else writes to the process's stderr (file descriptor 2) line by line,
re-emitting each line through the ``shardflow.output`` logger: warnings and errors as
warnings, one line each, and tracebacks, continuation lines and chatter at debug
level (``shardflow -v`` shows them).

Only the ``shardflow`` command does this; library calls from a notebook leave the
process's streams alone.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading

logger = logging.getLogger("shardflow.output")

#: ``2026-11-22 21:12:41,123 - distributed.worker - ERROR - Compute Failed`` (Dask's format).
_DASK_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ - (?P<name>\S+) - (?P<level>[A-Z]+) - (?P<message>.*)$")
#: ``/path/file.py:12: RuntimeWarning: divide by zero`` (Python's warnings module).
_PY_WARNING = re.compile(r"^(?P<where>\S+:\d+): (?P<category>\w*Warning): (?P<message>.*)$")
#: ``[21:12:41] WARNING: ...`` (XGBoost's native log).
_NATIVE = re.compile(r"^\[\d\d:\d\d:\d\d\] (?P<message>.*)$")
#: Dask messages that shardflow reports itself, better (the failed task's own error).
_REPORTED_BY_SHARDFLOW = ("Compute Failed", "Run Failed")
#: Loggers of the dashboard's web server and of Dask's dashboard pages: their errors are the
#: dashboard's, not the job's (a page that fails to draw), so the job logs them at debug level.
DASHBOARD_LOGGERS = ("distributed.dashboard", "distributed.http", "bokeh", "tornado")
#: A process dying: always shown.
_FATAL = ("Fatal Python error", "Segmentation fault", "terminate called", "Aborted", "Killed")
#: ``WARNING: /__w/xgboost/xgboost/src/learner.cc:782: text``: where in XGBoost's sources (its
#: build machine's path) a native message was logged, before its text.
_NATIVE_SOURCE = re.compile(
    r"^(?P<level>[A-Z]+): \S*?(?P<file>[^/\s]+\.(?:cc|cpp|cu|cuh|h|hpp)):(?P<line>\d+):\s*"
    r"(?P<text>.*)$"
)
#: Lines folded into a warning whose text starts on the next line, at most (the rest: debug).
MAX_CONTINUATION_LINES = 20


def classify(line: str, continuation=()) -> tuple[int, str]:
    """The log level and text for one captured line, and the ``continuation`` lines of a
    warning whose text goes on over them (:func:`continues`), folded into one line.

    Examples
    --------
    >>> classify("2026-11-22 21:12:41,123 - distributed.worker - ERROR - Compute Failed")[0] == logging.DEBUG
    True
    >>> classify("2026-11-22 21:12:41,123 - distributed.worker.memory - WARNING - Unmanaged memory use is high")
    (30, 'distributed.worker.memory: Unmanaged memory use is high')
    >>> classify("2026-11-22 21:12:41,123 - distributed.dashboard.components.scheduler - ERROR - 'etl-write'")[0]
    10
    >>> classify("[21:12:41] Task rank-000001 got rank 1")
    (10, 'xgboost: Task rank-000001 got rank 1')
    >>> classify("/x/y.py:3: RuntimeWarning: divide by zero")
    (30, 'RuntimeWarning: divide by zero (/x/y.py:3)')
    >>> classify("[21:12:41] WARNING: /__w/xgboost/xgboost/src/learner.cc:782:",
    ...          ['Parameters: { "max_dept" } are not used.'])
    (30, 'xgboost: WARNING: Parameters: { "max_dept" } are not used. (learner.cc:782)')
    """
    if continuation:
        line = " ".join([line.rstrip(), *(part.strip() for part in continuation)])
    match = _DASK_LINE.match(line)
    if match:
        level = logging.getLevelName(match["level"])
        level = level if isinstance(level, int) else logging.INFO
        message = match["message"]
        # An empty message introduces a traceback (a cancelled coroutine at shutdown, say).
        from_dashboard = match["name"].startswith(DASHBOARD_LOGGERS)
        shown = message.strip() and not message.startswith(_REPORTED_BY_SHARDFLOW) and not from_dashboard
        if level >= logging.WARNING and shown:
            return logging.WARNING, f"{match['name']}: {message}"
        return logging.DEBUG, f"{match['name']}: {message}"
    match = _PY_WARNING.match(line)
    if match:
        return logging.WARNING, f"{match['category']}: {match['message']} ({match['where']})"
    if line.startswith(_FATAL):
        return logging.WARNING, line
    match = _NATIVE.match(line)
    if match:
        level = logging.WARNING if match["message"].startswith("WARNING") else logging.DEBUG
        source = _NATIVE_SOURCE.match(match["message"])
        if source:  # the text first, the source file last (as for Python's warnings)
            return level, f"xgboost: {source['level']}: {source['text']} ({source['file']}:{source['line']})"
        return level, f"xgboost: {match['message']}"
    return logging.DEBUG, line


def continues(line: str) -> bool:
    """Whether ``line`` is a warning whose text starts on the next line: XGBoost writes
    ``[..] WARNING: .../learner.cc:782:`` and then ``Parameters: { "max_dept" } are not used.``
    (and a blank line), and the first line alone says nothing.

    Examples
    --------
    >>> continues("[21:12:41] WARNING: /__w/xgboost/xgboost/src/learner.cc:782:"), continues("[21:12:41] WARNING: x")
    (True, False)
    """
    return line.rstrip().endswith(":") and bool(_NATIVE.match(line) or _PY_WARNING.match(line))


def _starts_record(line: str) -> bool:
    """Whether ``line`` begins a message of its own (not the continuation of one)."""
    return bool(_DASK_LINE.match(line) or _PY_WARNING.match(line) or _NATIVE.match(line)) or line.startswith(_FATAL)


class CapturedStderr:
    """Context manager: the process's fd 2 goes through :func:`classify` into the log.

    ``terminal`` (a text stream on a duplicate of the original stderr) is what
    shardflow's log handler and progress bars write to; ``sys.stderr`` points to it
    meanwhile, so Python-level writers keep the terminal (and its ``isatty``).
    Repeated warnings are shown once.
    """

    def __init__(self):
        self.terminal = None
        self._saved_fd = None
        self._saved_stderr = None
        self._reader = None
        self._seen: set[str] = set()
        self._pending = None  #: ``[line, continuation lines]`` of a warning not yet complete
        self._lock = threading.Lock()

    @staticmethod
    def possible() -> bool:
        """Whether there is a stderr to capture (``2>&-`` closes it)."""
        try:
            os.fstat(2)
        except OSError:
            return False
        return sys.stderr is not None

    def __enter__(self):
        sys.stderr.flush()
        self._saved_fd = os.dup(2)
        self.terminal = os.fdopen(os.dup(self._saved_fd), "w", buffering=1, encoding="utf-8", errors="replace")
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._saved_stderr = sys.stderr
        sys.stderr = self.terminal
        self._reader = threading.Thread(target=self._pump, args=(read_end,), daemon=True, name="shardflow-stderr")
        self._reader.start()
        return self

    def _pump(self, fd: int) -> None:
        with os.fdopen(fd, "rb") as pipe:
            for raw in pipe:
                try:
                    self._emit(raw.decode("utf-8", errors="replace").rstrip())
                except Exception:
                    pass

    def _emit(self, line: str) -> None:
        with self._lock:
            if self._pending is not None:
                # A multi-line warning (XGBoost's) ends at a blank line or the next message.
                if line.strip() and not _starts_record(line) and len(self._pending[1]) < MAX_CONTINUATION_LINES:
                    self._pending[1].append(line)
                    return
                self._flush_pending()
            if not line.strip():
                return
            if continues(line):
                self._pending = [line, []]
                return
            self._log(line)

    def _flush_pending(self) -> None:
        if self._pending is not None:
            line, continuation = self._pending
            self._pending = None
            self._log(line, continuation)

    def _log(self, line: str, continuation=()) -> None:
        level, text = classify(line, continuation)
        if level >= logging.WARNING:
            if text in self._seen:
                return
            self._seen.add(text)
        logger.log(level, "%s", text)

    def __exit__(self, *exc):
        os.dup2(self._saved_fd, 2)  # worker processes still running keep the pipe until they exit
        os.close(self._saved_fd)
        sys.stderr = self._saved_stderr
        self._reader.join(timeout=0.5)
        with self._lock:
            self._flush_pending()  # a warning whose closing blank line never came
        self.terminal.flush()
        return False


def skip_exit_collections() -> None:
    """Let this process end without the interpreter's last garbage collections, which walk
    every object of the job's libraries (0.8 s of a 9 s ``shardflow run`` at 100,000 rows):
    objects are frozen at exit, after the handlers registered later (the job's) have run. For
    a command's process only; a notebook or a library caller keeps its collections."""
    import atexit
    import gc

    atexit.unregister(gc.freeze)  # once, however many commands this process runs
    atexit.register(gc.freeze)


def aligned_table(header, rows, *, marked=None, note: str = "") -> str:
    """``rows`` of text under ``header`` in fixed-width columns, for a terminal: the first
    column left-aligned, the others (numbers) right-aligned; row ``marked`` starts with
    ``*``, and ``note`` below the table says what the ``*`` means.

    Examples
    --------
    >>> print(aligned_table(["model", "auc"], [["global XGBoost", "0.8100"], ["MLP", "0.7900"]],
    ...                     marked=0, note="best validation auc"))
      model              auc
    * global XGBoost  0.8100
      MLP             0.7900
    * best validation auc
    """
    table = [list(header), *(list(row) for row in rows)]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]

    def line(row, mark: str) -> str:
        cells = [str(row[0]).ljust(widths[0]), *(str(v).rjust(w) for v, w in zip(row[1:], widths[1:]))]
        return f"{mark} " + "  ".join(cells)

    lines = [line(header, " ")]
    lines += [line(row, "*" if i == marked else " ") for i, row in enumerate(rows)]
    if marked is not None and note:
        lines.append(f"* {note}")
    return "\n".join(line.rstrip() for line in lines)


def comparison_text(run_dir) -> str:
    """The run's model comparison for the terminal: aligned columns, the best model marked."""
    import json

    from shardflow.pipelines.families.specs import label
    from shardflow.pipelines.records.rundir import RunDir
    from shardflow.tasks.metrics import best_model, primary_metric
    from shardflow.tasks.targets import target_kind

    try:
        evaluation = json.loads(RunDir(run_dir).metrics.read_text())
        metrics, seconds, task = evaluation["metrics"], evaluation.get("train_seconds", {}), evaluation["task"]
        columns = target_kind(task).columns
    except (OSError, ValueError, KeyError, TypeError):  # a damaged metrics.json: the stored table
        return RunDir(run_dir).comparison.read_text().strip()
    best = best_model(metrics, task) if metrics else None
    rows = [
        [label(name), *(f"{m.get(c, float('nan')):.4f}" for c in columns), f"{seconds.get(name, float('nan')):.1f}"]
        for name, m in metrics.items()
    ]
    marked = list(metrics).index(best) if best is not None else None
    table = aligned_table(
        ["model", *columns, "train s"], rows, marked=marked, note=f"best validation {primary_metric(task)}"
    )
    return table + _overlap_note(run_dir, seconds)


def _overlap_note(run_dir, seconds: dict) -> str:
    """A line under the table when families trained at once (their times overlap)."""
    from shardflow.core.errors import ShardflowError
    from shardflow.pipelines.records.rundir import RunDir

    try:
        record = RunDir(run_dir).read_manifest().stages.get(RunDir.TRAIN)
    except (OSError, ShardflowError):  # a damaged manifest: the table is shown without the note
        return ""
    wall = getattr(record, "wall_seconds", None)
    if wall is None or not seconds or wall >= 0.95 * sum(seconds.values()):
        return ""
    return f"\n  train s: each family's wall time; families shared the cluster, training took {wall:.1f}s in all"


#: Optional packages by import name: what needs them and how to install them.
OPTIONAL_PACKAGES = {
    "s3fs": ("s3:// paths", 'pip install "shardflow[s3]"'),
    "gcsfs": ("gs:// paths", "pip install gcsfs"),
    "adlfs": ("abfs:// paths", "pip install adlfs"),
    "onnx": ("ONNX export", 'pip install "shardflow[export]"'),
    "onnxruntime": ("ONNX Runtime scoring", 'pip install "shardflow[export]"'),
    "mlflow": ("tracking: {mlflow: ...}", 'pip install "shardflow[tracking]"'),
}


def missing_extra(err: BaseException) -> str | None:
    """What to install for an ``ImportError`` of an optional package (also one that another
    library raised from it, as fsspec does for s3fs), or None for any other error.

    Examples
    --------
    >>> missing_extra(ModuleNotFoundError("No module named 's3fs'", name="s3fs"))
    's3fs is not installed (needed for s3:// paths): pip install "shardflow[s3]"'
    """
    seen = 0
    while err is not None and seen < 8:
        name = (getattr(err, "name", None) or "").split(".")[0] if isinstance(err, ImportError) else ""
        if name in OPTIONAL_PACKAGES:
            what, install = OPTIONAL_PACKAGES[name]
            return f"{name} is not installed (needed for {what}): {install}"
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None
