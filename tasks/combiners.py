"""The stacked ensemble's combiners: generalised linear models over member predictions.

Both are fit by a line-searched Newton method on sums over rows (loss, gradient and
Hessian of the weighted loss), so every partition contributes its terms independently and
the sums are reduced on the cluster (:mod:`shardflow.pipelines.training.stacking`).
"""

from __future__ import annotations

import numpy as np


class GLMCombiner:
    """One output: ``inverse_link(b + Σ_m a_m · link(p_m))`` (logistic for a binary target,
    least squares for regression).

    Examples
    --------
    >>> c = GLMCombiner(np.log, np.exp, np.ones_like, lambda p, y: 0.5 * (p - y) ** 2)
    >>> c.inputs([np.array([1.0, np.e])]).tolist()
    [[1.0, 0.0], [1.0, 1.0]]
    >>> c.average(2).tolist()  # the members' mean through the link
    [0.0, 0.5, 0.5]
    """

    def __init__(self, link, inverse_link, newton_weights, row_loss):
        self.link, self.inverse_link, self.newton_weights = link, inverse_link, newton_weights
        self.row_loss = row_loss

    def size(self, members: int, classes: int) -> int:
        """Number of coefficients: an intercept and one per member."""
        return members + 1

    def inputs(self, predictions: list) -> np.ndarray:
        """The design matrix: an intercept and each member's prediction through the link."""
        return np.column_stack([np.ones(len(predictions[0]))] + [self.link(np.asarray(p, dtype=np.float64))
                                                                  for p in predictions])

    def average(self, members: int, classes: int = 2) -> np.ndarray:
        """Coefficients of the members' equally weighted mean (through the link)."""
        return np.concatenate([[0.0], np.full(members, 1.0 / members)])

    def member(self, index: int, members: int, classes: int = 2) -> np.ndarray:
        """Coefficients that reproduce member ``index``'s own predictions."""
        return np.eye(members + 1)[index + 1]

    def predict(self, coef, design: np.ndarray) -> np.ndarray:
        return self.inverse_link(design @ np.asarray(coef, dtype=np.float64))

    def loss(self, design: np.ndarray, y: np.ndarray, w: np.ndarray, coef) -> float:
        """The weighted loss (summed over rows) at ``coef``."""
        return float(w @ self.row_loss(self.predict(coef, design), np.asarray(y, dtype=np.float64)))

    def terms(self, design: np.ndarray, y: np.ndarray, w: np.ndarray, coef) -> dict:
        """Loss, gradient and Hessian of the weighted loss at ``coef``: one Newton step's sums."""
        p = self.predict(coef, design)
        y = np.asarray(y, dtype=np.float64)
        r = w * (p - y)
        s = w * self.newton_weights(p)
        return {"loss": float(w @ self.row_loss(p, y)), "grad": design.T @ r,
                "hess": (design * s[:, None]).T @ design, "n": float(w.sum())}


class MultinomialCombiner:
    """K outputs: ``softmax_k(b_k + Σ_m a_m · log p_{m,k})``, log-linear pooling of the
    members' class probabilities with one weight per member and one intercept per class.

    With K = 2 it is the binary combiner on the members' logits; the weights are shared by
    the classes, so a class a member never saw (probability near 0) is not amplified.

    Examples
    --------
    >>> c = MultinomialCombiner()
    >>> design = c.inputs([np.array([[0.7, 0.2, 0.1]])])
    >>> design.shape, c.predict([0, 0, 0, 1.0], design).round(3).tolist()
    ((1, 3, 4), [[0.7, 0.2, 0.1]])
    """

    def size(self, members: int, classes: int) -> int:
        return classes + members

    def average(self, members: int, classes: int) -> np.ndarray:
        """Coefficients of the members' geometric mean (renormalised): equal weights, no intercepts."""
        return np.concatenate([np.zeros(classes), np.full(members, 1.0 / members)])

    def member(self, index: int, members: int, classes: int) -> np.ndarray:
        """Coefficients that reproduce member ``index``'s own probabilities."""
        return np.eye(classes + members)[classes + index]

    def inputs(self, predictions: list) -> np.ndarray:
        """Per row and class: the class's one-hot intercept and each member's log probability."""
        logs = [np.log(np.clip(np.asarray(p, dtype=np.float64), 1e-9, 1.0)) for p in predictions]
        n, k = logs[0].shape
        onehot = np.broadcast_to(np.eye(k), (n, k, k))
        return np.concatenate([onehot, np.stack(logs, axis=2)], axis=2)

    def predict(self, coef, design: np.ndarray) -> np.ndarray:
        z = design @ np.asarray(coef, dtype=np.float64)
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def loss(self, design: np.ndarray, y: np.ndarray, w: np.ndarray, coef) -> float:
        """The weighted log loss (summed over rows) at ``coef``."""
        return _log_loss(self.predict(coef, design), y, w)

    def terms(self, design: np.ndarray, y: np.ndarray, w: np.ndarray, coef) -> dict:
        p = self.predict(coef, design)
        n, k, d = design.shape
        onehot = np.eye(k)[np.asarray(y, dtype=np.int64)]
        flat = design.reshape(n * k, d)
        grad = flat.T @ (w[:, None] * (p - onehot)).reshape(n * k)
        mean = np.einsum("nk,nkd->nd", p, design)  # Σ_k p_k x_k per row
        # Σ_i w_i (Σ_k p_ik x_ik x_ikᵀ − m_i m_iᵀ), as two matrix products (BLAS).
        hess = (flat * (w[:, None] * p).reshape(n * k, 1)).T @ flat - (mean * w[:, None]).T @ mean
        return {"loss": _log_loss(p, y, w), "grad": grad, "hess": hess, "n": float(w.sum())}


def _log_loss(p: np.ndarray, y, w: np.ndarray) -> float:
    chosen = p[np.arange(len(p)), np.asarray(y, dtype=np.int64)]
    return float(w @ -np.log(np.clip(chosen, 1e-300, 1.0)))
