"""Evaluation metrics as associative per-partition partial sums.

No partition's predictions leave its worker: each partition contributes a fixed-size
summary (sums, and for AUC a histogram of scores per class), summaries are added in a
tree, and the metrics are finished on the client from the total.

AUC comes from ``AUC_BINS`` equal-width score bins with ties inside a bin counted as
half, the trapezoid rule of the ROC curve through the bin edges; it differs from the
exact (sorted) AUC only by pairs whose scores fall within ``1 / AUC_BINS`` of each other.
"""

from __future__ import annotations

import numpy as np

AUC_BINS = 1 << 16
RESIDUAL_BINS = 80
_EPS = 1e-15


def partial_metrics(y: np.ndarray, prediction: np.ndarray, task: str, residual_range: float = 1.0) -> dict:
    """Sufficient statistics of one partition's validation rows for :func:`finish_metrics`
    (the target kind's own, see :mod:`shardflow.tasks.targets`)."""
    from shardflow.tasks.targets import target_kind

    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(prediction, dtype=np.float64)
    out = {"n": float(len(y)), "sum_y": float(y.sum()), "sum_y2": float((y * y).sum())}
    out.update(target_kind(task).partial(y, p, residual_range))
    return out


def binary_partial(y: np.ndarray, p: np.ndarray, residual_range: float) -> dict:
    """Log-loss and accuracy sums, and score histograms per class (for AUC and ROC)."""
    q = np.clip(p, _EPS, 1 - _EPS)
    bins = np.minimum((np.clip(p, 0.0, 1.0) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    return {"logloss_sum": float(-(y * np.log(q) + (1 - y) * np.log(1 - q)).sum()),
            "correct": float(((p >= 0.5) == (y >= 0.5)).sum()),
            "pos_hist": np.bincount(bins[y >= 0.5], minlength=AUC_BINS).astype(np.int64),
            "neg_hist": np.bincount(bins[y < 0.5], minlength=AUC_BINS).astype(np.int64)}


def regression_partial(y: np.ndarray, p: np.ndarray, residual_range: float) -> dict:
    """Squared and absolute error sums; residuals counted in ``RESIDUAL_BINS`` bins over
    ``[-residual_range, residual_range]`` (outside: the end bins), for the report."""
    err = p - y
    scaled = (np.clip(err / residual_range, -1, 1) + 1) / 2 * RESIDUAL_BINS
    return {"sse": float((err * err).sum()), "sae": float(np.abs(err).sum()),
            "residual_hist": np.bincount(np.minimum(scaled.astype(np.int64), RESIDUAL_BINS - 1),
                                         minlength=RESIDUAL_BINS).astype(np.int64)}


def combine_metrics(a: dict, b: dict) -> dict:
    """Sum two partial metric sums (associative: any tree of partitions gives the same total).

    Examples
    --------
    >>> import numpy as np
    >>> y, p = np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.2, 0.9, 0.6, 0.4])
    >>> whole = finish_metrics(partial_metrics(y, p, "classification"), "classification")
    >>> halves = combine_metrics(partial_metrics(y[:2], p[:2], "classification"),
    ...                          partial_metrics(y[2:], p[2:], "classification"))
    >>> split = finish_metrics(halves, "classification")
    >>> whole["auc"], split["auc"], whole["accuracy"] == split["accuracy"] == 1.0
    (1.0, 1.0, True)
    """
    return {k: a[k] + b[k] for k in a}


def finish_metrics(total: dict, task: str) -> dict:
    """Metrics from summed partial statistics."""
    from shardflow.tasks.targets import target_kind

    if total["n"] == 0:
        return {"rows": 0}
    return {"rows": int(total["n"]), **target_kind(task).finish(total)}


def binary_finish(total: dict) -> dict:
    n = total["n"]
    pos, neg = total["pos_hist"], total["neg_hist"]
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos and n_neg:
        # Pairs (positive above negative) + half the pairs sharing a bin.
        neg_below = np.cumsum(neg) - neg
        auc = float((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / float(n_pos * n_neg)
    else:
        auc = float("nan")
    return {"auc": auc, "logloss": total["logloss_sum"] / n, "accuracy": total["correct"] / n,
            "positive_rate": total["sum_y"] / n}


def regression_finish(total: dict) -> dict:
    n = total["n"]
    mean = total["sum_y"] / n
    sst = total["sum_y2"] - n * mean * mean
    return {"rmse": float(np.sqrt(total["sse"] / n)), "mae": total["sae"] / n,
            "r2": float(1.0 - total["sse"] / sst) if sst > 0 else float("nan")}


def curves(total: dict, task: str, points: int = 200, residual_range: float = 1.0) -> dict:
    """Plot data from summed statistics (the target kind's: ROC points or a residual histogram)."""
    from shardflow.tasks.targets import target_kind

    return target_kind(task).curves(total, points, residual_range)


def roc_points(total: dict, points: int, residual_range: float) -> dict:
    pos, neg = total["pos_hist"][::-1], total["neg_hist"][::-1]  # high scores first
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), 1)])
    keep = np.unique(np.linspace(0, len(tpr) - 1, points).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def residual_histogram(total: dict, points: int, residual_range: float) -> dict:
    edges = np.linspace(-residual_range, residual_range, RESIDUAL_BINS + 1)
    return {"residual_edges": edges.tolist(), "residual_counts": total["residual_hist"].tolist()}


def metric_direction(name: str) -> str:
    return "max" if name in ("auc", "accuracy", "r2") else "min"


def primary_metric(task: str) -> str:
    """The metric that ranks models for ``task`` (its kind's first column)."""
    from shardflow.tasks.targets import target_kind

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
    return max(metrics, key=lambda name: sign * metrics[name].get(key, float("-inf") * sign))
