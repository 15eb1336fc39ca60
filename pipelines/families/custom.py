"""Families of one's own: an estimator with ``fit``/``predict``, or a PyTorch module, made a
model family from Python (:func:`~shardflow.pipelines.families.registry.register_family`).

A registered family trains like the built-in ones and appears wherever they do — the
comparison, the report, ``predict``, ``load_model`` — without an ONNX export. It trains
globally (one model on every training row, brought to one worker: the estimator's own
``fit`` is not distributed) or per partition (one model per group of partitions, where the
partitions are, averaged like the built-in ensembles).

Its models are written as bytes by its ``save`` and read by its ``load`` (an estimator with
``save_model``/``load_model``, as XGBoost's and LightGBM's have, needs neither; a PyTorch
module's weights are written as tensors), never pickled. A process that loads a run must
register the family again, under the same name, before it loads.

Examples
--------
>>> from sklearn.linear_model import LogisticRegression
>>> import shardflow
>>> shardflow.register_family(shardflow.estimator_family(  # doctest: +SKIP
...     "logreg", lambda: LogisticRegression(max_iter=500), save=to_bytes, load=from_bytes))
>>> config = shardflow.load_config("job.yaml", ["train.models=[xgboost,logreg]"])  # doctest: +SKIP
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from shardflow.pipelines.families.registry import FamilyResult, GlobalFamily, ModelFamily, PerPartitionFamily
from shardflow.pipelines.families.specs import FamilySpec
from shardflow.pipelines.records.rundir import RunDir


def model_file_bytes(estimator) -> bytes:
    """An estimator's ``save_model(path)`` file, as bytes (XGBoost's, LightGBM's)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.json"
        estimator.save_model(str(path))
        return path.read_bytes()


class EstimatorFamily(ModelFamily):
    """A family whose model is an estimator with ``fit(x, y[, sample_weight])`` and
    ``predict`` (and ``predict_proba`` for classification), as scikit-learn's are.

    Parameters
    ----------
    name : str
        The name ``train.models`` gives it (a Python identifier, not a built-in family's).
    make : callable
        ``make() -> estimator``, a new unfitted estimator each call.
    label : str, optional
        What tables and plots say (default: the name).
    per_partition : bool
        One model per group of partitions (``train.partitions.partitions_per_model``)
        instead of one on every training row.
    save, load : callable, optional
        ``save(estimator) -> bytes`` and ``load(bytes) -> estimator``; by default the
        estimator's ``save_model``/``load_model`` (refused at registration if it has none).
    libraries : tuple of str
        Modules to import on the workers as the cluster starts.

    The features it is fitted on are the ETL's matrix (numerics standardised, categories as
    integer codes, in the order of the run's ``preprocessor.json``); classification labels
    are the codes 0..K-1.
    """

    def __init__(self, name, make, *, label=None, per_partition=False, save=None, load=None, libraries=()):
        kind = "per_partition" if per_partition else "global"
        super().__init__(FamilySpec(name, label or name, kind, 4, default=False, libraries=tuple(libraries)))
        probe = make()
        if (save is None or load is None) and not (hasattr(probe, "save_model") and hasattr(probe, "load_model")):
            raise ValueError(
                f"family {name!r}: {type(probe).__name__} has no save_model/load_model; pass save= and load= "
                "(estimator -> bytes, bytes -> estimator): models are never pickled"
            )
        self.make, self.per_partition = make, per_partition
        self.save_bytes = save or model_file_bytes
        self.load_bytes = load or self._load_model_file
        self.fingerprint = repr(probe)

    def _load_model_file(self, data: bytes):
        estimator = self.make()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.json"
            path.write_bytes(data)
            estimator.load_model(str(path))
        return estimator

    # ------------------------------------------------------------------------- ModelFamily

    def _fit_options(self, context) -> dict:
        data = context.data
        return {"make": self.make, "save": self.save_bytes, "scoring": data.scoring, "task": data.task,
                "classes": data.classes}  # fmt: skip

    def predictor(self):
        from shardflow.tasks.custom_models import predict_estimator, predict_estimator_ensemble

        return predict_estimator_ensemble if self.per_partition else predict_estimator

    def save(self, stage_dir, result: FamilyResult) -> None:
        from shardflow.pipelines.records.artifacts import write_json

        state = result.state
        members = state.get("members", [state])
        RunDir.train_file(stage_dir, self.name).mkdir()
        for i, member in enumerate(members):
            RunDir.train_file(stage_dir, self.member_file(i, "bin")).write_bytes(member["model"])
        meta = {"seconds": result.seconds, "weights": [m["weight"] for m in members], "fingerprint": self.fingerprint}
        meta.update({k: state[k] for k in ("groups", "partition_metrics") if k in state})
        write_json(RunDir.train_file(stage_dir, self.file("json")), meta)

    def load(self, files) -> dict:
        meta = files.read_json(files.run.trained(self.file()))
        task = files.read_json(files.run.trained("task"))["task"]
        preprocessor = files.read_json(files.run.preprocessor)
        classes = max(len(preprocessor.get("classes") or []), 2)
        estimators = [
            self.load_bytes(files.read_bytes(files.run.trained(self.member_file(i, "bin"))))
            for i in range(len(meta["weights"]))
        ]
        for estimator in estimators:
            if hasattr(estimator, "set_target"):
                estimator.set_target(task, classes)
        payload = {"task": task, "classes": classes, "weights": meta["weights"]}
        return {**payload, "estimators": estimators} if self.per_partition else {**payload, "estimator": estimators[0]}


