"""Progress of long stages in the terminal, fed by the scheduler like Dask's own bar.

On a terminal the bar redraws in place (tasks done / total, elapsed, rate); when
stderr is a file or a CI log it prints a plain line at each quarter instead, with no
control characters. ``--quiet`` (log level above INFO) turns it off.
"""

from __future__ import annotations

import logging
import sys
import time
from contextlib import suppress

from distributed import Future
from distributed.client import FutureCancelledError
from distributed.diagnostics.progressbar import TextProgressBar

logger = logging.getLogger("shardflow.progress")


def enabled() -> bool:
    return logging.getLogger("shardflow").getEffectiveLevel() <= logging.INFO


class StageProgressBar(TextProgressBar):
    """A :class:`distributed.diagnostics.progressbar.TextProgressBar` for one stage.

    Counts every task the given futures depend on, not only the futures themselves,
    so a tree reduction shows its leaves.
    """

    def __init__(self, keys, label: str, stream=None, **kwargs):
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._next_quarter = 1
        super().__init__(keys, interval="200ms", **kwargs)

    def _line(self, remaining: int, total: int) -> str:
        done = total - remaining
        elapsed = self.elapsed
        rate = done / elapsed if elapsed > 0 else 0.0
        return f"{self.label}: {done}/{total} tasks, {elapsed:.1f}s, {rate:.1f} tasks/s"

    def _draw_bar(self, remaining, all, **kwargs):
        if not all:
            return
        frac = 1 - remaining / all
        with suppress(ValueError):
            if self.tty:
                bar = "#" * int(24 * frac)
                self.stream.write(f"\r[{bar:<24}] {self._line(remaining, all)}")
                self.stream.flush()
            elif frac * 4 >= self._next_quarter and remaining:
                self._next_quarter = int(frac * 4) + 1
                self.stream.write(self._line(remaining, all) + "\n")
                self.stream.flush()

    def _draw_stop(self, remaining=0, all=0, status=None, **kwargs):
        with suppress(ValueError):
            if self.tty:
                self.stream.write("\33[2K\r")
            if status == "error":
                self.stream.write(f"{self.label}: failed after {self.elapsed:.1f}s\n")
            self.stream.flush()


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
