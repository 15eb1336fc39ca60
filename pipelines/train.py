"""The training stage: global XGBoost, per-partition models, data-parallel MLP, stacking.

Data placement is explicit and deterministic: partition ``i`` of the ETL's Zarr arrays
is read by, and stays on, worker ``i mod W`` (workers sorted by address). Every model
family then computes where the rows already are: ``xgboost.dask`` finds the partitions
on their workers, per-partition models run as tasks next to their partition, and each
worker's MLP shard is assembled from the partitions it holds. Only models, parameters,
gradients and metrics cross the network.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
from dask.base import tokenize

from shardflow.cluster.factory import Runtime
from shardflow.pipelines.config import MLPConfig, PartitionModelsConfig, XGBoostConfig
from shardflow.pipelines import progress
from shardflow.pipelines.collective import WorkerLost, gather_watching
from shardflow.pipelines.graph import scatter_named, tree_reduce_futures
from shardflow.pipelines.outputs import ZARR_DIR
from shardflow.tasks import shards as shard_tasks
from shardflow.tasks.encode import Preprocessor
from shardflow.tasks.errors import ShardflowError
from shardflow.tasks.metrics import metric_direction
from shardflow.tasks.models import worker_threads

logger = logging.getLogger("shardflow.train")


# ----------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The ETL output loaded onto the workers, one :class:`Shard` future per partition."""

    futures: list
    workers: list  #: worker address holding each partition
    train_rows: list
    valid_rows: list
    preprocessor: Preprocessor
    token: str
    etl_dir: Path = None
    seed: int = 0
    attempt: int = 0

    @property
    def feature_names(self) -> list:
        return self.preprocessor.feature_names

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def task(self) -> str:
        return self.preprocessor.task

    def feature_types(self, categorical: bool) -> list:
        n_num = len(self.preprocessor.numeric)
        return ["q"] * n_num + ["c" if categorical else "q"] * (self.n_features - n_num)


def sorted_workers(client) -> list:
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        try:
            client.wait_for_workers(1, timeout=30)
        except TimeoutError:
            pass
        workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if not workers:
        raise RuntimeError("the cluster has no workers; start some or check config key 'cluster.spec'")
    return workers


def load_training_data(runtime: Runtime, etl_dir, seed: int = 0, attempt: int = 0) -> TrainingData:
    """Read each partition's rows on its worker and keep them there (futures).

    Parameters
    ----------
    runtime : Runtime
    etl_dir : path
        The ETL stage output (``run_dir / "etl"``).
    seed : int
        Seeds the per-partition shuffles.
    attempt : int
        Reloads after a failure use new task keys, so they never race the old ones.
    """
    import json

    import zarr

    etl_dir = Path(etl_dir)
    preprocessor = Preprocessor.from_json((etl_dir / "preprocessor.json").read_text())
    attrs = zarr.open_group(str(etl_dir / ZARR_DIR), mode="r").attrs
    offsets, rows = attrs["partition_offsets"], attrs["partition_rows"]
    client = runtime.client
    workers = sorted_workers(client)
    # The token names the data: the same ETL output (its fitted preprocessing included) and seed.
    token = tokenize(str(etl_dir.resolve()), (etl_dir / "preprocessor.json").read_text(),
                     json.loads((etl_dir / "summary.json").read_text())["rows"], seed)[:10]
    placement = [workers[i % len(workers)] for i in range(len(rows))]
    prefix = f"train-load-partition-{token}" + (f"-retry{attempt}" if attempt else "")
    futures = [
        client.submit(shard_tasks.read_shard, str(etl_dir / ZARR_DIR), offsets[i], rows[i], seed * 1_000_003 + i,
                      key=f"{prefix}-{i}", workers=[placement[i]],
                      # a preference: if the worker is lost, the partition is read again elsewhere
                      allow_other_workers=True)
        for i in range(len(rows))
    ]
    sizes = client.gather([client.submit(shard_tasks.shard_sizes, f, key=f"{prefix}-sizes-{i}",
                                         workers=[placement[i]]) for i, f in enumerate(futures)])
    return TrainingData(futures, placement, [s[0] for s in sizes], [s[1] for s in sizes], preprocessor, token,
                        etl_dir, seed)