class GlobalEstimatorFamily(EstimatorFamily, GlobalFamily):
    """:class:`EstimatorFamily` trained on every training row, on one worker."""

    def train(self, context) -> FamilyResult:
        from shardflow.pipelines.interface import progress
        from shardflow.pipelines.training.data import call_token
        from shardflow.tasks.custom_models import fit_estimator

        data = context.data
        future = context.runtime.client.submit(
            fit_estimator,
            *data.futures,
            **self._fit_options(context),
            key=f"train-{self.name}-{call_token(data.token)}",
        )
        return FamilyResult.of(progress.compute(context.runtime.client, future, f"train {self.name}"))

    def plan_line(self, n_workers: int, one_worker: bool) -> str:
        return f"{self.name} on one worker (every training row brought to it)"


class PartitionEstimatorFamily(EstimatorFamily, PerPartitionFamily):
    """:class:`EstimatorFamily` with one model per group of partitions."""

    def partition_job(self, context) -> tuple:
        from shardflow.tasks.custom_models import fit_estimator

        options = self._fit_options(context)
        return fit_estimator, lambda group: options, {}


def estimator_family(name, make, *, per_partition=False, **options) -> EstimatorFamily:
    """An :class:`EstimatorFamily` of the right kind (see its parameters)."""
    cls = PartitionEstimatorFamily if per_partition else GlobalEstimatorFamily
    return cls(name, make, per_partition=per_partition, **options)


def torch_module_family(name, make_module, *, per_partition=False, max_steps=1000, batch_size=256, lr=1e-3, **options):
    """A family whose model is ``make_module()``, a PyTorch module from the feature matrix to
    one output (one per class for a multi-class target), trained with Adam on the target's
    loss for ``max_steps`` mini-batches (see :class:`~shardflow.tasks.custom_models.TorchModuleEstimator`);
    its weights are saved as tensors."""
    from shardflow.tasks.custom_models import TorchModuleEstimator

    def make():
        return TorchModuleEstimator(make_module, max_steps=max_steps, batch_size=batch_size, lr=lr)

    return estimator_family(
        name,
        make,
        per_partition=per_partition,
        save=lambda estimator: estimator.to_bytes(),
        load=lambda data: make().load_bytes(data),
        libraries=("torch",),
        **options,
    )
