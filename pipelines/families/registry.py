"""The model families as classes: each binds a :class:`~shardflow.pipelines.families.specs.FamilySpec`
to its code.

A family trains (on the driver, scheduling work on the cluster) and returns a
:class:`FamilyResult`; saves it into the train stage; loads it back as the payload its
predictor takes; and names its predictor (a function run on the workers). What differs
between kinds — which families train together in one graph, what the plan says of them,
which record per-partition metrics — is behaviour of the kind's class, not a switch on a
string elsewhere. Everything else — the config's choices, the CLI, evaluation, prediction,
the report — iterates over :data:`FAMILIES`.

A family's code is imported when it is used: the command line and the config import this
module to list the families, and must not import pandas, XGBoost or torch to print their
help. Its report curves, MLflow logging and ONNX operators are adapters on the
presentation side (:mod:`shardflow.pipelines.interface.family_views`, :mod:`shardflow.tasks.onnx_graph`)
that the class binds by name.

A family of one's own is a subclass registered from Python (:func:`register_family`;
:mod:`shardflow.pipelines.families.custom` wraps an estimator or a PyTorch module), never
from a config: configs are untrusted, and name only families already registered.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import import_module

from shardflow.pipelines.families.specs import SPECS, FamilySpec, add_spec


@dataclass(frozen=True)
class Deferred:
    """Function ``name`` of module ``shardflow.<module>``, imported on its first call.

    Picklable by reference (it travels to workers as two strings).

    Examples
    --------
    >>> Deferred("tasks.keys", "mix_hashes").__name__
    'mix_hashes'
    """

    module: str
    name: str

    def __call__(self, *args, **kwargs):
        return getattr(import_module(f"shardflow.{self.module}"), self.name)(*args, **kwargs)

    @property
    def __name__(self) -> str:  # what Dask's task names and logs show
        return self.name


def _view(name: str) -> Deferred:
    """A presentation adapter of :mod:`shardflow.pipelines.interface.family_views` (report curves, MLflow)."""
    return Deferred("pipelines.interface.family_views", name)


def _predictor(name: str) -> Deferred:
    """A prediction function of :mod:`shardflow.tasks.models` (run on the workers)."""
    return Deferred("tasks.models", name)


def _exporter(name: str) -> Deferred:
    """An ONNX export function of :mod:`shardflow.tasks.onnx_graph`."""
    return Deferred("tasks.onnx_graph", name)


@dataclass
class FamilyResult:
    """What a family's :meth:`ModelFamily.train` returns.

    Attributes
    ----------
    seconds : float
        Its training time (a combined family's includes its members').
    state : dict
        The family's own record of what it trained (models, histories, weights): what its
        :meth:`ModelFamily.save` writes.
    """

    seconds: float
    state: dict

    @classmethod
    def of(cls, state: dict) -> FamilyResult:
        """A result from a training function's record (which holds its ``seconds``)."""
        return cls(float(state["seconds"]), state)


