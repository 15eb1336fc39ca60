"""Per-worker setup as small WorkerPlugins: validate in ``__init__``, act in ``setup``."""

from __future__ import annotations

import importlib
import logging
import os
import threading

from distributed.diagnostics.plugin import WorkerPlugin

from shardflow.core.threads import use_threads

logger = logging.getLogger("shardflow.cluster")


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
        use_threads(self.threads or worker.state.nthreads)


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


class PreloadPlugin(WorkerPlugin):
    """Import the libraries a job's training needs on every worker as it joins, in a
    background thread: the import (a second or more for XGBoost or torch) overlaps the
    ETL instead of delaying the first training task, which then finds them loaded (an
    import still running makes it wait for that one, never import twice).

    Parameters
    ----------
    modules : sequence of str
        Module names; one that is not installed is passed over (the task that needs it
        says so).

    Examples
    --------
    >>> PreloadPlugin(["xgboost"]).name
    'shardflow-preload-xgboost'
    """

    idempotent = True

    def __init__(self, modules):
        self.modules = tuple(sorted(set(modules)))
        self.name = "shardflow-preload-" + "-".join(self.modules)

    def setup(self, worker=None):
        threading.Thread(target=self.load, name=self.name, daemon=True).start()

    def load(self) -> None:
        for module in self.modules:
            try:
                importlib.import_module(module)
            except Exception as err:
                logger.debug("preload of %s failed: %s", module, err)
