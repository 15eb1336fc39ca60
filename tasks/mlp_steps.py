"""The data-parallel MLP's steps, as they run on a worker next to its shard.

Each rank of a training keeps its model, optimizer and rows between epochs (they never
leave the worker) in :class:`~shardflow.tasks.worker_state.ResidentState`, a ``WorkerPlugin`` that the driver
registers before training and that is torn down with the worker: no module global, and
a restarted worker visibly has no state (:class:`~shardflow.tasks.worker_state.WorkerStateLost`). The ranks
synchronise over a ``torch.distributed`` process group (:mod:`shardflow.tasks.process_group`).
"""

from __future__ import annotations

from dataclasses import dataclass

from shardflow.core.threads import use_threads, worker_threads
from shardflow.tasks import shards as shard_tasks
from shardflow.tasks.worker_state import WorkerStateLost, resident_plugin


def use_worker_threads() -> None:
    """torch (and OpenMP) sized to the worker's threads, as the training tasks run."""
    import torch  # noqa: F401 - loaded first, so that use_threads sizes it too

    threads = worker_threads()
    if threads:
        use_threads(threads)


def train_group_mlp(*shards, spec, optim, epochs, seed, schedule, scoring, max_steps=1000, patience=None, warmup=0.0):
    """One per-partition MLP on a group of partitions, with its own validation metrics
    (its length: see :func:`~shardflow.tasks.neural.train_local`)."""
    from shardflow.tasks.metrics import own_metrics
    from shardflow.tasks.neural import predict, train_local

    use_worker_threads()
    s = shard_tasks.merge_shards(*shards)
    out = train_local(
        s.x_train,
        s.y_train,
        s.x_valid,
        s.y_valid,
        spec=spec,
        cfg=optim,
        epochs=epochs,
        seed=seed,
        schedule=schedule,
        warmup=warmup,
        w_train=s.w_train,
        w_valid=s.w_valid,
        max_steps=max_steps,
        patience=patience,
    )
    out["validation"] = own_metrics(s.y_valid, s.w_valid, lambda: predict(out["params"], spec, s.x_valid), scoring)
    return out


# ----------------------------------------------------------------------------- over a torch.distributed group


@dataclass(frozen=True)
class SyncPlan:
    """How the ranks of one data-parallel training take their steps and synchronise.

    Every rank takes ``steps_per_epoch`` steps per epoch (a smaller shard wraps around),
    so all ranks enter the same collectives: unequal shards never deadlock.
    """

    sync: str  #: ``gradients`` (DistributedDataParallel: allreduce every step) or ``parameters`` (local SGD)
    sync_every: int  #: local steps between parameter averages (``parameters``)
    steps_per_epoch: int
    total_steps: int
    world: int
    #: Σ of the ranks' training weights: each rank's share of the parameter average.
    total_weight: float
    #: Σ over the ranks of one step's batch weight when it is known up front (unweighted
    #: rows); None: allreduced each step (sample weights).
    step_weight: float | None
    lr: float
    lr_schedule: str
    warmup: float
    backend: str  #: ``gloo`` or ``nccl``
    timeout: float  #: seconds a collective may wait for a peer


