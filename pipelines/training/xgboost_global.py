"""The global XGBoost model: one exact model over all partitions, trained with allreduce.

See :mod:`shardflow.pipelines.training.collective` for how the ranks are dispatched.
"""

from __future__ import annotations

import copy
import logging
import time

from dask.base import tokenize
from dask.utils import format_bytes

from shardflow.cluster.factory import Runtime
from shardflow.core.errors import ShardflowError
from shardflow.pipelines.interface import progress
from shardflow.pipelines.records.rundir import RunDir
from shardflow.pipelines.setup.train_config import XGBoostConfig, trains_on_one_worker
from shardflow.pipelines.training.data import TrainingData, call_token, recover, stop_if_scheduler_lost
from shardflow.tasks.metric_sums import metric_direction
from shardflow.tasks.targets import target_kind

logger = logging.getLogger("shardflow.train")


#: The metric early stopping watches when ``train.xgboost.params`` sets a regression
#: objective of its own but no ``eval_metric``: the objective's own loss.
OBJECTIVE_METRICS = {
    "reg:absoluteerror": "mae",
    "reg:quantileerror": "quantile",
    "reg:pseudohubererror": "mphe",
    "reg:squaredlogerror": "rmsle",
    "reg:gamma": "gamma-nloglik",
    "count:poisson": "poisson-nloglik",
}


def xgboost_params(task: str, cfg: XGBoostConfig, backend: str, seed: int, classes: int = 2) -> dict:
    """shardflow's XGBoost defaults for ``task``, overridden by ``train.xgboost.params``.

    A multi-class target adds ``num_class``. An objective set in ``params`` is passed through
    (``reg:absoluteerror``, ``reg:quantileerror`` with ``quantile_alpha``, ...); without an
    ``eval_metric`` of the user's, early stopping then watches that objective's own loss.

    Examples
    --------
    >>> from shardflow.pipelines.setup.train_config import XGBoostConfig
    >>> p = xgboost_params("regression", XGBoostConfig(params={"objective": "reg:absoluteerror"}), "pandas", 0)
    >>> p["objective"], p["eval_metric"]
    ('reg:absoluteerror', ['mae'])
    >>> xgboost_params("multiclass", XGBoostConfig(), "pandas", 0, classes=4)["num_class"]
    4
    """
    params = {
        "tree_method": "hist",
        "max_depth": 8,
        "eta": 0.1,
        "max_bin": 256,
        "seed": seed,
        "device": "cuda" if backend == "cudf" else "cpu",
    }
    kind = target_kind(task)
    params.update(copy.deepcopy(kind.xgboost))
    if kind.multi_output:
        params["num_class"] = int(classes)
    params.update(cfg.params)
    objective = cfg.params.get("objective")
    if objective in OBJECTIVE_METRICS and "eval_metric" not in cfg.params:
        params["eval_metric"] = [OBJECTIVE_METRICS[objective]]
    return params


def _xgboost_rounds(
    client,
    data,
    *,
    params,
    cfg,
    collective_timeout,
    booster,
    state,
    remaining,
    checkpoint_dir,
    token,
    metric,
    callbacks,
    label,
    single,
    checkpoint_seconds,
):
    """Train ``remaining`` rounds with one pinned task per worker, joined by a tracker on
    the scheduler (see :mod:`shardflow.pipelines.training.collective`); ``single``: one
    task on one worker, no tracker."""
    from shardflow.pipelines.training.collective import gather_watching, start_xgboost_tracker
    from shardflow.pipelines.training.xgboost_checkpoint import ResumableState
    from shardflow.tasks.models import train_xgboost_rank

    # A partition with no rows at all has nothing to contribute.
    useful = [
        (f, w)
        for f, w, n_train, n_valid in zip(data.futures, data.workers, data.train_rows, data.valid_rows)
        if n_train or n_valid
    ]
    held = {}
    for f, w in useful:
        held.setdefault(w, []).append(f)
    nthread = None
    if single:
        # One rank: the worker holding the most partitions, with every thread of its host's
        # workers (they idle while it trains); the other partitions come to it, and the rows
        # keep the table's order.
        worker = max(held, key=lambda w: (len(held[w]), w))
        nthread = host_threads(client, worker)
        held = {worker: [f for f, _ in useful]}
    workers = sorted(held)
    tracker = ResumableState(
        checkpoint_dir,
        seconds=checkpoint_seconds,
        token=token,
        metric=metric,
        maximize=metric_direction(metric) == "max",
        patience=cfg.early_stopping_rounds,
        state=state,
        progress_topic=f"shardflow-progress-{token}",
    )
    coll = None
    if not single:
        # A collective that loses a member must fail, not wait forever for it.
        coll = start_xgboost_tracker(client, len(workers), collective_timeout)
        if collective_timeout:
            coll["dmlc_timeout"] = int(collective_timeout)
    model = bytes(booster.save_raw("ubj")) if booster is not None else None
    name = call_token(f"train-xgboost-global-{token}")
    done = state["rounds"] if state else 0
    with progress.Rounds(client, tracker.progress_topic, label, total=done + remaining, done=done):
        futures = [
            client.submit(
                train_xgboost_rank,
                coll,
                rank,
                *held[w],
                params=params,
                rounds=remaining,
                model=model,
                feature_names=data.feature_names,
                feature_types=data.feature_types(cfg.categorical),
                categorical=cfg.categorical,
                callbacks=[tracker, *callbacks],
                nthread=nthread,
                key=f"{name}-rank{rank}",
                workers=[w],
                allow_other_workers=False,
                pure=False,
            )
            for rank, w in enumerate(workers)
        ]
        gather_watching(client, futures, workers, "global XGBoost training")


