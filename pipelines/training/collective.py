"""Collective jobs on a Dask cluster: one pinned task per worker, joined by a tracker.

The global XGBoost model is trained the way ``xgboost.dask`` trains it — a rabit
tracker started on the scheduler, one long-running task per worker that joins the
communicator and calls ``xgboost.train`` on the rows that worker already holds — but
shardflow owns the dispatch, so that

- the tracker binds to the interface the cluster binds to (the scheduler's host:
  127.0.0.1 for local clusters), never to a guessed external address;
- the tasks have names that say what they are on the dashboard
  (``train-xgboost-global-<token>-rank<r>``), and ranks follow the sorted workers;
- a lost worker is noticed at once, and the surviving ranks are cancelled.
"""

from __future__ import annotations

import logging
import threading

from distributed.comm import get_address_host

logger = logging.getLogger("shardflow.collective")


class WorkerLost(RuntimeError):
    """A worker holding part of a collective training left the cluster."""


#: Seconds the tracker waits for every rank to join when no collective timeout is set.
DEFAULT_TRACKER_TIMEOUT = 600


def _start_tracker(n_workers: int, timeout: int, dask_scheduler=None) -> dict:
    """On the scheduler: a rabit tracker bound to the scheduler's own interface (as the
    scheduler sees it: a client's view may be a tunnel); returns the workers' arguments."""
    from xgboost.tracker import RabitTracker

    host = get_address_host(dask_scheduler.address).strip("[]")
    tracker = RabitTracker(n_workers=n_workers, host_ip=host, sortby="task", timeout=timeout)
    tracker.start()
    # The tracker lives until every rank has finished (or failed); nothing waits for it.
    threading.Thread(target=tracker.wait_for, daemon=True, name="shardflow-xgboost-tracker").start()
    return dict(tracker.worker_args())


def start_xgboost_tracker(client, n_workers: int, timeout: int | None) -> dict:
    """Start a tracker for ``n_workers`` ranks on the scheduler, bound to its host.

    Returns
    -------
    dict
        The communicator arguments every rank passes to
        ``xgboost.collective.CommunicatorContext``.
    """
    # Without a limit a rank that never arrives would keep the others waiting for ever.
    args = client.run_on_scheduler(_start_tracker, n_workers, int(timeout or DEFAULT_TRACKER_TIMEOUT))
    logger.debug(
        "xgboost tracker for %d ranks at %s:%s", n_workers, args.get("dmlc_tracker_uri"), args.get("dmlc_tracker_port")
    )
    return args


def gather_watching(client, futures, workers, what: str, poll: float = 2.0):
    """``client.gather(futures)``, failing fast if one of ``workers`` leaves the cluster or
    one of the tasks fails.

    Collective tasks are pinned to their workers; a lost worker's task would otherwise
    wait for it forever, and a failed task's peers for the collective's timeout.

    Raises
    ------
    WorkerLost
        Naming the workers that left; the other futures are cancelled.
    Exception
        The first failed task's own error; the other futures are cancelled.
    """
    from distributed import wait

    while True:
        failed = [f for f in futures if f.status == "error"]
        if failed:
            client.cancel([f for f in futures if f.status != "error"])
            failed[0].result()  # raises the task's error
        running = [f for f in futures if not f.done()]
        if not running:
            return client.gather(futures)
        try:
            wait(running, timeout=poll, return_when="FIRST_COMPLETED")
        except TimeoutError:
            alive = set(client.scheduler_info(n_workers=-1).get("workers", {}))  # empty: the scheduler is gone
            gone = [w for w in workers if w not in alive]
            if gone:
                client.cancel(futures)
                raise WorkerLost(f"worker(s) {', '.join(gone)} left during {what}") from None
