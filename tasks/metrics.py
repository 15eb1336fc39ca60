"""Evaluation metrics of a run's predictions, whatever the target kind.

The sums (:mod:`shardflow.tasks.metric_sums`) are the target kind's own
(:mod:`shardflow.tasks.targets`): these functions dispatch to them, and rank models by
the kind's first metric.
"""

from __future__ import annotations

import numpy as np

from shardflow.tasks.metric_sums import as_scoring, metric_direction
from shardflow.tasks.targets import target_kind, target_transform


def partial_metrics(y: np.ndarray, prediction: np.ndarray, scoring, weight=None) -> dict:
    """Sufficient statistics of one partition's validation rows for :func:`finish_metrics`
    (the target kind's own, see :mod:`shardflow.tasks.targets`).

    ``weight`` (sample weights, default 1) weighs every sum; ``n`` stays the row count.
    """
    scoring = as_scoring(scoring)
    inverse = target_transform(scoring.transform).inverse
    y = inverse(np.asarray(y, dtype=np.float64))
    p = np.asarray(prediction, dtype=np.float64)
    if p.ndim == 1:
        p = inverse(p)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    out = {"n": float(len(y)), "w": float(w.sum()), "sum_y": float((w * y).sum()), "sum_y2": float((w * y * y).sum())}
    out.update(target_kind(scoring.task).partial(y, p, w, scoring))
    return out


def finish_metrics(total: dict, scoring) -> dict:
    """Metrics from summed partial statistics."""
    if total["n"] == 0 or not total.get("w", total["n"]) > 0:
        return {"rows": int(total["n"])}  # no rows, or rows that all weigh 0: nothing to score
    scoring = as_scoring(scoring)
    return {"rows": int(total["n"]), **target_kind(scoring.task).finish(total, scoring)}


def curves(total: dict, scoring, points: int = 200) -> dict:
    """Plot data from summed statistics (the target kind's: ROC points, residual histograms)."""
    scoring = as_scoring(scoring)
    return target_kind(scoring.task).curves(total, points, scoring)


def primary_metric(task: str) -> str:
    """The metric that ranks models for ``task`` (its kind's first column)."""
    return target_kind(task).columns[0]


def best_model(metrics: dict, task: str) -> str:
    """The model with the best primary validation metric (AUC or RMSE).

    Examples
    --------
    >>> best_model({"a": {"auc": 0.81}, "b": {"auc": 0.84}}, "classification")
    'b'
    >>> best_model({"a": {"rmse": 2.0}, "b": {"rmse": 3.0}}, "regression")
    'a'
    """
    key = primary_metric(task)
    sign = 1 if metric_direction(key) == "max" else -1

    def score(name):
        value = metrics[name].get(key, float("nan"))
        return sign * value if value == value else float("-inf")

    return max(metrics, key=score)


def own_metrics(y_valid, w_valid, predict, scoring) -> dict:
    """A model's metrics on its own validation rows (a partition's, a group's): ``predict()``
    gives its predictions of them, and is not called when there are none (``{"rows": 0}``).

    Examples
    --------
    >>> own_metrics(np.zeros(0), None, lambda: 1 / 0, "regression")
    {'rows': 0}
    >>> own_metrics(np.array([1.0, 3.0]), None, lambda: np.array([1.0, 1.0]), "regression")["rmse"]
    1.4142135623730951
    """
    if not len(y_valid):
        return {"rows": 0}
    return finish_metrics(partial_metrics(y_valid, predict(), scoring, w_valid), scoring)