def host_threads(client, worker: str) -> int:
    """Threads of every worker on ``worker``'s host."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    host = info[worker]["host"]
    return sum(w["nthreads"] for w in info.values() if w["host"] == host)


def _stopping_metric(params: dict) -> str:
    metrics = params["eval_metric"]
    return metrics[-1] if isinstance(metrics, (list, tuple)) else metrics


def train_global_xgboost(
    runtime: Runtime,
    data: TrainingData,
    cfg: XGBoostConfig,
    *,
    checkpoint_dir,
    seed: int = 0,
    callbacks=(),
    label: str = "global XGBoost",
    max_attempts: int = 3,
    collective_timeout: int | None = 600,
    checkpoint_seconds: float | None = 60.0,
) -> dict:
    """One exact XGBoost model over all partitions, trained with allreduce.

    Early stopping watches the validation split; after the first round that ends
    ``checkpoint_seconds`` or more after the last checkpoint (0: every round; None: none
    but the final state), and when training ends, the model and its state are
    checkpointed in ``checkpoint_dir`` (see ``train.checkpoint_seconds``), and a call that
    finds a checkpoint of the same job continues from it. A failed collective (a lost
    worker) continues from the last checkpoint on the workers present, up to
    ``max_attempts`` times in all.

    Returns
    -------
    dict
        ``model`` (UBJSON bytes, truncated to the best iteration), ``history``
        (per-round validation metrics), ``best_iteration``, ``rounds``,
        ``round_seconds``, ``seconds``, ``resumed_from``.
    """
    from shardflow.pipelines.training.xgboost_checkpoint import read_checkpoint

    started = time.perf_counter()
    client = runtime.client
    params = xgboost_params(data.task, cfg, runtime.backend, seed, classes=data.classes)
    metric = _stopping_metric(params)
    token = tokenize(data.token, params, cfg.num_boost_round, cfg.early_stopping_rounds, cfg.categorical)[:16]
    _, first_state = read_checkpoint(checkpoint_dir, token)
    resumed_from = first_state["rounds"] if first_state else 0
    workers_info = client.scheduler_info(n_workers=-1)["workers"]
    n_workers = len(workers_info)
    array_bytes = (sum(data.train_rows) + sum(data.valid_rows)) * (data.n_features + 3) * 4
    single = trains_on_one_worker(
        cfg.single_worker, array_bytes, [w.get("memory_limit") or 0 for w in workers_info.values()]
    )
    if single and n_workers > 1:
        logger.info(
            "xgboost: %s of training arrays: one worker with its host's threads, no allreduce "
            "(train.xgboost.single_worker: %s)",
            format_bytes(int(array_bytes)),
            cfg.single_worker,
        )
    restarts = []
    for attempt in range(1, max_attempts + 1):
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
            _xgboost_rounds(
                client,
                data,
                params=params,
                cfg=cfg,
                collective_timeout=collective_timeout,
                booster=booster,
                state=state,
                remaining=remaining,
                checkpoint_dir=checkpoint_dir,
                token=token,
                metric=metric,
                callbacks=callbacks,
                label=label,
                single=single,
                checkpoint_seconds=checkpoint_seconds,
            )
            break
        except Exception as err:
            if attempt == max_attempts or isinstance(err, ShardflowError):
                raise
            stop_if_scheduler_lost(runtime, data)
            logger.warning(
                "xgboost: training failed (%s: %s); attempt %d/%d resumes from the last checkpoint",
                type(err).__name__,
                str(err).splitlines()[0][:200],
                attempt + 1,
                max_attempts,
            )
            data = recover(runtime, data, n_workers)
            placed = {w: data.workers.count(w) for w in sorted(set(data.workers))}
            logger.info(
                "xgboost: attempt %d places the partitions on %d workers (%s)",
                attempt + 1,
                len(placed),
                ", ".join(f"{w}: {n}" for w, n in placed.items()),
            )
    booster, state = read_checkpoint(checkpoint_dir, token)
    best = int(state["best_iteration"])
    final = booster[: best + 1] if cfg.early_stopping_rounds is not None else booster
    seconds = time.perf_counter() - started
    logger.info(
        "xgboost: %d rounds, best %d (%s %.5f), %.1fs", state["rounds"], best, metric, state["best_score"], seconds
    )
    return {
        "model": bytes(final.save_raw("ubj")),
        "history": state["history"],
        "best_iteration": best,
        "rounds": state["rounds"],
        "round_seconds": state["round_seconds"],
        "seconds": seconds,
        "resumed_from": resumed_from,
        "restarts": restarts,
        "params": params,
    }


# ----------------------------------------------------------------------------- as a model family

_META = ("history", "best_iteration", "rounds", "round_seconds", "seconds", "resumed_from", "restarts", "params")


def train_family(context, family) -> dict:
    tc = context.config
    return train_global_xgboost(
        context.runtime,
        context.data,
        tc.xgboost,
        checkpoint_dir=RunDir(context.run_dir).checkpoints(family.name),
        seed=tc.seed,
        callbacks=context.xgboost_callbacks,
        label=family.name,
        max_attempts=tc.max_attempts,
        collective_timeout=tc.collective_timeout,
        checkpoint_seconds=tc.checkpoint_seconds,
    )


def save_family(stage_dir, family, result: dict) -> None:
    from shardflow.pipelines.records.artifacts import write_json

    (RunDir.train_file(stage_dir, family.file("ubj"))).write_bytes(result["model"])
    write_json(RunDir.train_file(stage_dir, family.file("json")), {k: result[k] for k in _META})


def load_family(files, family) -> dict:
    return {"model": files.read_bytes(files.run.trained(family.file("ubj")))}
