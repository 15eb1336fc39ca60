"""Evaluation metrics as associative per-partition partial sums: each target kind's kernels.

No partition's predictions leave its worker: each partition contributes a fixed-size
summary (sums, and for AUC a histogram of scores per class), summaries are added in a
tree, and the metrics are finished on the client from the total.

AUC comes from ``AUC_BINS`` equal-width score bins with ties inside a bin counted as
half, the trapezoid rule of the ROC curve through the bin edges; it differs from the
exact (sorted) AUC only by pairs whose scores fall within ``1 / AUC_BINS`` of each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AUC_BINS = 1 << 16
#: Score bins of each class's one-vs-rest AUC (K histograms per partition and model).
MULTICLASS_AUC_BINS = 1 << 12
RESIDUAL_BINS = 80
#: Bins per axis of the regression report's 2-D histograms.
GRID_BINS = 48
_EPS = 1e-15


@dataclass(frozen=True)
class Scoring:
    """How one run's predictions are scored: the target kind and what metrics need beyond it.

    Attributes
    ----------
    task : str
        The target kind (see :mod:`shardflow.tasks.targets`).
    transform : str
        The target transform the models were trained under (``none``, ``log1p``); labels and
        predictions are transformed back before any metric, so metrics are in the target's units.
    residual_range : float
        Half-width of the residual histograms (regression), in target units.
    value_range : tuple
        ``(low, high)`` of the target, for the predicted-vs-actual histograms.
    classes : int
        Number of classes (classification).
    """

    task: str
    transform: str = "none"
    residual_range: float = 1.0
    value_range: tuple = (0.0, 1.0)
    classes: int = 2


def as_scoring(scoring) -> Scoring:
    return scoring if isinstance(scoring, Scoring) else Scoring(str(scoring))


def binary_partial(y: np.ndarray, p: np.ndarray, w: np.ndarray, scoring: Scoring) -> dict:
    """Log-loss and accuracy sums, and score histograms per class (for AUC and ROC)."""
    q = np.clip(p, _EPS, 1 - _EPS)
    bins = np.minimum((np.clip(p, 0.0, 1.0) * AUC_BINS).astype(np.int64), AUC_BINS - 1)
    pos = y >= 0.5
    return {
        "logloss_sum": float(-(w * (y * np.log(q) + (1 - y) * np.log(1 - q))).sum()),
        "correct": float(w[(p >= 0.5) == pos].sum()),
        "pos_hist": np.bincount(bins[pos], weights=w[pos], minlength=AUC_BINS),
        "neg_hist": np.bincount(bins[~pos], weights=w[~pos], minlength=AUC_BINS),
    }


def multiclass_partial(y: np.ndarray, p: np.ndarray, w: np.ndarray, scoring: Scoring) -> dict:
    """Log-loss sum, the weighted confusion matrix (true × predicted, argmax) and, per class,
    one-vs-rest score histograms of that class's probability (for the macro AUC)."""
    k = scoring.classes
    codes = y.astype(np.int64)
    p = p.reshape(len(codes), k) if len(codes) else np.zeros((0, k))
    predicted = p.argmax(axis=1) if len(codes) else np.zeros(0, np.int64)
    picked = p[np.arange(len(codes)), codes] if len(codes) else np.zeros(0)
    confusion = np.bincount(codes * k + predicted, weights=w, minlength=k * k).reshape(k, k)
    bins = np.minimum((np.clip(p, 0.0, 1.0) * MULTICLASS_AUC_BINS).astype(np.int64), MULTICLASS_AUC_BINS - 1)
    pos = np.zeros((k, MULTICLASS_AUC_BINS))
    neg = np.zeros((k, MULTICLASS_AUC_BINS))
    for c in range(k):
        mine = codes == c
        pos[c] = np.bincount(bins[mine, c], weights=w[mine], minlength=MULTICLASS_AUC_BINS)
        neg[c] = np.bincount(bins[~mine, c], weights=w[~mine], minlength=MULTICLASS_AUC_BINS)
    return {
        "logloss_sum": float(-(w * np.log(np.clip(picked, _EPS, 1.0))).sum()),
        "confusion": confusion,
        "pos_hist": pos,
        "neg_hist": neg,
    }


def regression_partial(y: np.ndarray, p: np.ndarray, w: np.ndarray, scoring: Scoring) -> dict:
    """Squared and absolute error sums; for the report, residuals counted (weighted) in
    ``RESIDUAL_BINS`` bins over ``[-residual_range, residual_range]`` (outside: the end bins),
    and two ``GRID_BINS``² histograms: actual × predicted, and predicted × residual."""
    err = p - y
    r = scoring.residual_range
    scaled = (np.clip(err / r, -1, 1) + 1) / 2 * RESIDUAL_BINS
    low, high = scoring.value_range

    def grid(v):
        return np.clip(((v - low) / ((high - low) or 1.0) * GRID_BINS).astype(np.int64), 0, GRID_BINS - 1)

    residual_cells = np.clip(((err / r + 1) / 2 * GRID_BINS).astype(np.int64), 0, GRID_BINS - 1)
    cells = GRID_BINS * GRID_BINS
    return {
        "sse": float((w * err * err).sum()),
        "sae": float((w * np.abs(err)).sum()),
        "residual_hist": np.bincount(
            np.minimum(scaled.astype(np.int64), RESIDUAL_BINS - 1), weights=w, minlength=RESIDUAL_BINS
        ),
        "actual_predicted": np.bincount(grid(y) * GRID_BINS + grid(p), weights=w, minlength=cells),
        "predicted_residual": np.bincount(grid(p) * GRID_BINS + residual_cells, weights=w, minlength=cells),
    }


