"""The ``cluster:`` section of a job config: where the job runs."""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.core.constraints import Anything, Between, ByteSize, ConfigError, OneOf, Text, option

CLUSTER_SPECS = ("auto", "local", "local-cuda")
ADDRESS_SCHEMES = ("tcp://", "tls://", "ucx://", "inproc://", "ws://", "wss://")


@dataclass
class ClusterConfig:
    """Where a job runs. Every field is optional; ``None`` means "decide from the machine".

    Attributes
    ----------
    spec : str
        ``auto`` (``local-cuda`` when a CUDA device, dask-cuda and cuDF are usable,
        else ``local``), ``local`` (a LocalCluster of worker processes, pandas
        partitions), ``local-cuda`` (a LocalCUDACluster, one worker per GPU, cuDF
        partitions) or the address of a running scheduler (``tcp://host:8786``,
        ``tls://...``) for many machines.
    n_workers : int, optional
        Worker processes (``local``: Dask's default split of the cores; ``local-cuda``:
        one per visible GPU).
    threads_per_worker : int, optional
        Threads per worker; also the thread count of XGBoost, torch and BLAS inside it.
    memory_limit : str, optional
        Host memory per worker (``"2GB"``, ``"auto"``); beyond 60-70% of it workers
        spill to disk, at 95% the nanny restarts them.
    host : str
        Interface the scheduler, workers and dashboard bind to. ``127.0.0.1`` keeps a
        local cluster unreachable from other machines; change it knowingly.
    dashboard_address : str
        ``host:port`` of the dashboard; port 0 picks a free one, ``""`` disables it.
    local_directory : str, optional
        Scratch space for spilled data.
    rmm_pool_size : str, optional
        ``local-cuda`` only: RMM memory pool per GPU (``"24GB"``, ``"0.8"`` of device memory).
    device_memory_limit : str, optional
        ``local-cuda`` only: device memory use beyond which partitions spill to host.
    enable_cudf_spill : bool
        ``local-cuda`` only: use cuDF's built-in spilling instead of dask-cuda's.
    resources : dict, optional
        Worker resources for heterogeneous clusters (``{"GPU": 1}``).
    tls : bool
        Encrypt and authenticate every connection with TLS. Local clusters make a
        temporary certificate for themselves; for an address (``tls://host:8786``)
        give ``tls_ca_file``, ``tls_cert`` and ``tls_key`` (the certificate the
        scheduler trusts).
    tls_ca_file, tls_cert, tls_key : str, optional
        PEM files: the certificate authority, this client's certificate and key.
    processes : {"auto", "true", "false"}
        ``local`` only: run the workers as processes (``true``) or as threads of this
        process (``false``: one worker with every core, no worker start-up, no data
        copied between driver and worker). ``auto`` decides from the job's input: threads
        when it is at most ``in_process_max_bytes`` and ``in_process_max_rows`` and
        ``n_workers`` is not set above 1, processes otherwise (``shardflow plan`` says
        which, and why). A scheduler address or ``local-cuda`` is never switched.
    in_process_max_bytes : str
        ``processes: auto``: the largest input (file bytes) run in this process.
    in_process_max_rows : int
        ``processes: auto``: the most input rows run in this process.
    """

    spec: str = option("auto", check=Text("auto, local, local-cuda or a scheduler address (checked in validate)"))
    n_workers: int | None = option(None, check=Between(1))
    threads_per_worker: int | None = option(None, check=Between(1))
    memory_limit: str | None = option(None, check=ByteSize(fraction=True, auto=True))
    host: str = option("127.0.0.1", check=Text("an interface address", nonempty=True))
    dashboard_address: str = option("127.0.0.1:8787", check=Text("host:port, or empty for none"))
    local_directory: str | None = option(None, check=Text("a directory"))
    rmm_pool_size: str | None = option(None, check=ByteSize(fraction=True))
    device_memory_limit: str | None = option(None, check=ByteSize(fraction=True, auto=True))
    enable_cudf_spill: bool = option(False, check=OneOf((True, False)))
    resources: dict | None = option(None, check=Anything("worker resources, e.g. {GPU: 1}, for Dask"))
    tls: bool = option(False, check=OneOf((True, False)))
    tls_ca_file: str | None = option(None, check=Text("a PEM file"))
    tls_cert: str | None = option(None, check=Text("a PEM file"))
    tls_key: str | None = option(None, check=Text("a PEM file"))
    processes: str = option("auto", check=OneOf(("auto", "true", "false")))
    in_process_max_bytes: str = option("64MiB", check=ByteSize())
    in_process_max_rows: int = option(500_000, check=Between(1))

    def is_address(self) -> bool:
        return self.spec.startswith(ADDRESS_SCHEMES)

    def validate(self) -> None:
        if self.spec not in CLUSTER_SPECS and not self.is_address():
            raise ValueError(
                f"config key 'cluster.spec': {self.spec!r} is not one of "
                f"{', '.join(CLUSTER_SPECS)} nor a scheduler address such as tcp://host:8786"
            )
        if self.spec.startswith("tls://") and not (self.tls_ca_file and self.tls_cert and self.tls_key):
            raise ValueError(
                "config key 'cluster.spec': a tls:// scheduler needs cluster.tls_ca_file, "
                "cluster.tls_cert and cluster.tls_key"
            )
        for key in ("n_workers", "threads_per_worker"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"config key 'cluster.{key}': must be at least 1, got {value}")