def call_token(prefix: str) -> str:
    """A key suffix unique to one call: training tasks are not pure, so two calls with
    the same inputs must never share keys (a finished call's results could be returned)."""
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# ----------------------------------------------------------------------------- global XGBoost


def xgboost_params(task: str, cfg: XGBoostConfig, backend: str, seed: int) -> dict:
    """shardflow's XGBoost defaults for ``task``, overridden by ``train.xgboost.params``."""
    params = {
        "tree_method": "hist",
        "max_depth": 8,
        "eta": 0.1,
        "max_bin": 256,
        "seed": seed,
        "device": "cuda" if backend == "cudf" else "cpu",
    }
    if task == "classification":
        params.update(objective="binary:logistic", eval_metric=["auc", "logloss"])
    else:
        params.update(objective="reg:squarederror", eval_metric=["rmse"])
    params.update(cfg.params)
    return params


def _xgboost_rounds(client, data, params, cfg, booster, state, remaining, checkpoint_dir, token, metric, callbacks):
    """Train ``remaining`` rounds with one pinned task per worker, joined by a tracker on
    the scheduler (see :mod:`shardflow.pipelines.collective`)."""
    from shardflow.pipelines.checkpoint import ResumableState
    from shardflow.pipelines.collective import gather_watching, start_xgboost_tracker
    from shardflow.tasks.models import train_xgboost_rank

    held = {}
    for f, w, n in zip(data.futures, data.workers, data.train_rows):
        if n:  # a worker with no training rows has nothing to contribute
            held.setdefault(w, []).append(f)
    workers = sorted(held)
    tracker = ResumableState(str(checkpoint_dir), cfg.checkpoint_every, token, metric,
                             metric_direction(metric) == "max", cfg.early_stopping_rounds, state,
                             progress_topic=f"shardflow-progress-{token}")
    # A collective that loses a member must fail, not wait forever for it.
    coll = start_xgboost_tracker(client, len(workers), cfg.collective_timeout)
    if cfg.collective_timeout:
        coll["dmlc_timeout"] = int(cfg.collective_timeout)
    model = bytes(booster.save_raw("ubj")) if booster is not None else None
    name = call_token(f"train-xgboost-global-{token}")
    done = state["rounds"] if state else 0
    with progress.Rounds(client, tracker.progress_topic, "xgboost", total=done + remaining, done=done):
        futures = [client.submit(train_xgboost_rank, coll, rank, *held[w], params=params, rounds=remaining,
                                 model=model, feature_names=data.feature_names,
                                 feature_types=data.feature_types(cfg.categorical), categorical=cfg.categorical,
                                 callbacks=[tracker, *callbacks], key=f"{name}-rank{rank}", workers=[w],
                                 allow_other_workers=False, pure=False)
                   for rank, w in enumerate(workers)]
        gather_watching(client, futures, workers, "global XGBoost training")


def _recover(runtime, data: TrainingData, n_workers: int, timeout: float = 60.0) -> TrainingData:
    """After a failed collective step: wait for the workers to come back, place the data again.

    A failed collective can take worker processes down after the error is seen, so
    the worker set must stay unchanged for a moment before the data is placed again.
    """
    client = runtime.client
    deadline = time.monotonic() + timeout
    previous = None
    while True:
        current = sorted(client.scheduler_info(n_workers=-1)["workers"])
        if current and current == previous and (len(current) >= n_workers or time.monotonic() > deadline):
            break
        if time.monotonic() > deadline + timeout:
            raise RuntimeError("the workers did not come back after a failure; check the cluster (cluster.spec)")
        previous = current
        time.sleep(1.0)
    if len(current) < n_workers:
        logger.warning("only %d of %d workers came back within %.0fs; continuing on them", len(current),
                       n_workers, timeout)
    data.attempt += 1
    fresh = load_training_data(runtime, data.etl_dir, data.seed, attempt=data.attempt)
    # In place: every later stage of this training must use the data as it is now placed.
    data.futures, data.workers = fresh.futures, fresh.workers
    return data