class ModelFamily:
    """A model family: a spec and its code (see the module docstring).

    Subclasses set :attr:`spec` and the names of their code: ``training_module`` (a module
    of :mod:`shardflow.pipelines.training` with ``train_family``, ``save_family`` and
    ``load_family``), :attr:`predict` (a worker function ``predict(payload, x, nthread,
    cache)``), and the presentation adapters :attr:`curves` (``curves(run_dir, family)``),
    :attr:`tracking` (``tracking(files, family, sample)``) and :attr:`export`
    (``export(graph, features, payload, kind)``), each optional; a family whose spec is
    ``searchable`` sets :attr:`tuning`, the search of its hyperparameters (a class of
    :mod:`shardflow.pipelines.tuning.trials`, built as ``tuning(family, data, train, backend)``).
    """

    spec: FamilySpec
    training_module: str = ""
    predict = None
    #: ``explain(payload, x, nthread)``: exact per-row feature contributions (TreeSHAP), bias
    #: last (:mod:`shardflow.tasks.explain`); None: its importance is measured by permutation.
    explain = None
    validation_predict = None
    curves = None
    tracking = None
    export = None
    tuning = None

    def __init__(self, spec: FamilySpec | None = None):
        if spec is not None:
            self.spec = spec

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.name!r})"

    def __getattr__(self, attribute):
        # The spec's fields (name, label, kind, needs, ...) read as the family's own.
        if attribute == "spec":
            raise AttributeError(attribute)
        return getattr(self.spec, attribute)

    def _code(self, function: str) -> Deferred:
        return Deferred(f"pipelines.training.{self.training_module}", function)

    # ------------------------------------------------------------------------- the code

    def train(self, context) -> FamilyResult:
        """Train on ``context`` (:class:`~shardflow.pipelines.job.TrainContext`)."""
        return FamilyResult.of(self._code("train_family")(context, self))

    def save(self, stage_dir, result: FamilyResult) -> None:
        """Write the family's files into the (temporary) train stage directory."""
        self._code("save_family")(stage_dir, self, result.state)

    def load(self, files) -> dict:
        """The payload of :meth:`predictor`, read through the manifest's hashes (``files``:
        :class:`~shardflow.pipelines.records.artifacts.RunFiles`)."""
        return self._code("load_family")(files, self)

    def predictor(self):
        """The worker function that scores rows with the loaded payload."""
        return self.predict

    def validation_predictor(self):
        """What evaluation scores the validation rows with (an out-of-fold fit may differ)."""
        return self.validation_predict or self.predictor()

    # ------------------------------------------------------------------------- the kind's behaviour

    #: Its trained record lists each member model's metrics on its own rows.
    records_partition_metrics = False

    def trained_together(self, names) -> tuple:
        """The families of ``names`` that this family's :meth:`train` trains with it (one graph)."""
        return (self.name,)

    def holds_every_worker(self, context) -> bool:
        """Whether its training holds every worker at once (a collective, or a task sizing a
        whole process's thread pools), so it must not share the cluster with another family
        (:mod:`shardflow.pipelines.training.schedule`). A family of one's own is assumed to."""
        return True

    def plan_line(self, n_workers: int, one_worker: bool) -> str | None:
        """Where the family trains, as ``shardflow plan`` says it (None: nothing to add)."""
        return None


class GlobalFamily(ModelFamily):
    """One model over all partitions."""

    def plan_line(self, n_workers: int, one_worker: bool) -> str:
        if self.small_data_on_one_worker and one_worker:
            return f"{self.name} on one worker with its host's threads (small data: no allreduce)"
        return f"{self.name} across all workers"


