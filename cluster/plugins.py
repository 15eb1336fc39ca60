"""Per-worker setup as small WorkerPlugins: validate in ``__init__``, act in ``setup``."""

from __future__ import annotations

import os

from distributed.diagnostics.plugin import WorkerPlugin

#: Environment variables that size the thread pools of native libraries.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def native_thread_env(threads: int) -> dict:
    """The environment that gives a worker process's native libraries ``threads`` threads."""
    return {var: str(threads) for var in THREAD_ENV_VARS}


class NativeThreadsPlugin(WorkerPlugin):
    """Give XGBoost, torch and BLAS inside a worker as many threads as the worker has.

    Dask's nanny starts workers with ``OMP_NUM_THREADS=1`` (its ``pre-spawn-environ``),
    which silently makes native libraries single-threaded. shardflow's own local
    clusters set the environment before the worker starts; this plugin also fixes
    workers it did not start (``dask worker`` on other machines): it sets the
    environment for libraries loaded later and resizes pools already loaded.

    Parameters
    ----------
    threads : int, optional
        Threads per worker; default: the worker's own ``nthreads``.
    """

    name = "shardflow-native-threads"
    idempotent = True

    def __init__(self, threads: int | None = None):
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.threads = threads

    def setup(self, worker):
        threads = self.threads or worker.state.nthreads
        os.environ.update(native_thread_env(threads))
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=threads)
        except ImportError:  # pragma: no cover - threadpoolctl is a dependency
            pass
        import sys

        if "torch" in sys.modules:  # importing torch only to size it would cost seconds
            sys.modules["torch"].set_num_threads(threads)


def worker_thread_report(dask_worker) -> dict:
    """What a worker's native libraries really use: ``client.run(worker_thread_report)``."""
    from threadpoolctl import threadpool_info

    report = {
        "nthreads": dask_worker.state.nthreads,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "blas": sorted({info["num_threads"] for info in threadpool_info()}),
    }
    try:
        import torch

        report["torch"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    return report
