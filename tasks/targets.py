"""Target kinds: the one place that knows what each ``target.task`` means.

A kind is a name plus what differs between kinds everywhere else: XGBoost's objective,
the comparison table's metrics (the first one ranks the models), the partial metric
sums and how they finish, the report's curve, the MLP's loss and output activation,
the stacked combiner's link, and whether predictions carry a label. Every module asks
this registry instead of testing the kind's name; a new kind (multi-class, say) is one
entry here and its own functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from shardflow.tasks import metrics


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _identity(x):
    return x


def _bce_loss():
    from torch import nn

    return nn.BCEWithLogitsLoss(reduction="sum")


def _mse_loss():
    from torch import nn

    return nn.MSELoss(reduction="sum")


def _torch_sigmoid(out):
    import torch

    return torch.sigmoid(out)


def _threshold_label(scores: np.ndarray) -> np.ndarray:
    return (scores >= 0.5).astype(np.int8)


@dataclass(frozen=True)
class TargetKind:
    """One kind of target (see the module docstring).

    Attributes
    ----------
    name : str
        The ``target.task`` value.
    xgboost : dict
        XGBoost's ``objective`` and ``eval_metric`` (the last one drives early stopping).
    columns : tuple
        Metrics in comparison tables; the first ranks the models.
    curve : str
        The report's plot of the validation predictions: ``roc`` or ``residuals``.
    partial, finish, curves : callable
        The kind's metric sums of one partition, the metrics from the total, the plot data.
    loss : callable
        A torch loss (summed over rows) for the MLP's raw output.
    activation : callable
        The MLP's raw output (torch) to a prediction; ``link``/``inverse_link`` the same on
        NumPy arrays for the stacked combiner (``newton_weights``: its Hessian weights).
    label : callable or None
        A label column from the predictions (binary: score ≥ 0.5); None: no labels.
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
    link: Callable
    inverse_link: Callable
    newton_weights: Callable
    label: Callable | None = None


TARGET_KINDS = {k.name: k for k in (
    TargetKind("classification", {"objective": "binary:logistic", "eval_metric": ["auc", "logloss"]},
               ("auc", "logloss", "accuracy"), "roc", metrics.binary_partial, metrics.binary_finish,
               metrics.roc_points, _bce_loss, _torch_sigmoid, _logit, _sigmoid, lambda p: p * (1 - p),
               _threshold_label),
    TargetKind("regression", {"objective": "reg:squarederror", "eval_metric": ["rmse"]},
               ("rmse", "mae", "r2"), "residuals", metrics.regression_partial, metrics.regression_finish,
               metrics.residual_histogram, _mse_loss, _identity, _identity, _identity, np.ones_like),
)}

#: Every kind's name, as ``target.task`` accepts them.
TASK_TYPES = tuple(TARGET_KINDS)


def target_kind(task: str) -> TargetKind:
    """The kind named ``task``.

    Examples
    --------
    >>> target_kind("regression").columns
    ('rmse', 'mae', 'r2')
    """
    return TARGET_KINDS[task]
