"""Progress of long stages in the terminal, fed by the scheduler like Dask's own bar.

On a terminal the bar redraws in place (tasks done / total, elapsed, rate; families that
train at once share the line); in a Jupyter notebook it is an output of the running cell
that updates in place; when
stderr is a file or a CI log it prints a plain line at each quarter instead, with no
control characters. ``--quiet`` (log level above INFO) turns it off; library calls (a script,
a notebook) draw it unless logging was configured above INFO (see :func:`enabled`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from contextlib import suppress

from distributed import Future
from distributed.client import FutureCancelledError
from distributed.diagnostics.progressbar import TextProgressBar

logger = logging.getLogger("shardflow.progress")


def enabled() -> bool:
    """Progress is drawn when there is a stderr to draw on, at log level INFO or below, or
    when logging was never configured (a script or a notebook that calls ``shardflow.run``:
    no level set on the ``shardflow`` logger, no handler on the root logger).
    ``logging.getLogger("shardflow").setLevel("WARNING")`` silences it."""
    if sys.stderr is None:
        return False
    own = logging.getLogger("shardflow")
    if own.level == logging.NOTSET and not own.handlers and not logging.getLogger().handlers:
        return True
    return own.getEffectiveLevel() <= logging.INFO


class Counter:
    """A count towards a total with elapsed time, rate and ETA, drawn on stderr.

    On a terminal the line is redrawn in place (cleared first, so a shorter line leaves
    no stale characters); otherwise a plain line is printed at each quarter and a
    final one at the end. Work that was already done when the counter started (a
    resumed model's rounds, tasks already in memory) counts towards the total but not
    towards the rate.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> c = Counter("xgboost", total=8, unit="rounds", done=4, stream=out)
    >>> for i in range(5, 9):
    ...     c.update(i)
    >>> c.close()
    >>> print(out.getvalue().splitlines()[-1].split(",")[0])
    xgboost: 8/8 rounds

    With early stopping, the ETA counts to the round where training stops unless the score
    improves (``horizon``):

    >>> c = Counter("xgboost", total=300, unit="rounds", stream=io.StringIO())
    >>> c.horizon = 60
    >>> c.started -= 4.0  # 40 rounds in 4 seconds
    >>> c.update(40)
    >>> c.line().split(", ", 3)[-1]
    'ETA 2s (early stop at 60 unless it improves)'
    """

    def __init__(self, label: str, total: int, unit: str = "tasks", done: int = 0, stream=None):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._shown_at = 0.0
        self.first = self.done = done
        self.started = time.perf_counter()
        self.extra = ""
        #: Where the work ends unless it goes on (early stopping's round): the ETA counts to it.
        self.horizon = None
        self._next_quarter = int(4 * done / total) + 1 if total else 1
        self._closed = False
        # In a Jupyter notebook: one output that updates in place, instead of lines on stderr.
        self.notebook = notebook_output(self.line()) if stream is None and not self.tty else None

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        new = self.done - self.first
        text = f"{self.label}: {self.done}/{self.total} {self.unit}, {elapsed:.1f}s"
        if new > 0 and elapsed > 0 and self.done < self.total:
            rate = new / elapsed
            text += f", {rate:.1f} {self.unit}/s"
            if self.horizon is not None and self.done < self.horizon < self.total:
                eta = (self.horizon - self.done) / rate
                text += f", ETA {eta:.0f}s (early stop at {self.horizon} unless it improves)"
            else:
                text += f", ETA {(self.total - self.done) / rate:.0f}s"
        return text + (f", {self.extra}" if self.extra else "")

    #: Counters drawn on a terminal now: families that train at once share the line.
    _drawn: list = []
    _drawing = threading.Lock()

    def _redraw(self) -> None:
        """Draw every counter on this terminal on its one line (" | " between them)."""
        with Counter._drawing:
            if self not in Counter._drawn and not self._closed:
                Counter._drawn.append(self)
            shown = [c for c in Counter._drawn if c.stream is self.stream]
            if shown:
                self.stream.write("\33[2K\r" + " | ".join(c.line() for c in shown))
                self.stream.flush()

    def update(self, done: int, extra: str = "") -> None:
        self.done, self.extra = min(done, self.total), extra
        with suppress(ValueError):
            if self.notebook is not None:
                if time.perf_counter() - self._shown_at > 0.2:  # a notebook redraws at most 5 times a second
                    self._shown_at = time.perf_counter()
                    self.notebook.update({"text/plain": self.line()}, raw=True)
            elif self.tty:
                self._redraw()
            elif self.total and 4 * self.done >= self._next_quarter * self.total and self.done < self.total:
                self._next_quarter = int(4 * self.done / self.total) + 1
                self.stream.write(self.line() + "\n")
                self.stream.flush()

    def close(self, failed: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if self.notebook is not None:
            failed_text = f"{self.label}: failed after {time.perf_counter() - self.started:.1f}s"
            self.notebook.update({"text/plain": failed_text if failed else self.line()}, raw=True)
            return
        with suppress(ValueError):
            if self.tty:
                with Counter._drawing:
                    if self in Counter._drawn:
                        Counter._drawn.remove(self)
                self.stream.write("\33[2K\r")
            if failed:
                self.stream.write(f"{self.label}: failed after {time.perf_counter() - self.started:.1f}s\n")
            elif not self.tty:
                self.stream.write(self.line() + "\n")
            self.stream.flush()
            others = [c for c in Counter._drawn if c.stream is self.stream]
            if self.tty and others:
                others[0]._redraw()


def notebook_output(text: str):
    """A display showing ``text`` in the running Jupyter cell, updated in place
    (``IPython.display.DisplayHandle``); None outside a notebook's kernel."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    from IPython.display import display

    return display({"text/plain": text}, raw=True, display_id=True)


class StageProgressBar(TextProgressBar):
    """A :class:`distributed.diagnostics.progressbar.TextProgressBar` for one stage.

    Counts every task the given futures depend on, not only the futures themselves,
    so a tree reduction shows its leaves; tasks already finished when it starts do
    not count towards the rate.
    """

    def __init__(self, keys, label: str, stream=None, **kwargs):
        self.label = label
        self.counter = None
        self._stream = stream
        super().__init__(keys, interval="200ms", **kwargs)

    def _draw_bar(self, remaining, all, **kwargs):
        if not all:
            return
        if self.counter is None:
            self.counter = Counter(self.label, all, "tasks", done=all - remaining, stream=self._stream)
        self.counter.total = all
        self.counter.update(all - remaining)

    def _draw_stop(self, remaining=0, all=0, status=None, **kwargs):
        if self.counter is None:
            self.counter = Counter(self.label, all, "tasks", done=all - remaining, stream=self._stream)
        if status != "error" and all:
            self.counter.done = all
        self.counter.close(failed=status == "error")


class Rounds:
    """Progress of a collective training, fed by the rounds its rank 0 reports.

    A context manager around the training: it subscribes to ``topic`` (Dask events
    sent by :class:`shardflow.pipelines.training.checkpoint.ResumableState`) and draws a
    :class:`Counter` with the best validation score so far.
    """

    def __init__(self, client, topic: str, label: str, total: int, done: int = 0):
        self.client, self.topic = client, topic
        self.counter = Counter(label, total, "rounds", done=done) if enabled() else None

    def _on_event(self, event) -> None:
        _, message = event
        extra = f"best {message['metric']} {message['best']:.5f} at round {message['best_round']}"
        self.counter.horizon = message.get("stop_round")
        self.counter.update(int(message["done"]), extra)

    def __enter__(self):
        if self.counter is not None:
            self.client.subscribe_topic(self.topic, self._on_event)
        return self

    def __exit__(self, kind, value, traceback):
        if self.counter is not None:
            with suppress(Exception):
                self.client.unsubscribe_topic(self.topic)
            self.counter.close(failed=kind is not None)
        return False


def wait(client, futures, label: str) -> None:
    """Wait for futures that stay on the cluster, with a progress bar.

    Raises the first failed task's own exception (a ``KilledWorker`` names its task),
    rather than letting later graphs fail on a lost dependency.
    """
    from distributed import wait as wait_all

    if enabled() and futures:
        StageProgressBar(futures, label)
    wait_all(futures)
    for future in futures:
        if future.status == "error":
            future.result()
        if future.status == "cancelled":
            _raise_cause(client)


def compute(client, work, label: str):
    """Compute Dask collections or wait on futures with a progress bar; return the results.

    Parameters
    ----------
    client : distributed.Client
    work : Delayed, collection, Future, or a list of them
    label : str
        What the bar says, e.g. ``"etl pass 1/3 (profile)"``.
    """
    single = not isinstance(work, (list, tuple))
    items = [work] if single else list(work)
    futures = [w if isinstance(w, Future) else None for w in items]
    if any(f is None for f in futures):
        computed = iter(client.compute([w for w, f in zip(items, futures) if f is None]))
        futures = [f if f is not None else next(computed) for f in futures]
    if enabled() and futures:
        started = time.perf_counter()
        StageProgressBar(futures, label)
        logger.debug("%s: %.1fs", label, time.perf_counter() - started)
    try:
        results = client.gather(futures)
    except FutureCancelledError:
        _raise_cause(client)
        raise
    return results[0] if single else results


def _raise_cause(client) -> None:
    from shardflow.cluster.factory import cause_of_cancellation

    cause = cause_of_cancellation(client)
    if cause is not None:
        raise cause from None