class PerPartitionFamily(ModelFamily):
    """One model per group of partitions, each trained where its partitions are. Every
    configured family of this kind trains in one graph, so the workers stay busy."""

    records_partition_metrics = True

    def trained_together(self, names) -> tuple:
        return tuple(f.name for f in training_order(names) if isinstance(f, PerPartitionFamily))

    def holds_every_worker(self, context) -> bool:
        return False  # ordinary tasks, each with its worker's threads

    #: The global family that trains the same model on the same rows when there is one group.
    counterpart = ""
    #: The entries of the counterpart's record that make its model.
    model_keys = ()

    def same_training(self, context, group: list) -> bool:
        """Whether the model of ``group`` (every training and validation row) trains as its
        counterpart's does: the same options, and what else this kind's training depends on."""
        return False

    def reuses_counterpart(self, context) -> bool:
        """Whether its one model is its counterpart's, trained once: the training rows are one
        group of partitions that holds every validation row too (early stopping watches the
        same rows), and the counterpart is trained in this run, the same way."""
        from shardflow.pipelines.training.partition_graph import trained_groups

        tc, data = context.config, context.data
        groups = trained_groups(data, tc.partitions)
        return (
            self.counterpart in tc.models
            and len(groups) == 1
            and all(i in groups[0] for i, rows in enumerate(data.valid_rows) if rows)
            and self.same_training(context, groups[0])
        )

    def partition_job(self, context) -> tuple:
        """``(task, kwargs_of_group, extra)``: ``task(*shards, **kwargs_of_group(g))`` trains
        group ``g``'s model on a worker; ``extra`` joins the family's record."""
        return self._code(self.job_function)(context, self)

    def train(self, context) -> FamilyResult:
        from shardflow.pipelines.training.partition_graph import train_partition_models

        if self.counterpart in context.results and self.reuses_counterpart(context):
            return self._reuse(context)
        together = [
            FAMILIES[name]
            for name in self.trained_together(context.config.models)
            if name not in context.results and (name == self.name or not FAMILIES[name].reuses_counterpart(context))
        ]
        jobs = {family.name: family.partition_job(context) for family in together}
        trained = train_partition_models(
            context.runtime, context.data, context.config.partitions, {name: job[:2] for name, job in jobs.items()}
        )
        for name, out in trained.items():
            context.results[name] = FamilyResult.of({**out, **jobs[name][2]})
            logging.getLogger("shardflow.job").info("%s: %d models, %.1fs", name, len(out["members"]), out["seconds"])
        return context.results[self.name]

    def _reuse(self, context) -> FamilyResult:
        from shardflow.pipelines.training.partition_graph import one_model_of

        counterpart = FAMILIES[self.counterpart]
        state = context.results[counterpart.name].state
        out = one_model_of(
            context.runtime,
            context.data,
            context.config.partitions,
            state,
            predict=counterpart.predictor(),
            keys=self.model_keys,
        )
        if "spec" in state:
            out["spec"] = state["spec"]
        logging.getLogger("shardflow.job").info(
            "%s: the training rows are one group of partitions: its one model is %s's, trained once "
            "(the same rows and options)",
            self.name,
            counterpart.name,
        )
        context.results[self.name] = FamilyResult.of(out)
        return context.results[self.name]


class CombinedFamily(ModelFamily):
    """Built on the trained models of the families it ``needs``."""

    def holds_every_worker(self, context) -> bool:
        return False  # ordinary tasks over its members' predictions

    def load(self, files) -> dict:
        members = FAMILIES[self.needs[0]]
        return {**members.load(files), **super().load(files)}


class PerGroupFamily(ModelFamily):
    """One model per key group, the group's rows gathered from every partition."""

    def plan_line(self, n_workers: int, one_worker: bool) -> str:
        return f"{self.name}: each key group's rows gathered on one worker, groups balanced by rows"

    def holds_every_worker(self, context) -> bool:
        return False  # one ordinary task per key group

    def load(self, files) -> dict:
        fallback = FAMILIES[self.needs[0]]
        return {**super().load(files), "fallback": fallback.load(files)["model"]}


# ----------------------------------------------------------------------------- the built-in families


class LinearBaseline(GlobalFamily):
    spec = SPECS["linear"]
    training_module = "linear"
    predict = Deferred("tasks.linear", "predict_linear")
    curves = _view("linear_curves")
    export = _exporter("export_linear")

    def holds_every_worker(self, context) -> bool:
        return False  # ordinary tasks: per-partition sums, or one task for a small design


class GlobalXGBoost(GlobalFamily):
    spec = SPECS["xgboost"]
    training_module = "xgboost_global"
    predict = _predictor("predict_booster")
    explain = Deferred("tasks.explain", "contributions_of_booster")
    curves = _view("global_xgboost_curves")
    tracking = _view("global_xgboost_tracking")
    export = _exporter("export_booster")
    tuning = Deferred("pipelines.tuning.trials", "XGBoostSearch")


class XGBoostEnsemble(PerPartitionFamily):
    spec = SPECS["xgboost_partitions"]
    training_module = "partitions"
    job_function = "xgboost_job"
    counterpart = "xgboost"
    model_keys = ("model",)
    predict = _predictor("predict_booster_ensemble")
    explain = Deferred("tasks.explain", "contributions_of_ensemble")
    curves = _view("xgboost_ensemble_curves")
    export = _exporter("export_booster_ensemble")

    def same_training(self, context, group: list) -> bool:
        # Allreduce builds the trees one process would; callbacks (a tuner's) may stop it early.
        tc = context.config
        return tc.partitions.xgboost_rounds == tc.xgboost.num_boost_round and not context.xgboost_callbacks

    def save(self, stage_dir, result: FamilyResult) -> None:
        self._code("save_boosters")(stage_dir, self, result.state)

    def load(self, files) -> dict:
        return self._code("load_boosters")(files, self)