def _stopping_metric(params: dict) -> str:
    metrics = params["eval_metric"]
    return metrics[-1] if isinstance(metrics, (list, tuple)) else metrics


def train_global_xgboost(runtime: Runtime, data: TrainingData, cfg: XGBoostConfig, checkpoint_dir,
                         seed: int = 0, callbacks=()) -> dict:
    """One exact XGBoost model over all partitions with ``xgboost.dask`` (allreduce).

    Early stopping watches the validation split; every ``cfg.checkpoint_every`` rounds
    the model and its state are checkpointed in ``checkpoint_dir``, and a call that
    finds a checkpoint of the same job continues from it.

    Returns
    -------
    dict
        ``model`` (UBJSON bytes, truncated to the best iteration), ``history``
        (per-round validation metrics), ``best_iteration``, ``rounds``,
        ``round_seconds``, ``seconds``, ``resumed_from``.
    """
    from shardflow.pipelines.checkpoint import read_checkpoint

    started = time.perf_counter()
    client = runtime.client
    params = xgboost_params(data.task, cfg, runtime.backend, seed)
    metric = _stopping_metric(params)
    token = tokenize(data.token, params, cfg.num_boost_round, cfg.early_stopping_rounds, cfg.categorical)[:16]
    _, first_state = read_checkpoint(checkpoint_dir, token)
    resumed_from = first_state["rounds"] if first_state else 0
    n_workers = len(client.scheduler_info(n_workers=-1)["workers"])
    restarts = []
    for attempt in range(1, cfg.max_attempts + 1):
        booster, state = read_checkpoint(checkpoint_dir, token)
        done = bool(state and (state.get("stopped") or state.get("finished")))
        remaining = 0 if done else cfg.num_boost_round - (state["rounds"] if state else 0)
        if state and remaining:
            logger.info("xgboost: resuming from the checkpoint at round %d", state["rounds"])
            if attempt > 1:
                restarts.append(state["rounds"])
        if remaining <= 0:
            break
        try:
            _xgboost_rounds(client, data, params, cfg, booster, state, remaining, checkpoint_dir, token, metric,
                            callbacks)
            break
        except Exception as err:  # noqa: BLE001 - collective training cannot survive a lost member
            if attempt == cfg.max_attempts or isinstance(err, ShardflowError):
                raise
            logger.warning("xgboost: training failed (%s: %s); attempt %d/%d resumes from the last checkpoint",
                           type(err).__name__, str(err).splitlines()[0][:200], attempt + 1, cfg.max_attempts)
            data = _recover(runtime, data, n_workers)
    booster, state = read_checkpoint(checkpoint_dir, token)
    best = int(state["best_iteration"])
    final = booster[: best + 1] if cfg.early_stopping_rounds is not None else booster
    seconds = time.perf_counter() - started
    logger.info("xgboost: %d rounds, best %d (%s %.5f), %.1fs", state["rounds"], best, metric,
                state["best_score"], seconds)
    return {"model": bytes(final.save_raw("ubj")), "history": state["history"], "best_iteration": best,
            "rounds": state["rounds"], "round_seconds": state["round_seconds"], "seconds": seconds,
            "resumed_from": resumed_from, "restarts": restarts, "params": params}


# ----------------------------------------------------------------------------- per-partition models


def _train_group_xgboost(*shards, params, rounds, feature_names, feature_types, task):
    from shardflow.tasks.models import train_xgboost_local

    s = shard_tasks.merge_shards(*shards)
    return train_xgboost_local(s.x_train, s.y_train, s.x_valid, s.y_valid, params, rounds, feature_names,
                               feature_types, task, nthread=worker_threads())


