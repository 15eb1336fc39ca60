"""The data-parallel MLP: each worker trains on the rows it holds, synchronised over a
``torch.distributed`` process group (gloo on CPU workers, NCCL on GPU workers).

Dask places the data and one pinned task per worker and evaluation (an epoch, or a few
short ones); the ranks' models, optimizers and rows stay on the workers in between
(:mod:`shardflow.tasks.mlp_steps`), and gradients or parameters travel over the group,
never through the scheduler. The ranks join the group once per attempt (a run, unless a
worker is lost), and a single worker joins none. This module sets up the rendezvous,
schedules the epochs, checkpoints by training time and resumes after a lost worker.
"""

from __future__ import annotations

import logging
import math
import time

from shardflow.cluster.factory import Runtime
from shardflow.core.errors import ShardflowError
from shardflow.core.storage import location
from shardflow.pipelines.graph import scatter_named
from shardflow.pipelines.interface import progress
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.setup.train_config import MLPConfig
from shardflow.pipelines.training.checkpoint import (
    checkpoint_due,
    mlp_checkpoint_token,
    read_mlp_checkpoint,
    write_mlp_checkpoint,
)
from shardflow.pipelines.training.collective import WorkerLost, gather_watching
from shardflow.pipelines.training.data import TrainingData, call_token, recover
from shardflow.pipelines.training.mlp_setup import mlp_optim_for, mlp_spec_for
from shardflow.tasks import mlp_steps
from shardflow.tasks import shards as shard_tasks
from shardflow.tasks.process_group import CollectiveFailed, leave_group, open_rendezvous, process_identity
from shardflow.tasks.worker_state import ResidentState, WorkerStateLost

logger = logging.getLogger("shardflow.train")

#: Seconds a collective waits for a silent peer when ``train.collective_timeout`` is null.
DEFAULT_COLLECTIVE_TIMEOUT = 600


def train_data_parallel_mlp(
    runtime: Runtime,
    data: TrainingData,
    cfg: MLPConfig,
    seed: int = 0,
    *,
    checkpoint_dir=None,
    max_attempts: int = 3,
    collective_timeout: float | None = 600,
    label: str = "data-parallel MLP",
    checkpoint_seconds: float | None = 60.0,
    stop=None,
) -> dict:
    """Train the MLP across workers, each rank on the rows its worker holds.

    ``sync: gradients``: DistributedDataParallel, gradients allreduced every step (in
    buckets, as the backward pass produces them): g = Σ_k grad_sum_k / Σ_k n_k over the
    ranks' batch rows (or sample weights), one optimizer step on every rank.
    ``sync: parameters`` (local SGD): each rank takes ``sync_every`` local steps, then
    the parameters are replaced by their mean weighted by the ranks' training weights
    (always at the end of an epoch). Every rank takes the same number of steps per epoch
    (a smaller shard wraps around), so unequal shards never deadlock. The length is
    ``cfg.epochs``, or the step budget ``cfg.max_steps`` (see :class:`MLPConfig`). The
    validation loss is computed after each evaluation (an epoch, or a few short ones);
    the best parameters are kept and training stops after ``early_stopping_patience``
    evaluations without improvement.

    A lost worker makes its peers' collectives fail at once (a silent one, after
    ``collective_timeout`` seconds), and training resumes after the last evaluation on
    the workers present, up to ``max_attempts`` times in all (optimizer moments restart,
    so the result matches an uninterrupted run within tolerance). With
    ``checkpoint_dir`` the state is saved there after the first evaluation that ends
    ``checkpoint_seconds`` or more after the last checkpoint (0: after every one; None:
    only the final state), and a later call continues from it. ``stop(evaluation,
    validation_loss)``, if given, ends training when it returns True (a tuning trial's
    pruner); ``stopped`` in the result is that evaluation's index, else None.

    Examples
    --------
    >>> out = train_data_parallel_mlp(runtime, data, MLPConfig(sync="gradients"))  # doctest: +SKIP
    >>> out["backend"], out["history"]["validation_loss"][-1]  # doctest: +SKIP
    ('gloo', 0.4381...)
    """
    from shardflow.tasks.neural import init_params

    started = time.perf_counter()
    spec = mlp_spec_for(data.preprocessor, cfg)
    ckpt = location(checkpoint_dir) if checkpoint_dir else None
    state = read_mlp_checkpoint(ckpt, data, cfg, seed)
    if state is None:
        params = init_params(spec, seed)
        state = {
            "epoch": 0,
            "params": params,
            "best_params": params,
            "best_loss": math.inf,
            "best_epoch": -1,
            "bad_epochs": 0,
            "stopped": None,
            "rounds": 0,
            "samples": 0,
            "history": {"train_loss": [], "validation_loss": [], "lr": [], "seconds": [], "epoch": []},
        }
    else:
        logger.info("mlp: resuming after epoch %d from %s", state["epoch"], ckpt)
    n_workers = len(runtime.client.scheduler_info(n_workers=-1)["workers"])
    restarts = []
    for attempt in range(1, max_attempts + 1):
        try:
            info = _collective_epochs(
                runtime,
                data,
                cfg,
                seed=seed,
                spec=spec,
                state=state,
                ckpt=(ckpt, checkpoint_seconds),
                started=started,
                label=label,
                timeout=collective_timeout or DEFAULT_COLLECTIVE_TIMEOUT,
                stop=stop,
            )
            break
        except (WorkerLost, WorkerStateLost, CollectiveFailed) as err:
            if attempt == max_attempts:
                raise
            logger.warning(
                "mlp: %s; attempt %d/%d resumes after epoch %d", err, attempt + 1, max_attempts, state["epoch"]
            )
            restarts.append(state["epoch"])
            recover(runtime, data, n_workers)
    return {
        "params": state["best_params"],
        "spec": spec,
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "rounds": state["rounds"],
        "seconds": time.perf_counter() - started,
        "samples": state["samples"],
        "restarts": restarts,
        "stopped": state.get("stopped"),
        **info,
    }