class CollectiveTrainer:
    """One rank's model, optimizer and training rows, resident on its worker between epochs.

    ``sync: gradients`` wraps the model in :class:`~torch.nn.parallel.DistributedDataParallel`:
    gradients are allreduced in buckets while the backward pass runs. The loss of each
    step is scaled so that DDP's mean over ranks is the gradient of the weighted mean
    loss over all the ranks' rows: ``g = Σ_k grad_sum_k / Σ_k n_k``. ``sync:
    parameters`` takes local optimizer steps and replaces the parameters every
    ``sync_every`` steps by their mean weighted by the ranks' training weights (one
    flat allreduce). A world of one rank has no process group: no DDP, no allreduce.
    """

    def __init__(self, shard, params, spec, optim, plan: SyncPlan, *, rank: int, optimizer_state=None):
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from shardflow.tasks.neural import load_optimizer_state, make_optimizer, network

        self.device = optim.device if optim.device != "cuda" else f"cuda:{torch.cuda.current_device()}"
        self.shard, self.spec, self.optim, self.plan, self.rank = shard, spec, optim, plan, rank
        self.module = network(spec, params, self.device).train()
        self.model = self.module
        if plan.sync == "gradients" and plan.world > 1:
            # One bucket for a tabular MLP's gradients (DDP's default 25 MB cap): smaller buckets
            # would overlap with the backward pass, but on CPU each allreduce costs a round trip
            # that outweighs the overlap (benchmarks/results/mlp_scaling.md).
            self.model = DistributedDataParallel(
                self.module, device_ids=[self.device] if self.device.startswith("cuda") else None
            )
        self.opt = make_optimizer(self.module, optim, optim.lr)
        load_optimizer_state(self.opt, optimizer_state, optim.lr)
        # The rows go to the device once and stay there.
        self.x = torch.from_numpy(shard.x_train).to(self.device)
        self.y = torch.from_numpy(shard.y_train).to(self.device)
        self.w = None if shard.w_train is None else torch.from_numpy(shard.w_train).to(self.device)
        self.weight = shard.weight

    def _allreduce(self, tensor):
        import torch.distributed as dist

        if self.plan.world > 1:
            dist.all_reduce(tensor)
        return tensor

    def _average_parameters(self) -> None:
        import torch

        if self.plan.world == 1:
            return
        from torch.nn.utils import parameters_to_vector, vector_to_parameters

        with torch.no_grad():
            flat = parameters_to_vector(self.module.parameters()) * (self.weight / self.plan.total_weight)
            vector_to_parameters(self._allreduce(flat), self.module.parameters())

    def epochs(self, first: int, count: int = 1) -> dict:
        """Take the steps of epochs ``first`` to ``first + count - 1``; return their loss sums,
        the validation loss after the last, and (rank 0) the synchronised parameters."""
        import torch

        from shardflow.tasks.neural import get_params, loss_of

        loss_total = torch.zeros((), dtype=torch.float64, device=self.device)
        seen, rounds = 0.0, 0
        for epoch in range(first, first + count):
            epoch_seen, epoch_rounds = self._epoch(epoch, loss_total)
            seen, rounds = seen + epoch_seen, rounds + epoch_rounds
        out = {
            "loss_sum": float(loss_total),
            "seen": seen,
            "rounds": rounds,
            "validation": loss_of(self.module, self.shard, self.spec, self.device),
        }
        if self.rank == 0:
            out["params"] = get_params(self.module)
        return out

    def _epoch(self, epoch: int, loss_total) -> tuple:
        """Take one epoch's steps, adding their losses to ``loss_total``; ``(weight seen, sync rounds)``."""
        from contextlib import nullcontext

        import numpy as np
        import torch

        from shardflow.tasks.neural import forward_loss, lr_at

        plan, cfg, shard = self.plan, self.optim, self.shard
        gradients = plan.sync == "gradients"
        seen, rounds = 0.0, 0
        for step in range(plan.steps_per_epoch):
            lr = lr_at(plan.lr_schedule, plan.lr, (epoch * plan.steps_per_epoch + step) / plan.total_steps, plan.warmup)
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.zero_grad(set_to_none=True)
            batches = [
                shard.batch(epoch, step * cfg.accumulation_steps + a, cfg.batch_size)
                for a in range(cfg.accumulation_steps)
            ]
            local = float(sum(shard.batch_weights(b).sum(dtype=np.float64) for b in batches))
            if gradients:
                total = (
                    plan.step_weight
                    if plan.step_weight is not None
                    else float(self._allreduce(torch.tensor([local], dtype=torch.float64, device=self.device))[0])
                )
                scale = plan.world / total if total else 0.0
            else:
                scale = 1.0 / local if local else 0.0
            for a, idx in enumerate(batches):
                index = torch.from_numpy(idx).to(self.device)
                weights = self.w[index] if self.w is not None else torch.ones(len(idx), device=self.device)
                # Gradients are allreduced once per step, after its last micro-batch.
                with self.model.no_sync() if self.model is not self.module and a < len(batches) - 1 else nullcontext():
                    loss = forward_loss(
                        self.model,
                        self.x[index],
                        self.y[index],
                        weights,
                        spec=self.spec,
                        bf16=cfg.bf16,
                        device=self.device,
                    )
                    (loss * scale).backward()
                loss_total += loss.detach()
            self.opt.step()
            seen += local
            rounds += gradients
            if not gradients and ((step + 1) % plan.sync_every == 0 or step + 1 == plan.steps_per_epoch):
                self._average_parameters()
                rounds += 1
        return seen, rounds


def collective_epoch(
    shard,
    params,
    spec,
    optim,
    plan: SyncPlan,
    *,
    token: str,
    rank: int,
    rendezvous: dict | None,
    epoch: int,
    fresh: bool,
    epochs: int = 1,
):
    """One rank's epochs ``epoch`` to ``epoch + epochs - 1`` of a data-parallel training over a
    ``torch.distributed`` group.

    The first call of an attempt (``fresh``) joins the group (once: later calls reuse it;
    a world of one rank joins none) and builds the rank's :class:`CollectiveTrainer` from
    ``params``; later calls continue it. A failure leaves the group at once, so that the
    peers' collectives fail too instead of waiting for the timeout.
    """
    import torch.distributed as dist

    from shardflow.tasks.process_group import CollectiveFailed, join_group, leave_group

    use_worker_threads()
    states = resident_plugin().states
    key = (token, rank)
    busy = (token, "busy")
    try:
        states[busy] = True
        if fresh:
            if plan.world > 1:
                join_group(token, rendezvous, rank=rank, world=plan.world, backend=plan.backend, timeout=plan.timeout)
            states[key] = CollectiveTrainer(shard, params, spec, optim, plan, rank=rank)
        elif key not in states:
            raise WorkerStateLost(
                f"rank {rank} of data-parallel MLP training {token} lost its state "
                "(the worker was restarted or replaced)"
            )
        return states[key].epochs(epoch, epochs)
    except BaseException as err:
        states.pop(busy, None)
        leave_group(token)
        if isinstance(err, dist.DistError) or (
            isinstance(err, RuntimeError)
            and not isinstance(err, (WorkerStateLost, CollectiveFailed))
            and "gloo" in str(err).lower()
        ):
            raise CollectiveFailed(f"rank {rank}: {_collective_message(err)}") from err
        raise
    finally:
        states.pop(busy, None)


def _collective_message(err: BaseException) -> str:
    """The gist of a gloo/NCCL error, without its source location and advice.

    Examples
    --------
    >>> _collective_message(RuntimeError("[/x/gloo/pair.cc:537] Read error [127.0.0.1]:1: Connection reset by "
    ...                                  "peer. This is typically caused by a remote worker hanging"))
    'Read error [127.0.0.1]:1: Connection reset by peer'
    """
    import re

    text = re.sub(r"\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", str(err).splitlines()[0] if str(err) else repr(err))
    return text.split(". This is typically")[0].rstrip(". ")[:300]