def _train_group_mlp(*shards, spec, optim, epochs, seed, schedule):
    import torch

    from shardflow.tasks.metrics import finish_metrics, partial_metrics
    from shardflow.tasks.neural import predict, train_local

    threads = worker_threads()
    if threads:
        torch.set_num_threads(threads)
    s = shard_tasks.merge_shards(*shards)
    out = train_local(s.x_train, s.y_train, s.x_valid, s.y_valid, spec, optim, epochs, seed, schedule)
    out["validation"] = finish_metrics(partial_metrics(s.y_valid, predict(out["params"], spec, s.x_valid), spec.task),
                                       spec.task) if len(s.y_valid) else {"rows": 0}
    return out


def partition_groups(n_partitions: int, per_model: int) -> list:
    return [list(range(i, min(i + per_model, n_partitions))) for i in range(0, n_partitions, per_model)]


def train_partition_models(runtime: Runtime, data: TrainingData, cfg: PartitionModelsConfig, families,
                           xgb_params: dict, mlp_spec=None, mlp_optim=None, mlp_schedule: str = "constant",
                           categorical: bool = True, seed: int = 0) -> dict:
    """Train one model per group of partitions, in parallel, with no communication.

    Each task runs on the worker that holds its partition (its only input). Groups
    whose training rows are all gone (an empty partition) get no model.
    """
    client = runtime.client
    groups = [g for g in partition_groups(len(data.futures), cfg.partitions_per_model)
              if sum(data.train_rows[i] for i in g) > 0]
    out = {}
    pending = {}
    token = call_token(data.token)
    for family in families:
        for gi, group in enumerate(groups):
            args = [data.futures[i] for i in group]
            if family == "xgboost_partitions":
                fut = client.submit(_train_group_xgboost, *args, params=xgb_params, rounds=cfg.xgboost_rounds,
                                    feature_names=data.feature_names, feature_types=data.feature_types(categorical),
                                    task=data.task, key=f"train-xgboost-partition-{token}-{gi}", pure=False)
            else:
                fut = client.submit(_train_group_mlp, *args, spec=mlp_spec, optim=mlp_optim, epochs=cfg.mlp_epochs,
                                    seed=seed * 7919 + gi, schedule=mlp_schedule,
                                    key=f"train-mlp-partition-{token}-{gi}", pure=False)
            pending[(family, gi)] = fut
    started = time.perf_counter()
    results = dict(zip(pending, progress.compute(client, list(pending.values()), f"train {', '.join(families)}")))
    wall = time.perf_counter() - started
    for family in families:
        members = [results[(family, gi)] for gi in range(len(groups))]
        out[family] = {
            "groups": groups,
            "weights": [m["rows"] for m in members],
            "members": members,
            # Training time of the family alone: its models' seconds spread over the workers
            # (the families train side by side, so the shared wall time would count both).
            "seconds": wall if len(families) == 1 else sum(m["seconds"] for m in members) / max(
                1, min(len(members), len(set(data.workers)))),
            "partition_metrics": [partition_model_metrics(g, m["rows"], m["validation"])
                                  for g, m in zip(groups, members)],
        }
    return out


def partition_model_metrics(partitions: list, train_rows: int, validation: dict) -> dict:
    """One per-partition model's entry of the report: its partitions, training rows, and
    metrics on its own validation rows (whose count the metrics' ``rows`` is)."""
    return {"partitions": partitions, **validation, "train_rows": train_rows,
            "validation_rows": validation.get("rows", 0)}


# ----------------------------------------------------------------------------- data-parallel MLP


def mlp_spec_for(preprocessor: Preprocessor, cfg: MLPConfig):
    from shardflow.tasks.neural import MLPSpec

    return MLPSpec(n_numeric=len(preprocessor.numeric),
                   cardinalities=tuple(preprocessor.cardinalities[c] for c in preprocessor.categorical),
                   task=preprocessor.task, hidden=tuple(cfg.hidden), embedding_dim=cfg.embedding_dim,
                   dropout=cfg.dropout)


def mlp_optim_for(cfg: MLPConfig, backend: str):
    from shardflow.tasks.neural import OptimConfig

    device = cfg.device if cfg.device != "auto" else ("cuda" if backend == "cudf" else "cpu")
    return OptimConfig(optimizer=cfg.optimizer, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       batch_size=cfg.batch_size, accumulation_steps=cfg.accumulation_steps, bf16=cfg.bf16,
                       device=device)


