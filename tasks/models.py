"""Per-partition model training and prediction: pure functions of one partition's arrays.

Models cross process boundaries as bytes in XGBoost's own UBJSON format (never as
pickled boosters), and neural models as arrays of weights.
"""

from __future__ import annotations

import time

import numpy as np

from shardflow.tasks.metrics import finish_metrics, partial_metrics
from shardflow.tasks.targets import target_kind


def worker_threads() -> int | None:
    """Threads of the Dask worker running the calling task (None outside a worker)."""
    try:
        from distributed import get_worker

        return get_worker().state.nthreads
    except ValueError:
        return None


def train_xgboost_rank(collective_args: dict, rank: int, *shards, params: dict, rounds: int, model: bytes | None,
                       feature_names, feature_types, categorical: bool, callbacks=()) -> dict:
    """One rank of the global XGBoost model: join the collective, train on this worker's rows.

    Runs as a task pinned to its worker, with that worker's partitions as arguments
    (they never leave it). The quantile sketch and every histogram are allreduced
    across the ranks, so all of them build the same trees as one process would on all
    the rows.

    Parameters
    ----------
    collective_args : dict
        From the tracker (``dmlc_tracker_uri``, ``dmlc_tracker_port``, ``dmlc_timeout``).
    rank : int
        This task's rank; the tracker orders ranks by it.
    *shards : Shard
        This worker's partitions.
    model : bytes, optional
        A checkpointed model (UBJSON) to continue from.

    Returns
    -------
    dict
        ``rank``, ``rows`` (training rows of this rank) and ``rounds`` (boosted rounds
        of the final model).
    """
    import xgboost as xgb

    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    nthread = worker_threads()
    params = {**params, **({"nthread": nthread} if nthread else {})}
    types = dict(feature_names=list(feature_names), feature_types=list(feature_types),
                 enable_categorical=categorical)
    with xgb.collective.CommunicatorContext(**collective_args, dmlc_task_id=f"rank-{rank:06d}"):
        dtrain = xgb.QuantileDMatrix(s.x_train, s.y_train, nthread=nthread, **types)
        dvalid = xgb.QuantileDMatrix(s.x_valid, s.y_valid, ref=dtrain, nthread=nthread, **types)
        booster = load_booster(model, nthread) if model is not None else None
        booster = xgb.train(params, dtrain, num_boost_round=rounds, evals=[(dvalid, "validation")],
                            xgb_model=booster, callbacks=list(callbacks), verbose_eval=False)
    return {"rank": rank, "rows": int(len(s.y_train)), "rounds": booster.num_boosted_rounds()}


def load_booster(model: bytes | bytearray, nthread: int | None = None):
    import xgboost as xgb

    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    if nthread:
        booster.set_param({"nthread": nthread})
    return booster


def xgboost_predict(model: bytes | bytearray, x: np.ndarray, nthread: int | None = None) -> np.ndarray:
    """Probabilities (binary:logistic) or values (regression) for rows ``x``."""
    if len(x) == 0:
        return np.zeros(0, np.float64)
    booster = load_booster(model, nthread)
    return booster.inplace_predict(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)


def train_xgboost_local(x_train, y_train, x_valid, y_valid, *, params: dict, rounds: int, feature_names,
                        feature_types, task: str, nthread: int | None = None) -> dict:
    """Train one XGBoost model on one partition's rows, with no communication.

    Returns the model as UBJSON bytes, its training rows and time, and its metrics on
    the partition's own validation rows (so skew between partitions shows).
    """
    import xgboost as xgb

    started = time.perf_counter()
    params = dict(params)
    if nthread:
        params["nthread"] = nthread
    dtrain = xgb.QuantileDMatrix(x_train, y_train, feature_names=list(feature_names),
                                 feature_types=list(feature_types), enable_categorical=True)
    evals, history = [], {}
    if len(y_valid):
        evals = [(xgb.DMatrix(x_valid, y_valid, feature_names=list(feature_names), feature_types=list(feature_types),
                              enable_categorical=True), "validation")]
    booster = xgb.train(params, dtrain, num_boost_round=rounds, evals=evals, evals_result=history,
                        verbose_eval=False)
    model = bytes(booster.save_raw("ubj"))
    seconds = time.perf_counter() - started
    own = finish_metrics(partial_metrics(y_valid, xgboost_predict(model, x_valid, nthread), task), task) \
        if len(y_valid) else {"rows": 0}
    return {"model": model, "rows": int(len(y_train)), "seconds": seconds, "validation": own, "history": history,
            "target_mean": float(np.mean(y_train)) if len(y_train) else float("nan")}