def combine_metrics(a: dict, b: dict) -> dict:
    """Sum two partial metric sums (associative: any tree of partitions gives the same total).

    Examples
    --------
    >>> import numpy as np
    >>> from shardflow.tasks.metrics import finish_metrics, partial_metrics
    >>> y, p = np.array([0.0, 1.0, 1.0, 0.0]), np.array([0.2, 0.9, 0.6, 0.4])
    >>> whole = finish_metrics(partial_metrics(y, p, "classification"), "classification")
    >>> halves = combine_metrics(partial_metrics(y[:2], p[:2], "classification"),
    ...                          partial_metrics(y[2:], p[2:], "classification"))
    >>> split = finish_metrics(halves, "classification")
    >>> whole["auc"], split["auc"], whole["accuracy"] == split["accuracy"] == 1.0
    (1.0, 1.0, True)
    """
    return {k: a[k] + b[k] for k in a}


def _histogram_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC from (weighted) score histograms of the positives and the negatives."""
    n_pos, n_neg = pos.sum(), neg.sum()
    if not (n_pos > 0 and n_neg > 0):
        return float("nan")
    # Pairs (positive above negative) + half the pairs sharing a bin.
    neg_below = np.cumsum(neg) - neg
    return float((pos * neg_below).sum() + 0.5 * (pos * neg).sum()) / float(n_pos * n_neg)


def binary_finish(total: dict, scoring: Scoring) -> dict:
    w = total["w"]
    return {
        "auc": _histogram_auc(total["pos_hist"], total["neg_hist"]),
        "logloss": total["logloss_sum"] / w,
        "accuracy": total["correct"] / w,
        "positive_rate": total["sum_y"] / w,
    }


def multiclass_finish(total: dict, scoring: Scoring) -> dict:
    """Log loss, accuracy, macro F1 (over the classes that occur as truth or prediction, as
    scikit-learn's default) and macro one-vs-rest AUC (over the classes with positives and
    negatives); per class: precision, recall, F1, AUC and support; the confusion matrix."""
    confusion = np.asarray(total["confusion"], dtype=np.float64)
    tp = np.diag(confusion)
    truth, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(truth > 0, tp / truth, 0.0)
        f1 = np.where(truth + predicted > 0, 2 * tp / (truth + predicted), 0.0)
    occurring = (truth + predicted) > 0
    aucs = np.array([_histogram_auc(total["pos_hist"][c], total["neg_hist"][c]) for c in range(len(tp))])
    w = total["w"]
    return {
        "logloss": total["logloss_sum"] / w,
        "accuracy": float(tp.sum() / w),
        "macro_f1": float(f1[occurring].mean()) if occurring.any() else float("nan"),
        "macro_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "auc": aucs.tolist(),
            "support": truth.tolist(),
        },
        "confusion": confusion.tolist(),
    }


def regression_finish(total: dict, scoring: Scoring) -> dict:
    w = total["w"]
    mean = total["sum_y"] / w
    sst = total["sum_y2"] - w * mean * mean
    return {
        "rmse": float(np.sqrt(total["sse"] / w)),
        "mae": total["sae"] / w,
        "r2": float(1.0 - total["sse"] / sst) if sst > 0 else float("nan"),
    }


def roc_points(total: dict, points: int, scoring: Scoring) -> dict:
    pos, neg = total["pos_hist"][::-1], total["neg_hist"][::-1]  # high scores first
    tpr = np.concatenate([[0.0], np.cumsum(pos) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0.0], np.cumsum(neg) / max(neg.sum(), 1)])
    keep = np.unique(np.linspace(0, len(tpr) - 1, points).astype(int))
    return {"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()}


def confusion_counts(total: dict, points: int, scoring: Scoring) -> dict:
    return {"confusion": np.asarray(total["confusion"]).tolist()}


def residual_histogram(total: dict, points: int, scoring: Scoring) -> dict:
    r = scoring.residual_range
    low, high = scoring.value_range
    return {
        "residual_edges": np.linspace(-r, r, RESIDUAL_BINS + 1).tolist(),
        "residual_counts": total["residual_hist"].tolist(),
        "value_range": [low, high],
        "residual_range": r,
        "actual_predicted": total["actual_predicted"].reshape(GRID_BINS, GRID_BINS).tolist(),
        "predicted_residual": total["predicted_residual"].reshape(GRID_BINS, GRID_BINS).tolist(),
    }


def metric_direction(name: str) -> str:
    return "max" if name in ("auc", "accuracy", "r2", "macro_f1", "macro_auc") else "min"
