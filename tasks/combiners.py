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
        return np.column_stack(
            [np.ones(len(predictions[0]))] + [self.link(np.asarray(p, dtype=np.float64)) for p in predictions]
        )

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
        return {
            "loss": float(w @ self.row_loss(p, y)),
            "grad": design.T @ r,
            "hess": (design * s[:, None]).T @ design,
            "n": float(w.sum()),
        }


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


#: The folds of a partition's validation rows the three stacked fits use: even rows, odd rows,
#: all rows (cross-fitting: each half is scored by the fit on the other).
FOLDS = ("even", "odd", "all")


def fold_rows(n: int) -> dict:
    """Each fold's rows of a partition's ``n`` validation rows (boolean masks)."""
    even = np.arange(n) % 2 == 0
    return {"even": even, "odd": ~even, "all": np.ones(n, dtype=bool)}


def fold_terms(combiner, design, y, w, thetas) -> list:
    """Newton terms (loss, gradient, Hessian sums) of the three fits on one partition, each at
    its own coefficients (``thetas``: even, odd, all)."""
    rows = fold_rows(len(y))
    return [combiner.terms(design[rows[f]], y[rows[f]], w[rows[f]], theta) for f, theta in zip(FOLDS, thetas)]


def fold_losses(combiner, design, y, w, candidates) -> np.ndarray:
    """Weighted loss sums and weight sums of ``candidates`` (``(fold, coef)`` pairs) on one
    partition: shape (len(candidates), 2)."""
    rows = fold_rows(len(y))
    out = np.zeros((len(candidates), 2))
    for i, (fold, coef) in enumerate(candidates):
        chosen = rows[fold]
        out[i] = combiner.loss(design[chosen], y[chosen], w[chosen], coef), w[chosen].sum()
    return out


def fit_combiner(
    terms_at, losses_at, combiner, *, members: int, classes: int, ridge: float = 1e-4, max_iter: int = 100
) -> dict:
    """The three stacked fits (:class:`DampedNewton`, from the members' average), then their
    quality: the whole algorithm, wherever the sums come from.

    ``terms_at(thetas)`` returns the summed :func:`fold_terms` of every partition at the
    three fits' trial coefficients; ``losses_at(candidates)`` the summed :func:`fold_losses`.
    On a cluster each call is one reduction over the partitions; in one task, a loop.
    """
    average = combiner.average(members, classes)
    fits = [DampedNewton(average, ridge) for _ in FOLDS]
    newton_steps, objective = [], []
    for _ in range(max_iter):
        total = terms_at([fit.trial for fit in fits])
        newton_steps.append(max(fit.update(t) for fit, t in zip(fits, total)))
        objective.append(float(fits[2].objective))
        if all(fit.done for fit in fits):
            break
    even, odd, every = (fit.theta for fit in fits)
    candidates = [("odd", even), ("even", odd), ("all", every)] + [
        ("all", combiner.member(m, members, classes)) for m in range(members)
    ]
    return {
        "coef_even": even.tolist(),
        "coef_odd": odd.tolist(),
        "coef": every.tolist(),
        "newton_steps": newton_steps,
        "objective": objective,
        "converged": all(fit.converged for fit in fits),
        "stalled": all(fit.done for fit in fits) and not all(fit.converged for fit in fits),
        **stack_quality(losses_at(candidates), members),
    }


def stack_quality(sums: np.ndarray, members: int) -> dict:
    """The cross-fitted combiner's and each member's mean loss on the validation rows."""
    mean = sums[:, 0] / np.maximum(sums[:, 1], 1e-300)
    out_of_fold = (sums[0, 0] + sums[1, 0]) / max(sums[0, 1] + sums[1, 1], 1e-300)
    member_losses = mean[3 : 3 + members]
    best = int(np.argmin(member_losses))
    return {
        "out_of_fold_loss": float(out_of_fold),
        "fit_loss": float(mean[2]),
        "member_losses": member_losses.tolist(),
        "best_member": best,
        "best_member_loss": float(member_losses[best]),
        "average_loss": float(np.mean(member_losses)),
    }


class DampedNewton:
    """Newton's method with backtracking on one convex, ridge-penalised loss whose terms
    (loss, gradient and Hessian sums over rows, see :func:`stack_partition_terms`) arrive
    one pass at a time for the point :attr:`trial`.

    A trial that does not lower the objective by Armijo's fraction of the predicted
    decrease is rejected and the step halved; the fit ends when the Newton decrement is
    negligible or the step is too small to matter.

    Examples
    --------
    >>> fit = DampedNewton(np.zeros(1), ridge=0.0)
    >>> while not fit.done:  # minimise (θ - 3)² / 2 over two "rows"
    ...     θ = fit.trial[0]
    ...     _ = fit.update({"loss": (θ - 3) ** 2, "grad": np.array([2 * (θ - 3)]), "hess": np.eye(1) * 2, "n": 2.0})
    >>> round(float(fit.theta[0]), 6), fit.converged
    (3.0, True)
    """

    def __init__(self, start: np.ndarray, ridge: float, armijo: float = 1e-4, tolerance: float = 1e-10):
        self.theta = np.asarray(start, dtype=np.float64).copy()
        self.trial = self.theta.copy()
        self.ridge, self.armijo, self.tolerance = ridge, armijo, tolerance
        self.objective = np.inf
        self.direction, self.decrement, self.step = None, 0.0, 1.0
        #: ``converged``: the Newton decrement is negligible; ``stalled``: no step along the
        #: direction lowers the loss at this precision (kept where it was lowest).
        self.done = self.converged = False

    def update(self, terms: dict) -> float:
        """Take the terms at :attr:`trial`; set the next trial. Returns the size of the move."""
        if self.done:
            return 0.0
        n = terms["n"] if terms["n"] > 0 else 1.0  # weights below 1 in all: the mean is still a mean
        value = terms["loss"] / n + 0.5 * self.ridge * float(self.trial @ self.trial)
        accepted = self.direction is None or (
            np.isfinite(value) and value <= self.objective - self.armijo * self.step * self.decrement
        )
        if accepted:
            self.theta, self.objective = self.trial, value
            hess = terms["hess"] / n + self.ridge * np.eye(len(self.theta))
            grad = terms["grad"] / n + self.ridge * self.theta
            try:
                direction = (
                    np.linalg.lstsq(hess, grad, rcond=None)[0] if self.ridge == 0 else np.linalg.solve(hess, grad)
                )
            except np.linalg.LinAlgError:
                direction = grad  # a singular Hessian: a gradient step, still line-searched
            self.decrement = float(grad @ direction)
            if not np.isfinite(self.decrement) or self.decrement <= self.tolerance * max(1.0, abs(value)):
                self.converged = bool(np.isfinite(self.decrement))
                self.done = True
                return 0.0
            self.direction, self.step = direction, 1.0
        else:
            self.step /= 2
            if self.step < 1e-8:
                self.done = True  # stalled: no step lowers the loss; θ is as good as this precision allows
                self.trial = self.theta
                return 0.0
        self.trial = self.theta - self.step * self.direction
        return float(np.abs(self.step * self.direction).max())