def weighted_average(predictions: list, weights) -> np.ndarray:
    """Row-weighted average of several models' predictions: ``Σ w_k p_k / Σ w_k``.

    Examples
    --------
    >>> weighted_average([[0.2, 0.4], [0.6, 0.8]], weights=[300, 100]).round(3).tolist()
    [0.3, 0.5]
    """
    weights = np.asarray(weights, dtype=np.float64)
    stacked = np.vstack([np.asarray(p, dtype=np.float64) for p in predictions])
    return weights @ stacked / weights.sum()


def stack_inputs(predictions: list, task: str) -> np.ndarray:
    """The stacked combiner's design matrix: an intercept and each model's logit (or value).

    Examples
    --------
    >>> stack_inputs([[0.5, 0.9]], "classification").round(3).tolist()
    [[1.0, 0.0], [1.0, 2.197]]
    """
    link = target_kind(task).link
    return np.column_stack([np.ones(len(predictions[0]))] + [link(np.asarray(p, dtype=np.float64))
                                                              for p in predictions])


def stack_predict(weights, design: np.ndarray, task: str) -> np.ndarray:
    return target_kind(task).inverse_link(design @ np.asarray(weights, dtype=np.float64))


def stack_terms(design: np.ndarray, y: np.ndarray, weights, task: str) -> dict:
    """Gradient and Hessian of the (ridge-free) loss at ``weights``: one Newton step's sums.

    The target kind's generalised linear model (logistic regression for a binary
    target, least squares for regression); both are sums over rows, so partitions
    contribute independently.
    """
    y = np.asarray(y, dtype=np.float64)
    p = stack_predict(weights, design, task)
    r = p - y
    s = target_kind(task).newton_weights(p)
    return {"grad": design.T @ r, "hess": (design * s[:, None]).T @ design, "n": float(len(y))}


def predict_booster(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """One XGBoost model's predictions (probabilities or values); ``payload["model"]`` is UBJSON."""
    return xgboost_predict(payload["model"], x, nthread)


def _member_predictions(payload: dict, x: np.ndarray, nthread, cache):
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
    if not len(x):
        return np.zeros(0)
    return weighted_average(_member_predictions(payload, x, nthread, cache), payload["weights"])


def predict_stacked(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """The stacked combiner (``coef``) over the member models' predictions."""
    if not len(x):
        return np.zeros(0)
    design = stack_inputs(_member_predictions(payload, x, nthread, cache), payload["task"])
    return stack_predict(payload["coef"], design, payload["task"])


def predict_stacked_out_of_fold(payload: dict, x: np.ndarray, nthread: int | None = None,
                                cache: dict | None = None):
    """Evaluation of the stacked combiner on the rows it was fit on, out of fold: even rows
    scored by the fit on the odd rows (``coef_odd``) and vice versa."""
    n = len(x)
    p = np.zeros(n)
    if n:
        design = stack_inputs(_member_predictions(payload, x, nthread, cache), payload["task"])
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

    if not len(x):
        return np.zeros(0)
    spec = _spec(payload)
    return weighted_average([predict(p, spec, x) for p in payload["params"]], payload["weights"])

def train_group_xgboost(*shards, params, rounds, feature_names, feature_types, task):
    """One per-partition XGBoost model on a group of partitions (see :func:`train_xgboost_local`)."""
    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    return train_xgboost_local(s.x_train, s.y_train, s.x_valid, s.y_valid, params=params, rounds=rounds,
                               feature_names=feature_names, feature_types=feature_types, task=task,
                               nthread=worker_threads())


def member_predictions(shard, models, task):
    """Each per-partition model's predictions on this partition's validation rows (K × n)."""
    threads = worker_threads()
    return np.vstack([xgboost_predict(m, shard.x_valid, threads) for m in models]) if len(shard.y_valid) \
        else np.zeros((len(models), 0))


def stack_partition_terms(predictions, shard, thetas, task):
    """Newton terms of the three stacked fits (even rows, odd rows, all rows) on one partition."""
    if predictions.shape[1] == 0:
        k = len(thetas[0])
        zero = {"grad": np.zeros(k), "hess": np.zeros((k, k)), "n": 0.0}
        return [zero, zero, zero]
    design = stack_inputs(list(predictions), task)
    y = shard.y_valid
    even = np.arange(len(y)) % 2 == 0
    return [stack_terms(design[even], y[even], thetas[0], task), stack_terms(design[~even], y[~even], thetas[1], task),
            stack_terms(design, y, thetas[2], task)]


def add_stack_terms(*parts):
    """Sum of several partitions' :func:`stack_partition_terms` (associative)."""
    return [{k: sum(p[j][k] for p in parts) for k in parts[0][j]} for j in range(len(parts[0]))]