class StackedEnsemble(CombinedFamily):
    spec = SPECS["stacked"]
    training_module = "stacking"
    predict = _predictor("predict_stacked")
    validation_predict = _predictor("predict_stacked_out_of_fold")
    curves = _view("stacked_curves")
    export = _exporter("export_stacked")


class DataParallelMLP(GlobalFamily):
    spec = SPECS["mlp"]
    training_module = "mlp"
    predict = _predictor("predict_mlp")
    curves = _view("data_parallel_mlp_curves")
    tracking = _view("data_parallel_mlp_tracking")
    export = _exporter("export_mlp")
    tuning = Deferred("pipelines.tuning.trials", "MLPSearch")


class MLPEnsemble(PerPartitionFamily):
    spec = SPECS["mlp_partitions"]
    training_module = "partitions"
    job_function = "mlp_job"
    counterpart = "mlp"
    model_keys = ("params",)
    predict = _predictor("predict_mlp_ensemble")
    curves = _view("mlp_ensemble_curves")
    export = _exporter("export_mlp_ensemble")

    def same_training(self, context, group: list) -> bool:
        # The group's seed (partitions.mlp_job) must be the data-parallel MLP's, and its rows on
        # one worker: across workers the data-parallel MLP averages ranks' parameters.
        from shardflow.pipelines.training.partitions import group_seed

        tc = context.config
        return (
            tc.partitions.mlp_epochs == tc.mlp.epochs
            and group_seed(tc.seed, 0) == tc.seed
            and len({context.data.workers[i] for i in group}) == 1
        )

    def save(self, stage_dir, result: FamilyResult) -> None:
        self._code("save_mlps")(stage_dir, self, result.state)

    def load(self, files) -> dict:
        return self._code("load_mlps")(files, self)


class XGBoostGroups(PerGroupFamily):
    spec = SPECS["xgboost_groups"]
    training_module = "groups"
    predict = Deferred("tasks.groups", "predict_by_group")
    explain = Deferred("tasks.explain", "contributions_by_group")
    curves = _view("group_curves")
    export = _exporter("export_by_group")


#: Every family by name, in the order tables and reports list them (the linear baseline first).
FAMILIES: dict = {
    family.name: family
    for family in (
        LinearBaseline(),
        GlobalXGBoost(),
        XGBoostEnsemble(),
        StackedEnsemble(),
        DataParallelMLP(),
        MLPEnsemble(),
        XGBoostGroups(),
    )
}


def register_family(family: ModelFamily, *, replace: bool = False) -> ModelFamily:
    """Make ``family`` (an instance of a :class:`ModelFamily` subclass) a family like the
    built-in ones: ``train.models`` may name it, and it appears in the comparison, the
    report, ``predict`` and ``load_model``.

    From Python only (configs are untrusted and cannot bring code); a process that loads a
    run trained with it must register it too. See
    :mod:`shardflow.pipelines.families.custom` for an estimator's or a PyTorch module's.

    Raises
    ------
    ValueError
        Its name is taken (unless ``replace``), is not an identifier, or it needs a family
        that is not registered.
    """
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family takes a ModelFamily, got {type(family).__name__}")
    add_spec(family.spec, replace=replace)
    FAMILIES[family.name] = family
    return family


def training_order(names) -> list:
    """The families named, in the order they train."""
    order = list(FAMILIES)
    return sorted((FAMILIES[n] for n in names), key=lambda f: (f.stage, order.index(f.name)))


def partition_model_families() -> list:
    """Names of the families whose record holds each member model's own metrics."""
    return [name for name, family in FAMILIES.items() if family.records_partition_metrics]