def _worker_shards(client, data: TrainingData, token: str, seed: int):
    """Each worker's partitions merged into one shard on that worker; its training rows and weight."""
    workers = sorted(set(data.workers))
    shards, rows, weights = {}, {}, {}
    for wi, w in enumerate(workers):
        held = [i for i, pw in enumerate(data.workers) if pw == w]
        rows[w] = sum(data.train_rows[i] for i in held)
        weights[w] = sum(data.train_weights[i] for i in held) if data.train_weights else float(rows[w])
        shards[w] = client.submit(
            shard_tasks.merge_shards,
            *[data.futures[i] for i in held],
            seed=seed * 101 + wi,
            key=f"train-mlp-shard-{token}-{wi}",
            workers=[w],
            allow_other_workers=False,
        )
    return shards, rows, weights


def _collective_epochs(runtime, data, cfg, *, seed, spec, state, ckpt, started, label, timeout, stop=None) -> dict:
    """Run the remaining epochs from ``state`` over a ``torch.distributed`` group: one pinned
    task per worker and evaluation, the model and rows resident on the workers in between;
    ``ckpt``: ``(directory or None, checkpoint_seconds)``."""
    from shardflow.tasks.neural import epochs_per_evaluation, lr_at, planned_epochs

    client = runtime.client
    client.register_plugin(ResidentState())  # idempotent: workers that join later get it too
    optim = mlp_optim_for(cfg, runtime.backend)
    token = call_token(data.token)
    shards, rows, weights = _worker_shards(client, data, token, seed)
    workers = [w for w in sorted(shards) if rows[w] > 0]
    rows_per_step = (cfg.batch_size or max(rows.values())) * cfg.accumulation_steps
    steps_per_epoch = max(1, math.ceil(max(rows[w] for w in workers) / rows_per_step))
    total_epochs = planned_epochs(cfg.epochs, cfg.max_steps, steps_per_epoch)
    per_evaluation = epochs_per_evaluation(steps_per_epoch)
    sync_every = (
        1
        if cfg.sync == "gradients"
        else (steps_per_epoch if cfg.sync_every is None else min(cfg.sync_every, steps_per_epoch))
    )
    weighted = bool(data.preprocessor.weighted)
    plan = mlp_steps.SyncPlan(
        sync=cfg.sync,
        sync_every=sync_every,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_epochs * steps_per_epoch,
        world=len(workers),
        total_weight=sum(weights[w] for w in workers),
        step_weight=None
        if weighted
        else float(
            cfg.accumulation_steps * sum(min(cfg.batch_size, rows[w]) if cfg.batch_size else rows[w] for w in workers)
        ),
        lr=cfg.lr,
        lr_schedule=cfg.lr_schedule,
        warmup=cfg.warmup,
        backend="nccl" if optim.device == "cuda" else "gloo",
        timeout=float(timeout),
    )
    # One process per worker, told apart across machines and containers (not by pid alone).
    pids = client.run(process_identity, workers=workers) if len(workers) > 1 else {}
    if len(set(pids.values())) < len(pids):
        raise ShardflowError(
            "train.mlp: the data-parallel MLP needs one process per worker (each rank joins a "
            "torch.distributed process group), and some workers of this cluster share a process: "
            "start the cluster with processes=True, or train mlp_partitions instead"
        )
    epochs = progress.Counter(label, total_epochs, "epochs", done=state["epoch"]) if progress.enabled() else None
    fresh = True  # the first call of this attempt joins the group and builds the ranks' models
    ckpt, checkpoint_seconds = ckpt
    clock = {"checkpoint": time.perf_counter(), "seconds": checkpoint_seconds}
    try:
        rendezvous = None  # one worker: no process group at all
        if len(workers) > 1:
            rendezvous = client.submit(
                open_rendezvous,
                token,
                timeout,
                key=f"train-mlp-rendezvous-{token}",
                workers=[workers[0]],
                allow_other_workers=False,
                pure=False,
            )
            rendezvous = gather_watching(client, [rendezvous], workers[:1], "the MLP's rendezvous")[0]
            logger.debug(
                "mlp: %s process group of %d ranks, rendezvous at %s:%s",
                plan.backend,
                plan.world,
                rendezvous["host"],
                rendezvous["port"],
            )
        params_f = scatter_named(client, f"train-mlp-params-{token}", state["params"])
        epoch = state["epoch"]
        while epoch < total_epochs:
            count = min(per_evaluation, total_epochs - epoch)
            futures = [
                client.submit(
                    mlp_steps.collective_epoch,
                    shards[w],
                    params_f if fresh else None,
                    spec,
                    optim,
                    plan,
                    token=token,
                    rank=rank,
                    rendezvous=rendezvous,
                    epoch=epoch,
                    fresh=fresh,
                    epochs=count,
                    key=f"train-mlp-{token}-e{epoch}-rank{rank}",
                    workers=[w],
                    allow_other_workers=False,
                )
                for rank, w in enumerate(workers)
            ]
            results = gather_watching(client, futures, workers, "data-parallel MLP training")
            fresh = False
            current = results[0]["params"]
            train_loss = sum(r["loss_sum"] for r in results) / (sum(r["seen"] for r in results) or 1.0)
            valid_weight = sum(r["validation"]["weight"] for r in results)
            valid_loss = (
                sum(r["validation"]["loss_sum"] for r in results) / valid_weight if valid_weight else float("nan")
            )
            state["rounds"] += results[0]["rounds"]
            epoch += count
            lr = lr_at(cfg.lr_schedule, cfg.lr, (epoch * steps_per_epoch - 1) / plan.total_steps, cfg.warmup)
            if _end_of_epoch(
                state,
                epoch - 1,
                cfg,
                current=current,
                train_loss=train_loss,
                valid_loss=valid_loss,
                valid_weight=valid_weight,
                lr=lr,
                seen=count * epoch_rows(rows, workers, steps_per_epoch, cfg),
                started=started,
                epochs=epochs,
                total_epochs=total_epochs,
                ckpt=ckpt,
                clock=clock,
                data=data,
                seed=seed,
                stop=stop,
            ):
                break
    except BaseException:
        if epochs is not None:
            epochs.close(failed=True)
        raise
    else:
        if epochs is not None:
            epochs.close()
    finally:
        try:
            client.run(leave_group, token)
        except Exception as err:
            logger.debug("mlp: leaving the process group on every worker failed: %s", err)
    return {
        "steps_per_epoch": steps_per_epoch,
        "sync_every": sync_every,
        "workers": len(workers),
        "backend": plan.backend if len(workers) > 1 else None,
        "epochs": total_epochs,
    }


