"""The linear family on one partition: its design matrix, Newton terms and predictions.

A generalised linear model on the ETL's feature matrix: logistic for a binary target,
multinomial (softmax) for a multi-class one, least squares for regression. Its inputs are
the features as the ETL wrote them: numerics standardised with the training table's mean
and deviation (missing values at 0, its mean), and each categorical one-hot on its codes
(:data:`~shardflow.tasks.encode.MISSING_CODE`, :data:`~shardflow.tasks.encode.OTHER_CODE`,
then the categories, most frequent first). The fit minimises

    (1 / Σ w_i) Σ_i w_i ℓ(y_i, x_i) + (λ / 2) ‖β‖²

over the coefficients β and the unpenalised intercepts, by the damped Newton method of
the stacked combiner (:class:`~shardflow.tasks.combiners.DampedNewton`) on sums over rows,
so every partition contributes its terms independently
(:mod:`shardflow.pipelines.training.linear` reduces them on the cluster).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardflow.tasks.combiners import DampedNewton
from shardflow.tasks.encode import MISSING_CODE, OTHER_CODE
from shardflow.tasks.targets import target_kind

#: One-hot columns of a categorical at most: missing, other and the 62 most frequent
#: categories; rarer ones share the ``other`` column (as unseen ones do).
MAX_CODES = 64
#: Coefficients the Newton fit holds at most (a dense Hessian of 32 MB); wider categoricals
#: are narrowed to fit.
MAX_COEFFICIENTS = 2048
#: Newton passes at most (a logistic fit takes about ten, least squares two).
MAX_ITER = 100


@dataclass(frozen=True)
class LinearLayout:
    """Where each coefficient sits: an intercept, the numerics, then each categorical's
    one-hot columns (``codes``: how many of its codes get a column of their own), for each of
    ``outputs`` outputs (the classes of a multi-class target, else one).

    Examples
    --------
    >>> layout = LinearLayout("classification", numeric=2, codes=(3,), outputs=1)
    >>> layout.width, layout.size
    (6, 6)
    >>> layout.design(np.array([[0.5, -1.0, 2.0], [0.0, 1.0, 7.0]], np.float32)).tolist()
    [[1.0, 0.5, -1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]]
    >>> LinearLayout("multiclass", numeric=2, codes=(3,), outputs=4).size  # class 0's intercept is 0
    23
    """

    task: str
    numeric: int
    codes: tuple
    outputs: int

    @classmethod
    def of(cls, preprocessor) -> LinearLayout:
        """The layout for a run's features and target, categoricals narrowed to
        :data:`MAX_CODES` codes, and further while the coefficients exceed :data:`MAX_COEFFICIENTS`.

        Raises
        ------
        ValueError
            Even two codes per categorical (missing, other) give too many coefficients.
        """
        outputs = target_kind(preprocessor.task).outputs(len(preprocessor.classes))
        numeric = len(preprocessor.numeric)
        cardinalities = [preprocessor.cardinalities[col] for col in preprocessor.categorical]
        budget = MAX_COEFFICIENTS // outputs - 1 - numeric
        cap = MAX_CODES
        while cap > OTHER_CODE + 1 and sum(min(c, cap) for c in cardinalities) > budget:
            cap -= 1
        codes = tuple(min(c, cap) for c in cardinalities)
        layout = cls(preprocessor.task, numeric, codes, outputs)
        if layout.width * outputs > MAX_COEFFICIENTS:
            raise ValueError(
                f"{outputs} output(s) × {layout.width} columns (an intercept, {numeric} numeric features, "
                f"{len(codes)} categoricals) are more than the {MAX_COEFFICIENTS} coefficients its Newton fit "
                "holds; leave it out of train.models, or use fewer features"
            )
        return layout

    @property
    def width(self) -> int:
        """Columns of the design: the intercept, the numerics, the one-hot columns."""
        return 1 + self.numeric + sum(self.codes)

    @property
    def multi_output(self) -> bool:
        return target_kind(self.task).multi_output

    @property
    def size(self) -> int:
        """Free coefficients: ``outputs × width``, less class 0's intercept for a multi-class
        target (softmax is unchanged by adding one number to every intercept)."""
        return self.outputs * self.width - self.multi_output

    def intercepts(self) -> np.ndarray:
        """Positions of the free intercepts among the free coefficients (unpenalised)."""
        positions = np.arange(self.outputs) * self.width - int(self.multi_output)
        return positions[positions >= 0]

    def full(self, theta) -> np.ndarray:
        """The free coefficients as an ``(outputs, width)`` matrix (class 0's intercept 0)."""
        full = np.concatenate([np.zeros(int(self.multi_output)), np.asarray(theta, dtype=np.float64)])
        return full.reshape(self.outputs, self.width)

    def coefficients(self, theta) -> np.ndarray:
        """The free coefficients as a ``(width, outputs)`` matrix (a multi-class target's
        intercepts centred: the probabilities do not change)."""
        coef = self.full(theta).T.copy()
        if self.multi_output:
            coef[0] -= coef[0].mean()
        return coef

    def column_names(self, preprocessor) -> list:
        """A name for each design column: ``(intercept)``, the numerics, ``column=category``."""
        from shardflow.tasks.encode import FIRST_CODE

        names = ["(intercept)", *preprocessor.numeric]
        for col, width in zip(preprocessor.categorical, self.codes):
            vocabulary = preprocessor.vocabularies[col]
            names += [f"{col}=(missing)", f"{col}=(other)"][:width]
            names += [f"{col}={vocabulary[k - FIRST_CODE]}" for k in range(FIRST_CODE, width)]
        return names

    def design(self, x: np.ndarray) -> np.ndarray:
        """The float64 design matrix of rows ``x`` (the ETL's feature matrix)."""
        n = len(x)
        out = np.zeros((n, self.width))
        out[:, 0] = 1.0
        out[:, 1 : 1 + self.numeric] = x[:, : self.numeric]
        start = 1 + self.numeric
        for j, width in enumerate(self.codes):
            out[np.arange(n), start + code_index(x[:, self.numeric + j], width)] = 1.0
            start += width
        return out

    def terms(self, x, y, w, theta) -> dict:
        """Loss, gradient and Hessian sums (unpenalised) of rows ``x`` at ``theta``: one Newton pass's share."""
        return design_terms(self, self.design(x), y, np.asarray(w, dtype=np.float64), theta)


def design_terms(layout: LinearLayout, design: np.ndarray, y, w: np.ndarray, theta) -> dict:
    """:meth:`LinearLayout.terms` of rows whose design is built already."""
    if layout.multi_output:
        return multinomial_terms(design, y, w, layout.full(theta))
    return target_kind(layout.task).combiner.terms(design, y, w, np.asarray(theta, dtype=np.float64))


def code_index(codes: np.ndarray, width: int) -> np.ndarray:
    """Each row's one-hot column among a categorical's ``width``: its code, or ``other``
    for a code without a column of its own.

    Examples
    --------
    >>> code_index(np.array([0.0, 1.0, 2.0, 5.0]), 3).tolist()
    [0, 1, 2, 1]
    """
    codes = np.asarray(codes).astype(np.int64)
    return np.where((codes >= MISSING_CODE) & (codes < width), codes, OTHER_CODE)


def multinomial_terms(design: np.ndarray, y, w: np.ndarray, coef: np.ndarray) -> dict:
    """Weighted log-loss sums of softmax(``design @ coef.T``) and their gradient and Hessian
    with respect to ``coef`` (K × D, flattened by class), class 0's intercept left out."""
    n, d = design.shape
    k = coef.shape[0]
    p = softmax(design @ coef.T)
    onehot = np.eye(k)[np.asarray(y, dtype=np.int64)]
    grad = ((w[:, None] * (p - onehot)).T @ design).reshape(k * d)
    hess = np.empty((k, d, k, d))
    for a in range(k):
        for b in range(a, k):
            s = w * p[:, a] * ((a == b) - p[:, b])
            hess[a, :, b, :] = design.T @ (design * s[:, None])
            hess[b, :, a, :] = hess[a, :, b, :].T
    chosen = p[np.arange(n), np.asarray(y, dtype=np.int64)]
    loss = float(w @ -np.log(np.clip(chosen, 1e-300, 1.0)))
    hess = hess.reshape(k * d, k * d)
    return {"loss": loss, "grad": grad[1:], "hess": hess[1:, 1:], "n": float(w.sum())}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def add_terms(a: dict, b: dict) -> dict:
    """Sum of two partitions' (or subtrees') Newton terms (associative)."""
    return {key: a[key] + b[key] for key in a}


def partition_terms(shard, layout: LinearLayout, theta) -> dict:
    """The Newton terms of one partition's training rows at ``theta``."""
    return layout.terms(shard.x_train, shard.y_train, shard.weights_train, theta)


def newton_fit(terms_at, layout: LinearLayout, *, ridge: float, max_iter: int = MAX_ITER) -> dict:
    """The whole fit, wherever the sums come from: ``terms_at(theta)`` returns the summed
    :func:`partition_terms` of every partition (on a cluster one reduction per call; in one
    task, a loop). Starts at zero; ``ridge`` is λ.

    :class:`DampedNewton` penalises every coefficient; the intercepts' share is taken back
    out of the sums it is given, so the intercepts stay unpenalised.
    """
    fit = DampedNewton(np.zeros(layout.size), ridge)
    free = layout.intercepts()
    objective, steps = [], []
    for _ in range(max_iter):
        terms = dict(terms_at(fit.trial))
        n = terms["n"] if terms["n"] > 0 else 1.0
        b = fit.trial[free]
        terms["loss"] = terms["loss"] - 0.5 * ridge * n * float(b @ b)
        terms["grad"] = terms["grad"].copy()
        terms["grad"][free] -= ridge * n * b
        terms["hess"] = terms["hess"].copy()
        terms["hess"][free, free] -= ridge * n
        steps.append(fit.update(terms))
        objective.append(float(fit.objective))
        if fit.done:
            break
    return {
        "coef": layout.coefficients(fit.theta),
        "objective": objective,
        "newton_steps": steps,
        "converged": fit.converged,
        "stalled": fit.done and not fit.converged,
    }


def fit_in_one_task(layout: LinearLayout, *shards, ridge: float, max_iter: int = MAX_ITER) -> dict:
    """:func:`newton_fit` in this task, on every partition's training rows (small data: one
    round trip instead of one per Newton pass). The design is built once."""
    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    design, w = layout.design(s.x_train), s.weights_train.astype(np.float64)
    return newton_fit(
        lambda theta: design_terms(layout, design, s.y_train, w, theta), layout, ridge=ridge, max_iter=max_iter
    )


# ----------------------------------------------------------------------------- prediction


def linear_scores(payload: dict, x: np.ndarray) -> np.ndarray:
    """``intercept + x_numeric @ β + Σ β_category`` per row and output, (n, outputs)."""
    coef = np.asarray(payload["coef"], dtype=np.float64).reshape(-1, payload["outputs"])
    numeric = payload["numeric"]
    z = coef[0] + np.asarray(x[:, :numeric], dtype=np.float64) @ coef[1 : 1 + numeric]
    start = 1 + numeric
    for j, width in enumerate(payload["codes"]):
        z += coef[start + code_index(x[:, numeric + j], width)]
        start += width
    return z


def predict_linear(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """Probabilities (binary: the positive class's; multi-class: one column per class) or
    values (regression, in the units the models learn) for rows ``x``."""
    z = linear_scores(payload, np.asarray(x))
    kind = target_kind(payload["task"])
    if kind.multi_output:
        return softmax(z) if len(z) else z
    z = z[:, 0]
    return 0.5 * (1.0 + np.tanh(0.5 * z)) if kind.is_classification else z
