"""Families of one's own, on a worker: an estimator with ``fit``/``predict`` (scikit-learn's
API), or a PyTorch module wrapped as one (:class:`TorchModuleEstimator`).

The driver side is :mod:`shardflow.pipelines.families.custom`. What is fitted here is the
user's own code, registered from Python (never named by a config); its models are written
with the family's ``save`` (bytes) and read with its ``load``, never pickled to disk.
"""

from __future__ import annotations

import io
import time

import numpy as np

from shardflow.core.threads import worker_threads
from shardflow.tasks.metrics import own_metrics
from shardflow.tasks.models import weighted_average
from shardflow.tasks.targets import target_kind


def estimator_scores(estimator, x: np.ndarray, task: str, classes: int) -> np.ndarray:
    """The estimator's predictions as shardflow's scorers take them: the positive class's
    probability (binary), one probability per class (multi-class: columns for every one of
    ``classes``, zero for a class its training rows lacked), or values (regression)."""
    kind = target_kind(task)
    if not kind.is_classification:
        return np.asarray(estimator.predict(x), dtype=np.float64).reshape(len(x))
    seen = np.asarray(getattr(estimator, "classes_", np.arange(classes))).astype(int)
    probabilities = np.asarray(estimator.predict_proba(x), dtype=np.float64).reshape(len(x), -1)
    full = np.zeros((len(x), max(classes, 2)))
    full[:, seen] = probabilities
    return full if kind.multi_output else full[:, 1]


def fit_estimator(*shards, make, save, scoring, task: str, classes: int) -> dict:
    """Fit ``make()`` on the training rows of ``shards`` (sample weights where the run has
    them); its model as ``save(estimator)`` bytes, and its metrics on the shards' own
    validation rows."""
    from shardflow.tasks.shards import merge_shards

    s = merge_shards(*shards)
    started = time.perf_counter()
    estimator = make()
    if hasattr(estimator, "set_target"):  # an estimator that needs the target's kind (TorchModuleEstimator)
        estimator.set_target(task, classes)
    y = s.y_train.astype(np.int64) if target_kind(task).is_classification else s.y_train
    if s.w_train is not None:
        estimator.fit(s.x_train, y, sample_weight=s.w_train)
    else:
        estimator.fit(s.x_train, y)
    model = bytes(save(estimator))
    seconds = time.perf_counter() - started
    own = own_metrics(s.y_valid, s.w_valid, lambda: estimator_scores(estimator, s.x_valid, task, classes), scoring)
    weight = float(np.sum(s.w_train, dtype=np.float64)) if s.w_train is not None else float(len(s.y_train))
    return {"model": model, "rows": int(len(s.y_train)), "weight": weight, "seconds": seconds, "validation": own}


def predict_estimator(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """One fitted estimator's predictions (``payload["estimator"]``)."""
    return estimator_scores(payload["estimator"], x, payload["task"], payload["classes"])


def predict_estimator_ensemble(payload: dict, x: np.ndarray, nthread: int | None = None, cache: dict | None = None):
    """The weighted average of per-partition estimators (``estimators``, ``weights``)."""
    scores = [estimator_scores(e, x, payload["task"], payload["classes"]) for e in payload["estimators"]]
    return weighted_average(scores, payload["weights"])


class TorchModuleEstimator:
    """A PyTorch module as an estimator: ``fit`` trains ``make_module()`` (inputs: the feature
    matrix; outputs: one per class for a multi-class target, else one) with Adam on the
    target kind's loss for ``max_steps`` mini-batch steps; ``predict``/``predict_proba``
    apply the kind's activation.

    Parameters
    ----------
    make_module : callable
        ``make_module() -> torch.nn.Module``, a new module each call.
    max_steps, batch_size, lr, seed : int, int, float, int
        The optimisation.

    The target's kind (``classification``, ``multiclass``, ``regression``) and its number of
    classes are set by :meth:`set_target` before ``fit`` and ``predict``.
    """

    def __init__(self, make_module, *, max_steps=1000, batch_size=256, lr=1e-3, seed=0):
        self.make_module = make_module
        self.max_steps, self.batch_size, self.lr, self.seed = max_steps, batch_size, lr, seed
        self.module = make_module()
        self.task, self.classes = None, 2  # set_target says (before fit and predict)

    def __repr__(self) -> str:
        options = f"max_steps={self.max_steps}, batch_size={self.batch_size}, lr={self.lr}"
        return f"TorchModuleEstimator({self.module!r}, {options})"

    def set_target(self, task: str, classes: int):
        """The target's kind and number of classes (see the class docstring)."""
        self.task, self.classes = task, classes
        if target_kind(task).is_classification:
            self.classes_ = np.arange(max(classes, 2))
        return self

    def fit(self, x, y, sample_weight=None):
        import torch

        threads = worker_threads()
        if threads:
            torch.set_num_threads(threads)
        kind = target_kind(self.task)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yt = torch.from_numpy(np.asarray(y, dtype=np.float32))
        wt = torch.from_numpy(
            np.ones(len(y), np.float32) if sample_weight is None else sample_weight.astype(np.float32)
        )
        optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr)
        self.module.train()
        for _ in range(self.max_steps if len(y) else 0):
            rows = torch.from_numpy(rng.integers(0, len(y), min(self.batch_size, len(y))))
            out = self.module(xt[rows])
            out = out if kind.multi_output else out.reshape(-1)
            loss = (kind.loss(out, yt[rows]) * wt[rows]).sum() / wt[rows].sum().clamp_min(1e-12)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return self

    def _outputs(self, x):
        import torch

        self.module.eval()
        with torch.no_grad():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
            kind = target_kind(self.task)
            return kind.activation(out if kind.multi_output else out.reshape(-1)).numpy().astype(np.float64)

    def predict_proba(self, x):
        p = self._outputs(x)
        return p if target_kind(self.task).multi_output else np.column_stack([1 - p, p])

    def predict(self, x):
        return self._outputs(x)

    def to_bytes(self) -> bytes:
        """The module's weights (``torch.save`` of its state dict: tensors only)."""
        import torch

        buffer = io.BytesIO()
        torch.save(self.module.state_dict(), buffer)
        return buffer.getvalue()

    def load_bytes(self, data: bytes):
        """Weights written by :meth:`to_bytes`, read with ``weights_only`` (no code runs)."""
        import torch

        self.module.load_state_dict(torch.load(io.BytesIO(data), weights_only=True))
        return self
