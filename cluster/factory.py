"""One entry point from a :class:`ClusterConfig` to a connected ``distributed.Client``."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import dataclass

import dask
from distributed import Client, LocalCluster
from distributed.deploy.utils import nprocesses_nthreads

from shardflow.cluster.config import ClusterConfig
from shardflow.cluster.plugins import NativeThreadsPlugin
from shardflow.core.backend import gpu_install_hint
from shardflow.core.errors import ShardflowError
from shardflow.core.threads import native_thread_env

logger = logging.getLogger("shardflow.cluster")


class ClusterError(ShardflowError, RuntimeError):
    """The cluster cannot be started or reached; the message says what to change."""


@dataclass
class Runtime:
    """A connected client, the dataframe backend its partitions use, and what owns it."""

    client: Client
    backend: str
    kind: str
    cluster: object = None
    processes: bool = True

    @property
    def dashboard_link(self) -> str | None:
        if not self.processes and self.cluster is not None:
            # In memory the scheduler's address names no host; the dashboard's socket does.
            server = self.cluster.scheduler.services.get("dashboard")
            sockets = list(getattr(server, "_sockets", {}).values())
            if sockets:
                host, port = sockets[0].getsockname()[:2]
                return f"http://{host}:{port}/status"
        try:
            return self.client.dashboard_link
        except Exception:  # no dashboard configured
            return None

    @property
    def threads(self) -> int:
        """Worker threads of the whole cluster, now."""
        return sum(w["nthreads"] for w in self.client.scheduler_info(n_workers=-1)["workers"].values())

    def layout(self) -> dict:
        """Workers, threads and memory as the scheduler sees them (for the manifest)."""
        info = self.client.scheduler_info(n_workers=-1)
        workers = info.get("workers", {})
        return {
            "kind": self.kind,
            "processes": self.processes,
            "backend": self.backend,
            "scheduler": self.client.scheduler.address,
            "workers": len(workers),
            "threads": [w["nthreads"] for w in workers.values()],
            "memory_limit": [w.get("memory_limit") for w in workers.values()],
            "resources": [w.get("resources", {}) for w in workers.values()],
        }

    def close(self) -> None:
        """Close the client and the cluster this runtime started (never an existing scheduler's).

        A nanny still restarting a worker that a task just killed makes distributed's close
        fail ("can only join a started process"); that is logged, not raised, so the job's own
        error is the one the user sees (the half-started worker process is a child of this
        one and ends with it).
        """
        self.client.close()
        if self.cluster is None:
            return
        try:
            self.cluster.close()
        except AssertionError as err:  # distributed's restart race (see above)
            if "started process" not in str(err):
                raise
            logging.getLogger("shardflow.cluster").warning(
                "cluster close: a worker was being restarted (%s); its process ends with this one", err
            )


def killed_worker_message(task, limit: int) -> str:
    return (
        f"task {task!r} killed the worker running it {limit + 1} times and was given up "
        f"(distributed.scheduler.allowed-failures = {limit}); if workers ran out of memory, raise "
        "cluster.memory_limit or make partitions smaller (input.max_partition_rows, input.blocksize)"
    )


#: The reason Dask gives the futures of a client that lost its scheduler.
SCHEDULER_LOST = "scheduler-connection-lost"


def scheduler_lost_message(address: str | None = None, run: str | None = None) -> str:
    """What to do when the scheduler is gone (its host lost, the process killed).

    Examples
    --------
    >>> scheduler_lost_message("tcp://10.0.0.1:8786", "20260101-120000-ab12cd")  # doctest: +ELLIPSIS
    'lost the connection to the scheduler at tcp://10.0.0.1:8786; ... --resume 20260101-120000-ab12cd'
    """
    where = f" at {address}" if address else ""
    resume = run or "RUN (its id: `shardflow runs` lists it)"
    return (
        f"lost the connection to the scheduler{where}; the run keeps its completed stages and "
        f"checkpoints: once a scheduler and its workers are back, run the same command with --resume {resume}"
    )


def check_scheduler(client, run: str | None = None) -> None:
    """Raise :class:`ClusterError` (:func:`scheduler_lost_message`) if ``client`` lost its scheduler.

    Everything the scheduler held (data, futures, a collective's tracker) is gone with it, and
    the workers leave when it does: waiting for them cannot help; ``--resume`` can.
    """
    if client.status != "running" or "workers" not in client.scheduler_info(n_workers=-1):
        raise ClusterError(scheduler_lost_message(getattr(client.scheduler, "address", None), run))


def describe_failure(err: BaseException) -> str | None:
    """A one-line explanation, naming the task and the setting to change, of a cluster failure."""
    from distributed.scheduler import KilledWorker

    seen = err
    while seen is not None:  # the futures a lost scheduler took, also behind a later error
        if "Cancelled" in type(seen).__name__ and SCHEDULER_LOST in str(seen):
            return scheduler_lost_message()
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, KilledWorker):
        task = getattr(err, "task", None) or (err.args[0] if err.args else "?")
        allowed = getattr(err, "allowed_failures", None)
        limit = allowed if allowed is not None else dask.config.get("distributed.scheduler.allowed-failures")
        return killed_worker_message(task, limit)
    if isinstance(err, ClusterError):
        return str(err)
    return None


def _recent_errors(dask_scheduler, count: int = 20):
    return [(et.key, et.exception_text) for et in list(dask_scheduler.erred_tasks)[:count]]


def cause_of_cancellation(client) -> ClusterError | None:
    """Why the scheduler dropped a computation: a task that kept killing its workers.

    When workers die repeatedly the scheduler may forget a whole graph, and the client
    only sees ``FutureCancelledError``; the scheduler's record of recently erred
    tasks still names the culprit.
    """
    try:
        recent = client.run_on_scheduler(_recent_errors)
    except Exception:
        return None
    for key, text in recent:
        if "KilledWorker" in text or "workers died" in text:
            limit = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures)
            return ClusterError(killed_worker_message(key, limit))
    return None


def cuda_available() -> bool:
    """A CUDA device is visible and dask-cuda and cuDF are installed.

    Checked without importing cuDF or creating a CUDA context (NVML only).
    """
    if importlib.util.find_spec("cudf") is None or importlib.util.find_spec("dask_cuda") is None:
        return False
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return False
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return False


def resolve_spec(config: ClusterConfig) -> str:
    """``auto`` resolved to ``local-cuda`` or ``local``; other specs unchanged."""
    if config.spec != "auto":
        return config.spec
    return "local-cuda" if cuda_available() else "local"


def start(config: ClusterConfig | None = None, **overrides) -> Runtime:
    """Start (or connect to) the cluster a config describes and return a :class:`Runtime`.

    Parameters
    ----------
    config : ClusterConfig, optional
        Defaults to ``ClusterConfig()``: ``auto`` on this machine, bound to 127.0.0.1.
    **overrides
        Fields of ``ClusterConfig`` to change, e.g. ``spec="local", n_workers=2``.

    Returns
    -------
    Runtime
        ``runtime.client`` is connected; ``runtime.backend`` is ``"pandas"`` or
        ``"cudf"``; Dask's global ``dataframe.backend`` is not changed.

    Raises
    ------
    ClusterError
        ``local-cuda`` without dask-cuda/cuDF (says what to install), or an address
        that does not answer.

    Examples
    --------
    >>> runtime = start(spec="local", n_workers=2, memory_limit="2GB")  # doctest: +SKIP
    >>> runtime.client.submit(sum, [1, 2]).result()  # doctest: +SKIP
    3
    >>> runtime.close()  # doctest: +SKIP
    """
    config = config or ClusterConfig()
    if overrides:
        config = ClusterConfig(**{**config.__dict__, **{k: v for k, v in overrides.items() if v is not None}})
    config.validate()
    kind = resolve_spec(config)
    if kind == "local":
        runtime = _start_local(config)
    elif kind == "local-cuda":
        runtime = _start_local_cuda(config)
    else:
        runtime = _connect(config)
    # Native libraries in workers started elsewhere still run with OMP_NUM_THREADS=1.
    runtime.client.register_plugin(NativeThreadsPlugin(config.threads_per_worker))
    # Dask's global ``dataframe.backend`` is left as the user set it: shardflow's graphs
    # carry their backend explicitly (meta), and a notebook's other work is not affected.
    link = runtime.dashboard_link
    logger.info(
        "cluster %s: %d workers%s, backend %s%s",
        kind,
        len(runtime.client.scheduler_info(n_workers=-1).get("workers", {})),
        "" if runtime.processes else " (threads in this process)",
        runtime.backend,
        f", dashboard {link}" if link else "",
    )
    return runtime


@contextlib.contextmanager
def connect(config: ClusterConfig | None = None, **overrides):
    """Context manager around :func:`start` that closes what it started.

    Examples
    --------
    >>> with connect(spec="local", n_workers=2) as runtime:  # doctest: +SKIP
    ...     print(runtime.dashboard_link)
    """
    runtime = start(config, **overrides)
    try:
        yield runtime
    finally:
        runtime.close()


def security_for(config: ClusterConfig):
    """Dask ``Security`` for the config, or None without TLS."""
    from distributed.security import Security

    if config.tls_ca_file or config.spec.startswith("tls://"):
        return Security(
            tls_ca_file=config.tls_ca_file,
            tls_client_cert=config.tls_cert,
            tls_client_key=config.tls_key,
            require_encryption=True,
        )
    if config.tls:
        try:
            return Security.temporary()  # a self-signed certificate shared by this cluster only
        except ImportError as err:
            raise ClusterError(
                f"cluster.tls needs the 'cryptography' package: pip install cryptography ({err})"
            ) from None
    return None


def _start_local(config: ClusterConfig) -> Runtime:
    cores = os.cpu_count() or 1
    in_process = str(config.processes).lower() == "false"
    if in_process:  # one worker: XGBoost's and torch's collectives are one per process
        if config.n_workers not in (None, 1):
            raise ClusterError(
                f"config key 'cluster.processes': false runs one worker in this process, but "
                f"cluster.n_workers is {config.n_workers}; remove one of them"
            )
        n_workers, threads = 1, config.threads_per_worker or cores
    elif config.n_workers and config.threads_per_worker:
        n_workers, threads = config.n_workers, config.threads_per_worker
    elif config.n_workers:
        n_workers, threads = config.n_workers, max(1, cores // config.n_workers)
    elif config.threads_per_worker:
        threads = config.threads_per_worker
        n_workers = max(1, cores // threads)
    else:
        n_workers, threads = nprocesses_nthreads(cores)
    security = security_for(config)
    cluster = LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads,
        processes=not in_process,
        security=security,
        # Threads in this process talk in memory (no socket, no serialisation) unless TLS is asked for.
        protocol="tls://" if security else "inproc://" if in_process else None,
        host=None if in_process and not security else config.host,
        dashboard_address=config.dashboard_address or None,
        memory_limit=config.memory_limit or "auto",
        local_directory=config.local_directory,
        resources=config.resources,
        **({} if in_process else {"env": native_thread_env(threads)}),
    )
    return Runtime(
        Client(cluster, security=security), backend="pandas", kind="local", cluster=cluster, processes=not in_process
    )


def _start_local_cuda(config: ClusterConfig) -> Runtime:
    missing = [m for m in ("dask_cuda", "cudf", "dask_cudf") if importlib.util.find_spec(m) is None]
    if missing:
        raise ClusterError(
            f"cluster spec 'local-cuda' needs {', '.join(missing)}, which is not installed: {gpu_install_hint()}"
        )
    from dask_cuda import LocalCUDACluster

    threads = config.threads_per_worker or 1
    kwargs = dict(
        n_workers=config.n_workers,
        threads_per_worker=threads,
        host=config.host,
        dashboard_address=config.dashboard_address or None,
        memory_limit=config.memory_limit or "auto",
        local_directory=config.local_directory,
        rmm_pool_size=config.rmm_pool_size,
        enable_cudf_spill=config.enable_cudf_spill,
        resources=config.resources,
        env=native_thread_env(threads),
    )
    if config.device_memory_limit is not None:
        kwargs["device_memory_limit"] = config.device_memory_limit
    try:
        cluster = LocalCUDACluster(**{k: v for k, v in kwargs.items() if v is not None})
    except Exception as err:
        raise ClusterError(f"cannot start LocalCUDACluster: {err}") from err
    return Runtime(Client(cluster), backend="cudf", kind="local-cuda", cluster=cluster)


def _connect(config: ClusterConfig) -> Runtime:
    try:
        client = Client(config.spec, timeout="20s", security=security_for(config))
    except (OSError, TimeoutError) as err:
        raise ClusterError(
            f"cannot reach the scheduler at {config.spec} ({err}); "
            "check config key 'cluster.spec' and that `dask scheduler` is running"
        ) from None
    backend = _remote_backend(client)
    return Runtime(client, backend=backend, kind="address")


def as_runtime(runtime) -> Runtime | None:
    """``runtime`` as a :class:`Runtime`: a ``distributed.Client`` the caller already has is
    used as it is (its workers' backend probed, shardflow's thread sizing registered; the
    caller keeps owning it: shardflow never closes it); a Runtime or None pass through.

    Examples
    --------
    >>> as_runtime(None) is None
    True
    """
    if runtime is None or isinstance(runtime, Runtime):
        return runtime
    if not isinstance(runtime, Client):
        raise ClusterError(
            f"runtime: expected a shardflow Runtime or a distributed.Client, got {type(runtime).__name__}"
        )
    if runtime.asynchronous:
        raise ClusterError(
            "runtime: an asynchronous Client cannot run shardflow's blocking API; "
            "pass a Client made with asynchronous=False"
        )
    runtime.register_plugin(NativeThreadsPlugin())
    in_process = str(runtime.scheduler.address).startswith("inproc://")  # LocalCluster(processes=False)
    return Runtime(runtime, backend=_remote_backend(runtime), kind="client", processes=not in_process)


def _remote_backend(client: Client) -> str:
    """cuDF when every worker has a GPU and cuDF, else pandas."""

    def probe():
        return cuda_available()

    answers = client.run(probe)
    return "cudf" if answers and all(answers.values()) else "pandas"