#: Optimizer state of the data-parallel MLP, kept in each worker process between rounds
#: (it never needs to leave the worker), keyed by (training token, worker index).
_RESIDENT_STATE: dict = {}


class WorkerStateLost(RuntimeError):
    """A data-parallel round ran on a worker that does not hold the training's state."""


def _current_params(params_or_reduced, like):
    """Parameters from the previous round: plain (the first round) or a reduced weighted sum."""
    from shardflow.tasks.neural import weighted_mean

    if "sum" in params_or_reduced:
        return weighted_mean(params_or_reduced, like)
    return params_or_reduced


def _worker_round(shard, params_or_reduced, like, spec, optim, epoch, first_step, steps, lr, token, index, fresh):
    """One worker's share of a round: finish the last average, take local steps, return w·θ."""
    import torch

    from shardflow.tasks.neural import local_steps, weighted_sum

    threads = worker_threads()
    if threads:
        torch.set_num_threads(threads)
    key = (token, index)
    if fresh:
        _RESIDENT_STATE.pop(key, None)
    elif key not in _RESIDENT_STATE:
        raise WorkerStateLost(f"worker {index} of data-parallel MLP training {token} lost its optimizer state "
                              "(the worker was restarted or replaced)")
    params = _current_params(params_or_reduced, like)
    out = local_steps(shard, params, spec, optim, epoch=epoch, first_step=first_step, steps=steps, lr=lr,
                      optimizer_state=_RESIDENT_STATE.get(key))
    _RESIDENT_STATE[key] = out.pop("optimizer_state")
    return weighted_sum(out)


def _forget_state(token):
    for key in [k for k in _RESIDENT_STATE if k[0] == token]:
        del _RESIDENT_STATE[key]


def _validation_loss(shard, params_or_reduced, like, spec, device):
    from shardflow.tasks.neural import loss_on

    return loss_on(shard, _current_params(params_or_reduced, like), spec, device)


def _worker_gradient(shard, params, spec, optim, epoch, step):
    import torch

    from shardflow.tasks.neural import shard_gradient

    threads = worker_threads()
    if threads:
        torch.set_num_threads(threads)
    return shard_gradient(shard, params, spec, optim, epoch=epoch, step=step)


def _apply(params, reduced, previous, spec, optim, lr):
    from shardflow.tasks.neural import apply_gradient, weighted_mean

    gradient = weighted_mean(reduced, {k: v for k, v in params.items()})
    state = previous["optimizer_state"] if previous else None
    out = apply_gradient(params, gradient, spec, optim, lr, state)
    out["loss_sum"] = reduced["loss_sum"]
    out["weight"] = reduced["weight"]
    return out


def _take(result, key):
    return result[key]


def train_data_parallel_mlp(runtime: Runtime, data: TrainingData, cfg: MLPConfig, seed: int = 0,
                            checkpoint_dir=None, max_attempts: int = 3) -> dict:
    """Train the MLP across workers, each on the rows it holds, averaging every round.

    ``sync: parameters``: each worker takes ``sync_every`` local steps from the current
    parameters; the new parameters are the row-weighted mean of the workers' (a tree
    reduction on the cluster). ``sync: gradients``: each step, the workers' gradient
    sums are reduced to the mean gradient of all their rows and one optimizer step is
    applied. Validation loss is computed after each epoch; the best parameters are kept
    and training stops after ``early_stopping_patience`` epochs without improvement.

    With ``checkpoint_dir``, the state after every epoch is saved there; if a worker is
    lost, training resumes from the last epoch on the workers present (optimizer
    moments restart, so the result matches an uninterrupted run within tolerance).
    """
    from shardflow.tasks.neural import init_params

    started = time.perf_counter()
    spec = mlp_spec_for(data.preprocessor, cfg)
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    state = _read_mlp_checkpoint(ckpt, data, cfg, seed)
    if state is None:
        params = init_params(spec, seed)
        state = {"epoch": 0, "params": params, "best_params": params, "best_loss": math.inf, "best_epoch": -1,
                 "bad_epochs": 0, "rounds": 0, "samples": 0,
                 "history": {"train_loss": [], "validation_loss": [], "lr": [], "seconds": []}}
    else:
        logger.info("mlp: resuming after epoch %d from %s", state["epoch"], ckpt)
    n_workers = len(runtime.client.scheduler_info(n_workers=-1)["workers"])
    restarts = []
    for attempt in range(1, max_attempts + 1):
        try:
            info = _mlp_epochs(runtime, data, cfg, seed, spec, state, ckpt, started)
            break
        except (WorkerLost, WorkerStateLost) as err:
            if attempt == max_attempts:
                raise
            logger.warning("mlp: %s; attempt %d/%d resumes after epoch %d", err, attempt + 1, max_attempts,
                           state["epoch"])
            restarts.append(state["epoch"])
            _recover(runtime, data, n_workers)
    return {"params": state["best_params"], "spec": spec, "history": state["history"],
            "best_epoch": state["best_epoch"], "rounds": state["rounds"], "seconds": time.perf_counter() - started,
            "samples": state["samples"], "restarts": restarts, **info}


