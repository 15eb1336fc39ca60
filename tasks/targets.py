"""Target kinds: the one place that knows what each kind of target means.

A kind is a name plus what differs between kinds everywhere else: XGBoost's objective,
the comparison table's metrics (the first one ranks the models), the partial metric
sums and how they finish, the report's plot, the MLP's loss and output activation, the
stacked combiner, and how predictions become labels. Every module asks this registry
instead of testing the kind's name.

``target.task`` names one of the configurable kinds (``classification``, ``regression``);
the ETL resolves a classification target with three or more classes to ``multiclass``
(:func:`resolve_kind`), and the run stores the resolved kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shardflow.tasks import metric_sums
from shardflow.tasks.combiners import GLMCombiner, MultinomialCombiner


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _identity(x):
    return x


def _log_loss_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-15, 1 - 1e-15)
    return -(y * np.log(q) + (1 - y) * np.log1p(-q))


def _squared_error_rows(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    return 0.5 * (p - y) ** 2


def _bce_loss(out, y):
    from torch.nn import functional

    return functional.binary_cross_entropy_with_logits(out, y, reduction="none")


def _mse_loss(out, y):
    return (out - y) ** 2


def _cross_entropy_loss(out, y):
    from torch.nn import functional

    return functional.cross_entropy(out, y.long(), reduction="none")


def _torch_sigmoid(out):
    import torch

    return torch.sigmoid(out)


def _torch_softmax(out):
    import torch

    return torch.softmax(out, dim=1)


def _threshold_codes(scores: np.ndarray) -> np.ndarray:
    return (np.asarray(scores) >= 0.5).astype(np.int64)


def _argmax_codes(scores: np.ndarray) -> np.ndarray:
    return np.asarray(scores).argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class TargetKind:
    """One kind of target (see the module docstring).

    Attributes
    ----------
    name : str
        The kind's name (``target.task`` for a configurable kind).
    xgboost : dict
        XGBoost's ``objective`` and ``eval_metric`` (the last one drives early stopping);
        ``num_class`` is added for kinds with several outputs.
    columns : tuple
        Metrics in comparison tables; the first ranks the models.
    curve : str
        The report's plot of the validation predictions: ``roc``, ``confusion`` or ``residuals``.
    partial, finish, curves : callable
        The kind's metric sums of one partition, the metrics from the total, the plot data.
    loss : callable
        ``loss(output, y) -> per-row loss`` (torch) of the MLP's raw output.
    activation : callable
        The MLP's raw output (torch) to a prediction.
    combiner : GLMCombiner or MultinomialCombiner
        The stacked ensemble's combiner of member predictions.
    codes : callable or None
        Class codes from predictions (binary: score ≥ 0.5; multi-class: the most probable
        class); None: a value, not a class.
    configurable : bool
        Whether ``target.task`` may name it (``multiclass`` is resolved, not configured).
    multi_output : bool
        One output per class (``num_class`` for XGBoost, K MLP outputs, K probabilities).
    """

    name: str
    xgboost: dict
    columns: tuple
    curve: str
    partial: Callable
    finish: Callable
    curves: Callable
    loss: Callable
    activation: Callable
    combiner: object
    codes: Callable | None = None
    configurable: bool = True
    multi_output: bool = False

    @property
    def is_classification(self) -> bool:
        return self.codes is not None

    def outputs(self, classes: int) -> int:
        """Model outputs per row: one per class for a multi-output kind, else one."""
        return classes if self.multi_output else 1


TARGET_KINDS = {
    k.name: k
    for k in (
        TargetKind(
            "classification",
            {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"]},
            ("auc", "logloss", "accuracy"),
            "roc",
            metric_sums.binary_partial,
            metric_sums.binary_finish,
            metric_sums.roc_points,
            _bce_loss,
            _torch_sigmoid,
            GLMCombiner(_logit, _sigmoid, lambda p: p * (1 - p), _log_loss_rows),
            _threshold_codes,
        ),
        TargetKind(
            "multiclass",
            {"objective": "multi:softprob", "eval_metric": ["merror", "mlogloss"]},
            ("logloss", "accuracy", "macro_f1", "macro_auc"),
            "confusion",
            metric_sums.multiclass_partial,
            metric_sums.multiclass_finish,
            metric_sums.confusion_counts,
            _cross_entropy_loss,
            _torch_softmax,
            MultinomialCombiner(),
            _argmax_codes,
            configurable=False,
            multi_output=True,
        ),
        TargetKind(
            "regression",
            {"objective": "reg:squarederror", "eval_metric": ["rmse"]},
            ("rmse", "mae", "r2"),
            "residuals",
            metric_sums.regression_partial,
            metric_sums.regression_finish,
            metric_sums.residual_histogram,
            _mse_loss,
            _identity,
            GLMCombiner(_identity, _identity, np.ones_like, _squared_error_rows),
        ),
    )
}

#: The kinds ``target.task`` accepts.
TASK_TYPES = tuple(name for name, kind in TARGET_KINDS.items() if kind.configurable)


def target_kind(task: str) -> TargetKind:
    """The kind named ``task``.

    Examples
    --------
    >>> target_kind("regression").columns
    ('rmse', 'mae', 'r2')
    """
    return TARGET_KINDS[task]


def resolve_kind(task: str, classes: int) -> str:
    """The kind a ``target.task`` means for a target with ``classes`` distinct labels.

    Examples
    --------
    >>> resolve_kind("classification", 2), resolve_kind("classification", 4), resolve_kind("regression", 0)
    ('classification', 'multiclass', 'regression')
    """
    multi = [k.name for k in TARGET_KINDS.values() if k.multi_output and not k.configurable]
    if target_kind(task).is_classification and classes > 2 and multi:
        return multi[0]
    return task


# ----------------------------------------------------------------------------- transforms


@dataclass(frozen=True)
class TargetTransform:
    """A transform of a regression target: models train on ``forward(y)``; predictions and
    metrics go through ``inverse``. Values at or below ``above`` are outside its domain."""

    name: str
    forward: Callable
    inverse: Callable
    above: float = -np.inf


TARGET_TRANSFORMS = {
    t.name: t
    for t in (
        TargetTransform("none", _identity, _identity),
        TargetTransform("log1p", np.log1p, np.expm1, above=-1.0),
    )
}


def target_transform(name: str) -> TargetTransform:
    """The transform named ``name`` (``target.transform``)."""
    return TARGET_TRANSFORMS[name]