#: Set to 1 to let a config file (not only the command line) name a remote scheduler or a
#: non-loopback interface (``--allow-remote-cluster`` does the same for one command).
ALLOW_REMOTE_CLUSTER_ENV = "SHARDFLOW_ALLOW_REMOTE_CLUSTER"


def check_cluster_reach(path, cluster: dict) -> None:
    """Refuse a config file's ``cluster:`` values that reach past this machine: a scheduler
    address on another host (every partition would be sent there), or a scheduler, worker
    or dashboard interface other than loopback (anyone who reaches it can run code).

    Examples
    --------
    >>> check_cluster_reach("job.yaml", {"spec": "tcp://127.0.0.1:8786", "dashboard_address": "127.0.0.1:0"})
    >>> check_cluster_reach("job.yaml", {"host": "0.0.0.0"})
    Traceback (most recent call last):
    ...
    shardflow.core.constraints.ConfigError: job.yaml: config key 'cluster.host': 0.0.0.0 is reachable from other
    machines, and a config file does not choose where the cluster listens or where the data goes; give it on the
    command line (--cluster, --set cluster.host=...), or consent with --allow-remote-cluster or
    SHARDFLOW_ALLOW_REMOTE_CLUSTER=1
    """
    reaching = []
    spec = cluster.get("spec")
    if isinstance(spec, str) and "://" in spec and not spec.startswith("inproc://"):
        reaching.append(("spec", spec, _host_of(spec.split("://", 1)[1])))
    if cluster.get("host") is not None:
        reaching.append(("host", cluster["host"], str(cluster["host"])))
    if cluster.get("dashboard_address"):
        reaching.append(
            ("dashboard_address", cluster["dashboard_address"], _host_of(str(cluster["dashboard_address"])))
        )
    for key, value, host in reaching:
        if not _is_loopback(host):
            raise ConfigError(
                f"{path}: config key 'cluster.{key}': {value} is reachable from other machines, and a "
                "config file does not choose where the cluster listens or where the data goes; give it "
                f"on the command line (--cluster, --set cluster.{key}=...), or consent with "
                f"--allow-remote-cluster or {ALLOW_REMOTE_CLUSTER_ENV}=1"
            )


def _host_of(address: str) -> str:
    """The host part of ``host:port`` (``[::1]:8786``, ``:8787`` is every interface: '')."""
    address = address.split("/", 1)[0]
    if address.startswith("["):
        return address[1:].split("]", 1)[0]
    return address.rsplit(":", 1)[0] if address.count(":") == 1 else address


def _is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip().lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, or '' (every interface)