def _mlp_checkpoint_token(data, cfg, seed) -> str:
    return tokenize(data.token, cfg, seed)[:16]


def _read_mlp_checkpoint(ckpt, data, cfg, seed):
    import json

    if ckpt is None or not (ckpt / "state.json").exists():
        return None
    meta = json.loads((ckpt / "state.json").read_text())
    if meta.get("token") != _mlp_checkpoint_token(data, cfg, seed):
        return None
    from shardflow.pipelines.artifacts import _load_weights

    meta["params"] = _load_weights(ckpt / "params.pt")
    meta["best_params"] = _load_weights(ckpt / "best.pt")
    return meta


def _write_mlp_checkpoint(ckpt, state, token) -> None:
    import json
    import os

    from shardflow.pipelines.artifacts import _save_weights

    ckpt.mkdir(parents=True, exist_ok=True)
    for name, key in (("params.pt", "params"), ("best.pt", "best_params")):
        tmp = ckpt / f".{name}.tmp"
        _save_weights(state[key], tmp)
        os.replace(tmp, ckpt / name)
    meta = {k: v for k, v in state.items() if k not in ("params", "best_params")}
    meta["token"] = token
    tmp = ckpt / ".state.json.tmp"
    tmp.write_text(json.dumps(meta, default=float))
    os.replace(tmp, ckpt / "state.json")  # last: the weights it names are in place


