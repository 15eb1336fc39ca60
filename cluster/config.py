"""The ``cluster:`` section of a job config: where the job runs."""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.pipelines.typed_yaml import Anything, Between, ByteSize, OneOf, Text, option

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

    def is_address(self) -> bool:
        return self.spec.startswith(ADDRESS_SCHEMES)

    def validate(self) -> None:
        if self.spec not in CLUSTER_SPECS and not self.is_address():
            raise ValueError(
                f"config key 'cluster.spec': {self.spec!r} is not one of "
                f"{', '.join(CLUSTER_SPECS)} nor a scheduler address such as tcp://host:8786"
            )
        if self.spec.startswith("tls://") and not (self.tls_ca_file and self.tls_cert and self.tls_key):
            raise ValueError("config key 'cluster.spec': a tls:// scheduler needs cluster.tls_ca_file, "
                             "cluster.tls_cert and cluster.tls_key")
        for key in ("n_workers", "threads_per_worker"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"config key 'cluster.{key}': must be at least 1, got {value}")
