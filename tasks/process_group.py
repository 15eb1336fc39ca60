"""``torch.distributed`` process groups on Dask workers: rendezvous, joining, leaving.

Dask places the data and the tasks; the tensors of data-parallel training travel over a
process group (gloo on CPU workers, NCCL on GPU workers), as PyTorch's own launchers
set it up, but bound where the cluster binds:

- the rendezvous store is served by rank 0's worker on the host of that worker's Dask
  address (a socket shardflow binds itself and hands to ``TCPStore``: 127.0.0.1 on a
  local cluster, never every interface);
- each rank's gloo/NCCL sockets use the network interface of its own Dask address.

A process holds one default process group; a worker keeps it (with the store) in its
:class:`~shardflow.tasks.worker_state.ResidentState` under the training's token, and a
group left behind by a failed training is destroyed before a new one is joined.
"""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

from shardflow.tasks.worker_state import ResidentState, resident_states

#: Key of the resident-state entry naming the token of the group this process belongs to.
GROUP_KEY = ("torch-process-group",)


class CollectiveFailed(RuntimeError):
    """A collective operation failed (a peer left, or stayed silent past the timeout)."""


def _worker():
    from distributed import get_worker

    return get_worker()


def worker_host() -> str:
    """The host of this worker's Dask address (the interface the cluster binds to)."""
    from distributed.comm import get_address_host

    return get_address_host(_worker().address).strip("[]")


def process_identity() -> str:
    """This process among every process of a cluster: the machine's boot id, the PID namespace
    and the pid. A pid alone repeats on other machines and in other containers (each one's
    worker often has the same small pid), so it cannot tell two workers' processes apart.

    Examples
    --------
    >>> process_identity() == process_identity()
    True
    """
    parts = []
    for path, read in (("/proc/sys/kernel/random/boot_id", "text"), ("/proc/self/ns/pid", "inode")):
        try:
            parts.append(Path(path).read_text().strip() if read == "text" else str(os.stat(path).st_ino))
        except OSError:
            parts.append(socket.gethostname())
    return "-".join([*parts, str(os.getpid())])


def interface_of(host: str) -> str | None:
    """The name of the network interface holding address ``host`` (None if no local one does).

    Examples
    --------
    >>> interface_of("127.0.0.1") is not None
    True
    >>> interface_of("192.0.2.77") is None
    True
    """
    import psutil

    try:
        wanted = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return None
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.address.split("%")[0] in wanted for a in addresses):
            return name
    return None


def _timeout(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=float(seconds))


def open_rendezvous(token: str, timeout: float) -> dict:
    """On rank 0's worker: serve the group's store on a free port of this worker's host.

    Returns
    -------
    dict
        ``host`` and ``port`` for every rank's :func:`join_group`.
    """
    import torch.distributed as dist

    host = worker_host()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    # The store takes the socket over (and closes it when it goes): Python must not close it too.
    store = dist.TCPStore(
        host,
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=_timeout(timeout),
        master_listen_fd=listener.detach(),
    )
    resident_states()[(token, "rendezvous")] = store
    return {"host": host, "port": port}


def join_group(token: str, rendezvous: dict, *, rank: int, world: int, backend: str, timeout: float) -> None:
    """Join the training's process group as ``rank`` of ``world`` (a stale group is left first)."""
    import torch
    import torch.distributed as dist

    states = resident_states()
    _wait_for_other_trainings(states, token, timeout)
    leave_group(states.get(GROUP_KEY))
    interface = interface_of(worker_host())
    if interface:  # the group's own sockets on the interface of this worker's Dask address
        os.environ["GLOO_SOCKET_IFNAME" if backend == "gloo" else "NCCL_SOCKET_IFNAME"] = interface
    served = states.get((token, "rendezvous"))
    store = (
        served
        if served is not None and rank == 0
        else dist.TCPStore(rendezvous["host"], rendezvous["port"], is_master=False, timeout=_timeout(timeout))
    )
    options = {}
    if backend == "nccl":
        options["device_id"] = torch.device("cuda", torch.cuda.current_device())
    try:
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=_timeout(timeout), **options)
    except Exception as err:  # a peer that never arrived, a refused connection
        raise CollectiveFailed(
            f"rank {rank} could not join the process group at {rendezvous['host']}:{rendezvous['port']}: {err}"
        ) from err
    states[GROUP_KEY] = token


def _wait_for_other_trainings(states: dict, token: str, timeout: float) -> None:
    """Wait (at most ``timeout``) while another training's epoch still runs in another
    thread of this worker: it leaves its group itself when it fails or finishes."""
    import time

    deadline = time.monotonic() + timeout
    while any(k[1:] == ("busy",) and k[0] != token for k in list(states)) and time.monotonic() < deadline:
        time.sleep(0.1)


def leave_group(token: str | None, dask_worker=None) -> None:
    """Leave ``token``'s process group and stop serving its rendezvous (``client.run`` on
    every worker after a training, failed or not). Safe to call when not a member."""
    import torch.distributed as dist

    if token is None:
        return
    if dask_worker is not None:
        plugin = dask_worker.plugins.get(ResidentState.name)
        states = plugin.states if plugin is not None else {}
    else:
        states = resident_states()
    if dask_worker is not None and (token, "busy") in states:
        return  # an epoch still runs (its peer failed): it leaves the group itself on its way out
    if states.get(GROUP_KEY) == token:
        del states[GROUP_KEY]
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # a broken group (a lost peer) is gone either way
                pass
    states.pop((token, "rendezvous"), None)  # the store's server (and its socket) closes with it
    for key in [k for k in states if k[0] == token]:
        del states[key]