def _mlp_epochs(runtime, data, cfg, seed, spec, state, ckpt, started) -> dict:
    """Run the remaining epochs from ``state`` (updated in place after each epoch)."""
    from shardflow.tasks.neural import combine_weighted, lr_at

    client = runtime.client
    optim = mlp_optim_for(cfg, runtime.backend)
    token = call_token(data.token)
    workers = sorted(set(data.workers))
    shards, rows = {}, {}
    for wi, w in enumerate(workers):
        held = [f for f, pw in zip(data.futures, data.workers) if pw == w]
        rows[w] = sum(n for n, pw in zip(data.train_rows, data.workers) if pw == w)
        shards[w] = client.submit(shard_tasks.merge_shards, *held, seed=seed * 101 + wi,
                                  key=f"train-mlp-shard-{token}-{wi}", workers=[w], allow_other_workers=False)
    workers = [w for w in workers if rows[w] > 0]
    rows_per_step = (cfg.batch_size or max(rows.values())) * cfg.accumulation_steps
    steps_per_epoch = max(1, math.ceil(max(rows[w] for w in workers) / rows_per_step))
    sync_every = steps_per_epoch if cfg.sync_every is None else min(cfg.sync_every, steps_per_epoch)
    if cfg.sync == "gradients":
        sync_every = 1
    total_steps = cfg.epochs * steps_per_epoch
    params_f = scatter_named(client, f"train-mlp-params-{token}", state["params"])
    params_like = params_f  # dtypes and names of the parameters, on every worker
    apply_state = None
    fresh = True  # the first round of this attempt starts the workers' optimizer state
    epochs = progress.Counter("mlp", cfg.epochs, "epochs", done=state["epoch"]) if progress.enabled() else None
    try:
        for epoch in range(state["epoch"], cfg.epochs):
            losses = []
            step = 0
            while step < steps_per_epoch:
                n = min(sync_every, steps_per_epoch - step)
                lr = lr_at(cfg.lr_schedule, cfg.lr, (epoch * steps_per_epoch + step) / total_steps, cfg.warmup)
                name = f"train-mlp-{token}-e{epoch}-s{step}"
                if cfg.sync == "parameters":
                    leaves = [client.submit(_worker_round, shards[w], params_f, params_like, spec, optim, epoch,
                                            step, n, lr, token, wi, fresh, key=f"{name}-local-{wi}", workers=[w],
                                            allow_other_workers=False)
                              for wi, w in enumerate(workers)]
                    # The reduced weighted sum is the next round's input: each worker finishes the
                    # division itself, so a round costs two hops (local steps, then the reduction).
                    reduced = tree_reduce_futures(client, leaves, combine_weighted, f"{name}-average")
                    params_f = reduced
                else:
                    grads = [client.submit(_worker_gradient, shards[w], params_f, spec, optim, epoch, step,
                                           key=f"{name}-gradient-{wi}", workers=[w], allow_other_workers=False)
                             for wi, w in enumerate(workers)]
                    reduced = tree_reduce_futures(client, grads, combine_weighted, f"{name}-average")
                    apply_state = client.submit(_apply, params_f, reduced, apply_state, spec, optim, lr,
                                                key=f"{name}-apply")
                    params_f = client.submit(_take, apply_state, "params", key=f"{name}-params")
                fresh = False
                losses.append(client.submit(_take, reduced, "loss_sum", key=f"{name}-loss"))
                step += n
                state["rounds"] += 1
            valid = [client.submit(_validation_loss, shards[w], params_f, params_like, spec, optim.device,
                                   key=f"train-mlp-{token}-e{epoch}-valid-{wi}", workers=[w])
                     for wi, w in enumerate(workers)]
            current = client.submit(_current_params, params_f, params_like, key=f"train-mlp-{token}-e{epoch}-params")
            gathered = gather_watching(client, [current, *valid, *losses], workers, "data-parallel MLP training")
            current, valid, loss_values = gathered[0], gathered[1:1 + len(valid)], gathered[1 + len(valid):]
            seen = epoch_rows(rows, workers, steps_per_epoch, cfg)
            train_loss = sum(loss_values) / max(1, seen)
            valid_rows = sum(v["rows"] for v in valid)
            valid_loss = sum(v["loss_sum"] for v in valid) / valid_rows if valid_rows else float("nan")
            h = state["history"]
            h["train_loss"].append(train_loss)
            h["validation_loss"].append(valid_loss)
            h["lr"].append(lr)
            h["seconds"].append(time.perf_counter() - started)
            state["samples"] += seen
            state["epoch"] = epoch + 1
            state["params"] = current
            logger.debug("mlp epoch %d/%d: train loss %.5f, validation loss %.5f", epoch + 1, cfg.epochs,
                         train_loss, valid_loss)
            if epochs is not None:
                epochs.update(epoch + 1, f"train loss {train_loss:.5f}, validation loss {valid_loss:.5f}")
            stop = False
            if valid_loss < state["best_loss"] or not valid_rows:
                state.update(best_loss=valid_loss, best_params=current, best_epoch=epoch, bad_epochs=0)
            else:
                state["bad_epochs"] += 1
                stop = cfg.early_stopping_patience is not None and state["bad_epochs"] >= cfg.early_stopping_patience
            if stop:
                state["epoch"] = cfg.epochs  # a resumed run must not train past an early stop
            if ckpt is not None:
                _write_mlp_checkpoint(ckpt, state, _mlp_checkpoint_token(data, cfg, seed))
            if stop:
                logger.info("mlp: early stop after epoch %d (best %d)", epoch + 1, state["best_epoch"] + 1)
                break
    except BaseException:
        if epochs is not None:
            epochs.close(failed=True)
        raise
    else:
        if epochs is not None:
            epochs.close()
    finally:
        client.run(_forget_state, token)
    return {"steps_per_epoch": steps_per_epoch, "sync_every": sync_every, "workers": len(workers)}


