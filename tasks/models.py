"""Per-partition model training and prediction: pure functions of one partition's arrays.

Models cross process boundaries as bytes in XGBoost's own UBJSON format (never as
pickled boosters), and neural models as arrays of weights.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from shardflow.core.threads import openmp_threads, worker_threads
from shardflow.tasks.metrics import own_metrics
from shardflow.tasks.targets import target_kind

#: Training rows a boosted model's training curve is measured on (per rank of the global
#: model, per per-partition model): every k-th row, so the curve costs one small incremental
#: prediction per round however many rows there are.
TRAINING_CURVE_ROWS = 10_000


def training_curve_rows(x, y, w):
    """Every k-th row of ``x``, ``y`` and ``w`` (None stays None), at most
    :data:`TRAINING_CURVE_ROWS`: evenly spread, so a table sorted by its target is sampled
    across its whole range. Slicing works alike on NumPy, CuPy and data frames.

    Examples
    --------
    >>> x, y, w = training_curve_rows(np.zeros((25_000, 2)), np.arange(25_000), None)
    >>> x.shape, y[:3].tolist(), w
    ((8334, 2), [0, 3, 6], None)
    """
    step = max(1, -(-len(y) // TRAINING_CURVE_ROWS))
    return x[::step], y[::step], None if w is None else w[::step]


def train_xgboost_rank(
    collective_args: dict | None,
    rank: int,
    *shards,
    params: dict,
    rounds: int,
    model: bytes | None,
    feature_names,
    feature_types,
    categorical: bool,
    callbacks=(),
    nthread: int | None = None,
) -> dict:
    """One rank of the global XGBoost model: join the collective, train on this worker's rows.

    Runs as a task pinned to its worker, with that worker's partitions as arguments
    (they never leave it). The quantile sketch and every histogram are allreduced
    across the ranks, so all of them build the same trees as one process would on all
    the rows.

    Parameters
    ----------
    collective_args : dict or None
        From the tracker (``dmlc_tracker_uri``, ``dmlc_tracker_port``, ``dmlc_timeout``);
        None: the only rank, no collective (every partition is among ``shards``).
    rank : int
        This task's rank; the tracker orders ranks by it.
    *shards : Shard
        This worker's partitions.
    model : bytes, optional
        A checkpointed model (UBJSON) to continue from.
    nthread : int, optional
        Threads (default: the worker's).

    Returns
    -------
    dict
        ``rank``, ``rows`` (training rows of this rank) and ``rounds`` (boosted rounds
        of the final model).
    """
    import xgboost as xgb

    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    own = worker_threads()
    # More threads than the worker's (the single-worker path, which trains alone): the
    # process's OpenMP cap is raised while this task runs.
    pool = openmp_threads(nthread) if nthread and nthread != own else contextlib.nullcontext()
    nthread = nthread or own
    params = {**params, **({"nthread": nthread} if nthread else {})}
    types = dict(feature_names=list(feature_names), feature_types=list(feature_types), enable_categorical=categorical)
    communicator = (
        contextlib.nullcontext()
        if collective_args is None
        else xgb.collective.CommunicatorContext(**collective_args, dmlc_task_id=f"rank-{rank:06d}")
    )
    with pool, communicator:
        dtrain = xgb.QuantileDMatrix(s.x_train, s.y_train, weight=s.w_train, nthread=nthread, **types)
        dvalid = xgb.QuantileDMatrix(s.x_valid, s.y_valid, weight=s.w_valid, ref=dtrain, nthread=nthread, **types)
        x_curve, y_curve, w_curve = training_curve_rows(s.x_train, s.y_train, s.w_train)
        dcurve = xgb.QuantileDMatrix(x_curve, y_curve, weight=w_curve, ref=dtrain, nthread=nthread, **types)
        booster = load_booster(model, nthread) if model is not None else None
        booster = xgb.train(
            params,
            dtrain,
            num_boost_round=rounds,
            # Validation last: the split early stopping watches; the training curve beside it.
            evals=[(dcurve, "train"), (dvalid, "validation")],
            xgb_model=booster,
            callbacks=list(callbacks),
            verbose_eval=False,
        )
    return {"rank": rank, "rows": int(len(s.y_train)), "rounds": booster.num_boosted_rounds()}


def load_booster(model: bytes | bytearray, nthread: int | None = None):
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    if nthread:
        booster.set_param({"nthread": nthread})
    return booster


def xgboost_predict(model: bytes | bytearray, x: np.ndarray, nthread: int | None = None) -> np.ndarray:
    """Probabilities (binary:logistic; ``multi:softprob``: one column per class) or values
    (regression) for rows ``x``."""
    booster = load_booster(model, nthread)
    if len(x) == 0:
        classes = _num_class(booster)
        return np.zeros((0, classes) if classes > 1 else 0, np.float64)
    return booster.inplace_predict(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)


def _num_class(booster) -> int:
    import json

    config = json.loads(booster.save_config())
    return int(config["learner"]["learner_model_param"].get("num_class", "0") or 0)


def train_xgboost_local(
    x_train,
    y_train,
    x_valid,
    y_valid,
    *,
    params: dict,
    rounds: int,
    feature_names,
    feature_types,
    scoring,
    nthread: int | None = None,
    w_train=None,
    w_valid=None,
    early_stopping_rounds: int | None = None,
) -> dict:
    """Train one XGBoost model on one partition's rows, with no communication.

    With ``early_stopping_rounds`` (and validation rows), training stops when the last
    ``eval_metric`` on the partition's own validation rows has not improved for that many
    rounds, and the model is cut at its best round.

    Returns the model as UBJSON bytes, its training rows, weight and time, and its
    metrics on the partition's own validation rows (so skew between partitions shows).
    """
    import xgboost as xgb

    started = time.perf_counter()
    params = dict(params)
    if nthread:
        params["nthread"] = nthread
    types = dict(feature_names=list(feature_names), feature_types=list(feature_types), enable_categorical=True)
    dtrain = xgb.QuantileDMatrix(x_train, y_train, weight=w_train, **types)
    evals, history = [], {}
    if len(y_valid):
        # Validation last: the split early stopping watches; the training curve beside it.
        x_curve, y_curve, w_curve = training_curve_rows(x_train, y_train, w_train)
        evals = [
            (xgb.QuantileDMatrix(x_curve, y_curve, weight=w_curve, ref=dtrain, **types), "train"),
            (xgb.DMatrix(x_valid, y_valid, weight=w_valid, **types), "validation"),
        ]
    stopping = early_stopping_rounds if evals else None
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=rounds,
        evals=evals,
        evals_result=history,
        early_stopping_rounds=stopping,
        verbose_eval=False,
    )
    if stopping is not None:
        booster = booster[: booster.best_iteration + 1]
    model = bytes(booster.save_raw("ubj"))
    seconds = time.perf_counter() - started
    own = own_metrics(y_valid, w_valid, lambda: xgboost_predict(model, x_valid, nthread), scoring)
    weight = float(np.sum(w_train, dtype=np.float64)) if w_train is not None else float(len(y_train))
    return {
        "model": model,
        "rows": int(len(y_train)),
        "weight": weight,
        "seconds": seconds,
        "validation": own,
        "history": history,
    }


def weighted_average(predictions: list, weights) -> np.ndarray:
    """Weighted average of several models' predictions, ``Σ w_k p_k / Σ w_k`` (values,
    probabilities, or rows of class probabilities).

    Examples
    --------
    >>> weighted_average([[0.2, 0.4], [0.6, 0.8]], weights=[300, 100]).round(3).tolist()
    [0.3, 0.5]
    >>> weighted_average([[[0.5, 0.5]], [[1.0, 0.0]]], weights=[1, 1]).tolist()
    [[0.75, 0.25]]
    """
    weights = np.asarray(weights, dtype=np.float64)
    stacked = np.stack([np.asarray(p, dtype=np.float64) for p in predictions])
    return np.tensordot(weights, stacked, axes=1) / weights.sum()


def stack_inputs(predictions: list, task: str) -> np.ndarray:
    """The stacked combiner's design for the members' ``predictions`` (see :mod:`shardflow.tasks.combiners`).

    Examples
    --------
    >>> stack_inputs([[0.5, 0.9]], "classification").round(3).tolist()
    [[1.0, 0.0], [1.0, 2.197]]
    """
    return target_kind(task).combiner.inputs(predictions)


def stack_predict(weights, design: np.ndarray, task: str) -> np.ndarray:
    return target_kind(task).combiner.predict(weights, design)


def predict_booster(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """One XGBoost model's predictions (probabilities or values); ``payload["model"]`` is UBJSON."""
    return xgboost_predict(payload["model"], x, nthread)


