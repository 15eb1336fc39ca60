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


def collective_host(client) -> str:
    """The interface collective traffic binds to: the scheduler's own host.

    Examples
    --------
    >>> class FakeClient:  # only the address is read
    ...     class scheduler:
    ...         address = "tls://127.0.0.1:8786"
    >>> collective_host(FakeClient)
    '127.0.0.1'
    """
    return get_address_host(client.scheduler.address).strip("[]")


def _start_tracker(n_workers: int, host: str, timeout: int, dask_scheduler=None) -> dict:
    """On the scheduler: a rabit tracker bound to ``host``; returns the workers' arguments."""
    from xgboost.tracker import RabitTracker

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
    host = collective_host(client)
    args = client.run_on_scheduler(_start_tracker, n_workers, host, int(timeout or 0))
    logger.debug("xgboost tracker for %d ranks at %s:%s", n_workers, args.get("dmlc_tracker_uri"),
                 args.get("dmlc_tracker_port"))
    return args


def gather_watching(client, futures, workers, what: str, poll: float = 2.0):
    """``client.gather(futures)``, failing fast if one of ``workers`` leaves the cluster.

    Collective tasks are pinned to their workers; a lost worker's task would otherwise
    wait for it forever, and its peers for the collective's timeout.

    Raises
    ------
    WorkerLost
        Naming the workers that left; the other futures are cancelled.
    """
    from distributed import wait

    while True:
        try:
            wait(futures, timeout=poll)
            return client.gather(futures)
        except TimeoutError:
            alive = set(client.scheduler_info(n_workers=-1)["workers"])
            gone = [w for w in workers if w not in alive]
            if gone:
                client.cancel(futures)
                raise WorkerLost(f"worker(s) {', '.join(gone)} left during {what}") from None