def epoch_rows(rows: dict, workers, steps_per_epoch: int, cfg: MLPConfig) -> int:
    """Rows processed in one epoch over all workers (each takes ``steps_per_epoch`` steps)."""
    return sum(steps_per_epoch * cfg.accumulation_steps * (min(cfg.batch_size, rows[w]) if cfg.batch_size else rows[w])
               for w in workers)


# ----------------------------------------------------------------------------- stacking


def _member_predictions(shard, models, task):
    """Each per-partition model's predictions on this partition's validation rows (K × n)."""
    from shardflow.tasks.models import xgboost_predict

    threads = worker_threads()
    return np.vstack([xgboost_predict(m, shard.x_valid, threads) for m in models]) if len(shard.y_valid) \
        else np.zeros((len(models), 0))


def _fold_masks(n: int) -> tuple:
    even = np.arange(n) % 2 == 0
    return even, ~even


def _stack_terms(predictions, shard, thetas, task):
    from shardflow.tasks.models import stack_inputs, stack_terms

    if predictions.shape[1] == 0:
        k = len(thetas[0])
        zero = {"grad": np.zeros(k), "hess": np.zeros((k, k)), "n": 0.0}
        return [zero, zero, zero]
    design = stack_inputs(list(predictions), task)
    y = shard.y_valid
    a, b = _fold_masks(len(y))
    return [stack_terms(design[a], y[a], thetas[0], task), stack_terms(design[b], y[b], thetas[1], task),
            stack_terms(design, y, thetas[2], task)]


def _add_terms(*parts):
    return [{k: sum(p[j][k] for p in parts) for k in parts[0][j]} for j in range(len(parts[0]))]


def fit_stacker(runtime: Runtime, data: TrainingData, member_models: list, max_iter: int = 50,
                ridge: float = 1e-4) -> dict:
    """Fit the stacked combiner on the validation split, by Newton's method on reductions.

    Inputs are the per-partition models' predictions (logits for classification).
    Three fits share each pass: on the even and the odd validation rows of every
    partition (cross-fitting: each half is scored by the fit on the other half, so
    the reported quality is out-of-sample), and on all validation rows (the model
    saved for inference).
    """
    client = runtime.client
    started = time.perf_counter()
    token = call_token(data.token)
    models_f = scatter_named(client, f"train-stack-members-{token}", member_models)
    preds = [client.submit(_member_predictions, f, models_f, data.task, key=f"train-stack-predict-{token}-{i}")
             for i, f in enumerate(data.futures)]
    k = len(member_models) + 1
    thetas = [np.zeros(k) for _ in range(3)]
    newton_steps = []
    for step in range(max_iter):
        terms = [client.submit(_stack_terms, p, f, thetas, data.task, key=f"train-stack-terms-{token}-{step}-{i}")
                 for i, (p, f) in enumerate(zip(preds, data.futures))]
        total = tree_reduce_futures(client, terms, _add_terms, f"train-stack-newton-{token}-{step}").result()
        steps = []
        for j in range(3):
            n = max(total[j]["n"], 1.0)
            hess = total[j]["hess"] + ridge * n * np.eye(k)
            grad = total[j]["grad"] + ridge * n * thetas[j]
            delta = np.linalg.solve(hess, grad)
            thetas[j] = thetas[j] - delta
            steps.append(np.abs(delta).max())
        newton_steps.append(float(max(steps)))
        if max(steps) < 1e-10:
            break
    return {"coef_even": thetas[0].tolist(), "coef_odd": thetas[1].tolist(), "coef": thetas[2].tolist(),
            "seconds": time.perf_counter() - started, "newton_steps": newton_steps}