def _end_of_epoch(
    state,
    epoch,
    cfg,
    *,
    current,
    train_loss,
    valid_loss,
    valid_weight,
    lr,
    seen,
    started,
    epochs,
    total_epochs,
    ckpt,
    clock,
    data,
    seed,
    stop=None,
) -> bool:
    """Record an evaluation after ``epoch`` in ``state`` (history, best parameters, early
    stopping), checkpoint it if one is due, and say whether training stops early.
    ``epochs``: the progress counter or None; ``clock``: ``{"checkpoint": time of the last
    checkpoint, "seconds": checkpoint_seconds}``; ``stop``: see :func:`train_data_parallel_mlp`."""
    h = state["history"]
    h.setdefault("epoch", []).append(epoch + 1)
    h["train_loss"].append(train_loss)
    h["validation_loss"].append(valid_loss)
    h["lr"].append(lr)
    h["seconds"].append(time.perf_counter() - started)
    state["samples"] += seen
    state["epoch"] = epoch + 1
    state["params"] = current
    logger.debug(
        "mlp epoch %d/%d: train loss %.5f, validation loss %.5f", epoch + 1, total_epochs, train_loss, valid_loss
    )
    if epochs is not None:
        epochs.update(epoch + 1, f"train loss {train_loss:.5f}, validation loss {valid_loss:.5f}")
    finished = False
    if valid_loss < state["best_loss"] or not valid_weight:
        state.update(best_loss=valid_loss, best_params=current, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
        finished = cfg.early_stopping_patience is not None and state["bad_epochs"] >= cfg.early_stopping_patience
    if stop is not None and stop(len(h["validation_loss"]) - 1, valid_loss):
        state["stopped"] = len(h["validation_loss"]) - 1
        finished = True
    if finished:
        state["epoch"] = total_epochs  # a resumed run must not train past an early stop
    if ckpt is not None and (
        state["epoch"] >= total_epochs or checkpoint_due(time.perf_counter() - clock["checkpoint"], clock["seconds"])
    ):
        write_mlp_checkpoint(ckpt, state, mlp_checkpoint_token(data, cfg, seed))
        clock["checkpoint"] = time.perf_counter()
    if finished:
        logger.info("mlp: early stop after epoch %d (best %d)", epoch + 1, state["best_epoch"] + 1)
    return finished


def epoch_rows(rows: dict, workers, steps_per_epoch: int, cfg: MLPConfig) -> int:
    """Rows processed in one epoch over all workers (each takes ``steps_per_epoch`` steps)."""
    return sum(
        steps_per_epoch * cfg.accumulation_steps * (min(cfg.batch_size, rows[w]) if cfg.batch_size else rows[w])
        for w in workers
    )


# ----------------------------------------------------------------------------- as a model family

_META = (
    "history",
    "best_epoch",
    "rounds",
    "steps_per_epoch",
    "sync_every",
    "seconds",
    "workers",
    "samples",
    "restarts",
    "epochs",
)


def train_family(context, family) -> dict:
    tc = context.config
    return train_data_parallel_mlp(
        context.runtime,
        context.data,
        tc.mlp,
        tc.seed,
        label=family.name,
        checkpoint_dir=RunDir(context.run_dir).checkpoints(family.name),
        max_attempts=tc.max_attempts,
        collective_timeout=tc.collective_timeout,
        checkpoint_seconds=tc.checkpoint_seconds,
    )


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.records.artifacts import save_weights, write_json

    save_weights(result["params"], RunDir.train_file(stage_dir, family.file("pt")))
    write_json(
        RunDir.train_file(stage_dir, family.file("json")),
        {"spec": result["spec"].to_dict(), **{k: result[k] for k in _META}},
    )


def load_family(files, family) -> dict:
    meta = files.read_json(files.run.trained(family.file()))
    return {"spec": meta["spec"], "params": files.read_weights(files.run.trained(family.file("pt")))}
