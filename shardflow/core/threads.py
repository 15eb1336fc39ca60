"""The one place that sizes a worker's native thread pools (BLAS/OpenMP, torch)."""

from __future__ import annotations

import os
import sys

#: Environment variables that size the thread pools of native libraries.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def native_thread_env(threads: int) -> dict:
    """The environment that gives a process's native libraries ``threads`` threads.

    Examples
    --------
    >>> native_thread_env(4)["OMP_NUM_THREADS"]
    '4'
    """
    return {var: str(threads) for var in THREAD_ENV_VARS}


def use_threads(threads: int) -> None:
    """Size this process's native pools to ``threads``: the environment (for libraries
    loaded later), BLAS/OpenMP pools already loaded, and torch if it is loaded.

    Importing torch only to size it would cost seconds, so a task that imports torch
    itself calls this again afterwards.
    """
    os.environ.update(native_thread_env(threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    if "torch" in sys.modules and sys.modules["torch"].get_num_threads() != threads:
        sys.modules["torch"].set_num_threads(threads)


def worker_threads() -> int | None:
    """Threads of the Dask worker running the calling task (None outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except ValueError:
        return None


def openmp_threads(threads: int):
    """A context in which this process's OpenMP pool has ``threads`` threads (process-wide:
    for a task that runs alone on its worker, e.g. training on one worker with its host's
    threads); the pool's previous size is restored on exit."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=threads, user_api="openmp")