def _member_predictions(payload: dict, x: np.ndarray, nthread, cache) -> list:
    """Each member model's predictions, computed once per ``cache`` (shared by the families
    built on the same members)."""
    key = ("members", payload["members"])
    if cache is not None and key in cache:
        return cache[key]
    members = [xgboost_predict(m, x, nthread) for m in payload["models"]]
    if cache is not None:
        cache[key] = members
    return members


def predict_booster_ensemble(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """The row-weighted average of per-partition XGBoost models (``models``, ``weights``)."""
    return weighted_average(_member_predictions(payload, x, nthread, cache), payload["weights"])


def predict_stacked(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """The stacked combiner (``coef``) over the member models' predictions."""
    members = _member_predictions(payload, x, nthread, cache)
    if not len(x):
        return members[0]
    return stack_predict(payload["coef"], stack_inputs(members, payload["task"]), payload["task"])


def predict_stacked_out_of_fold(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """Evaluation of the stacked combiner on the rows it was fit on, out of fold: even rows
    scored by the fit on the odd rows (``coef_odd``) and vice versa."""
    n = len(x)
    members = _member_predictions(payload, x, nthread, cache)
    p = np.zeros_like(members[0])
    if n:
        design = stack_inputs(members, payload["task"])
        even = np.arange(n) % 2 == 0
        p[even] = stack_predict(payload["coef_odd"], design[even], payload["task"])
        p[~even] = stack_predict(payload["coef_even"], design[~even], payload["task"])
    return p


def _spec(payload: dict):
    from shardflow.tasks.neural import MLPSpec

    spec = payload["spec"]
    return spec if isinstance(spec, MLPSpec) else MLPSpec.from_dict(spec)


def predict_mlp(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """The MLP's predictions (``params``, ``spec``)."""
    from shardflow.tasks.neural import predict

    return predict(payload["params"], _spec(payload), x)


def predict_mlp_ensemble(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """The row-weighted average of per-partition MLPs (``params`` a list, ``weights``)."""
    from shardflow.tasks.neural import predict

    spec = _spec(payload)
    return weighted_average([predict(p, spec, x) for p in payload["params"]], payload["weights"])


def group_validation(*shards, predict, payload, scoring) -> dict:
    """A model's metrics on a group of partitions' own validation rows (``predict(payload, x)``)."""
    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    return own_metrics(s.y_valid, s.w_valid, lambda: predict(payload, s.x_valid), scoring)


def train_group_xgboost(*shards, params, rounds, feature_names, feature_types, scoring, early_stopping_rounds=None):
    """One per-partition XGBoost model on a group of partitions (see :func:`train_xgboost_local`)."""
    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    return train_xgboost_local(
        s.x_train,
        s.y_train,
        s.x_valid,
        s.y_valid,
        params=params,
        rounds=rounds,
        feature_names=feature_names,
        feature_types=feature_types,
        scoring=scoring,
        nthread=worker_threads(),
        w_train=s.w_train,
        w_valid=s.w_valid,
        early_stopping_rounds=early_stopping_rounds,
    )


def member_predictions(shard, models) -> list:
    """Each per-partition model's predictions on this partition's validation rows."""
    threads = worker_threads()
    return [xgboost_predict(m, shard.x_valid, threads) for m in models]


def stack_design(predictions, task):
    """The combiner's design of one partition's member predictions, built once per fit."""
    return target_kind(task).combiner.inputs(predictions) if len(predictions[0]) else None


def stack_labels(shard) -> tuple:
    """A partition's validation labels and weights: all the stacked fit needs of it besides its design."""
    return shard.y_valid, shard.weights_valid.astype(np.float64)


def stack_partition_terms(design, shard, thetas, task):
    """Newton terms (loss, gradient, Hessian) of the three stacked fits (even rows, odd
    rows, all rows) on one partition, each at its own coefficients."""
    from shardflow.tasks.combiners import fold_terms

    if design is None:
        k = len(thetas[0])
        zero = {"loss": 0.0, "grad": np.zeros(k), "hess": np.zeros((k, k)), "n": 0.0}
        return [zero, zero, zero]
    return fold_terms(target_kind(task).combiner, design, *stack_labels(shard), thetas)


def stack_partition_losses(design, shard, candidates, task) -> np.ndarray:
    """Weighted loss sums and weight sums of ``candidates`` (``(fold, coef)`` pairs, fold
    ``even``/``odd``/``all``) on one partition: an array of shape (len(candidates), 2)."""
    from shardflow.tasks.combiners import fold_losses

    if design is None:
        return np.zeros((len(candidates), 2))
    return fold_losses(target_kind(task).combiner, design, *stack_labels(shard), candidates)


def fit_stack_in_one_task(
    designs: list, labels: list, task: str, *, members: int, classes: int, ridge: float, max_iter: int
) -> dict:
    """The whole stacked fit (:func:`~shardflow.tasks.combiners.fit_combiner`) in this task, on
    every partition's design and labels (:func:`stack_labels`): for small validation splits."""
    from shardflow.tasks.combiners import fit_combiner, fold_losses, fold_terms

    combiner = target_kind(task).combiner
    parts = [(design, y, w) for design, (y, w) in zip(designs, labels) if design is not None]
    return fit_combiner(
        lambda thetas: add_stack_terms(*[fold_terms(combiner, *part, thetas) for part in parts]),
        lambda candidates: sum(fold_losses(combiner, *part, candidates) for part in parts),
        combiner,
        members=members,
        classes=classes,
        ridge=ridge,
        max_iter=max_iter,
    )


def add_stack_terms(*parts):
    """Sum of several partitions' :func:`stack_partition_terms` (associative); arrays of
    :func:`stack_partition_losses` add as they are."""
    if isinstance(parts[0], np.ndarray):
        return sum(parts)
    return [{k: sum(p[j][k] for p in parts) for k in parts[0][j]} for j in range(len(parts[0]))]
