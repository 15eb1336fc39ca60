"""The model families: the one place that knows each family's name, label and code.

A family is a name and a label plus five functions: how it trains (on the driver,
scheduling work on the cluster), how it writes its files into the train stage, how it
loads them back, how it predicts (a function of :mod:`shardflow.tasks.models`, run on the
workers) and, optionally, how it draws its training curves in the report. Everything
else — the config's choices, the CLI, training, saving, evaluation, prediction, the
report — iterates over :data:`FAMILIES`. A new family is one entry here and a module
of its own; its report curves and MLflow logging are adapters in
:mod:`shardflow.pipelines.family_views`, outside the training code.

Training order follows ``stage``: the linear baseline and the global XGBoost first, then
every per-partition family in one graph (their models train side by side), then the
families built on others (``needs``), then the data-parallel MLP. Tables and reports list
the families in the registry's order, the linear baseline first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module


@dataclass(frozen=True)
class Deferred:
    """Function ``name`` of module ``shardflow.<module>``, imported on its first call.

    The registry is imported by the config and the command line, which must not import
    pandas, XGBoost or torch to print their help; a family's code is imported when the
    family is used. Picklable by reference (it travels to workers as two strings).

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


def _lazy(module: str, name: str) -> Deferred:
    """A training function of ``pipelines/training/<module>.py``."""
    return Deferred(f"pipelines.training.{module}", name)


def _view(name: str) -> Deferred:
    """A presentation adapter of :mod:`shardflow.pipelines.family_views` (report curves, MLflow)."""
    return Deferred("pipelines.family_views", name)


def _predictor(name: str) -> Deferred:
    """A prediction function of :mod:`shardflow.tasks.models` (run on the workers)."""
    return Deferred("tasks.models", name)


def _exporter(name: str) -> Deferred:
    """An ONNX export function of :mod:`shardflow.tasks.onnx_graph`."""
    return Deferred("tasks.onnx_graph", name)


@dataclass(frozen=True)
class Family:
    """One model family; see the module docstring.

    Attributes
    ----------
    name, label : str
        The config's and files' name (``train.models``), and what tables and plots say.
    kind : str
        ``global`` (one model over all partitions), ``per_partition`` (one model per
        group of partitions, trained together in one graph), ``combined`` (built on
        the models of the families in ``needs``) or ``per_group`` (one model per key
        group, its rows gathered from every partition).
    default : bool
        Trained when the config lists no ``train.models`` (a family that needs options
        of its own is not).
    small_data_on_one_worker : bool
        A global family that trains on one worker, without collectives, when the data is
        small (``train.xgboost.single_worker``).
    stage : int
        Training order (see the module docstring).
    train : callable
        ``train(context, family) -> result`` for ``global`` and ``combined`` families;
        ``per_partition`` families give ``partition_job(context, family) -> (task,
        kwargs_of_group)`` instead.
    save, load : callable
        ``save(stage_dir, family, result)`` writes the family's files;
        ``load(files, family) -> payload`` reads them back through the manifest's hashes.
    predict : callable
        ``predict(payload, x, nthread, cache) -> ndarray`` on a worker.
    validation_predict : callable, optional
        What evaluation uses instead of ``predict`` (the stacked combiner's out-of-fold fit).
    curves : callable, optional
        ``curves(run_dir, family) -> [(figure, caption)]`` for the report
        (:mod:`shardflow.pipelines.family_views`).
    export : callable
        ``export(graph, features, payload, kind) -> scores``: the family's predictions as ONNX
        operators (:mod:`shardflow.tasks.onnx_graph`), for ``shardflow export``.
    averages_worker_updates : bool
        A global family trained data-parallel by averaging what each worker learned on its
        own partitions (local SGD's parameters, or each step's gradients): like a
        per-partition family, it assumes the partitions are samples of one table.
    quantizable : bool
        Its models are matrix products whose weights ``shardflow export --quantize int8``
        can quantize (the MLP families; trees have nothing to quantize).
    libraries : tuple of str
        Modules its training and prediction load on the workers (imported there as the
        cluster starts, overlapped with the ETL: :class:`~shardflow.cluster.plugins.PreloadPlugin`).
    tracking : callable, optional
        ``tracking(files, family, sample) -> {"params", "curves", "log_model"}`` for MLflow
        (:mod:`shardflow.pipelines.tracking`; the adapters are in
        :mod:`shardflow.pipelines.family_views`): the effective hyperparameters, the metrics
        per round or epoch, and ``log_model(run_id, model_id)`` that logs the model in its
        MLflow flavour to that run and logged model (``sample``: rows of the feature matrix,
        for the signature).
    """

    name: str
    label: str
    kind: str
    stage: int
    save: Callable
    load: Callable
    predict: Callable
    train: Callable | None = None
    partition_job: Callable | None = None
    validation_predict: Callable | None = None
    curves: Callable | None = None
    needs: tuple = field(default_factory=tuple)
    export: Callable | None = None
    default: bool = True
    small_data_on_one_worker: bool = False
    averages_worker_updates: bool = False
    quantizable: bool = False
    libraries: tuple = ("xgboost",)
    tracking: Callable | None = None

    @property
    def assumes_exchangeable_partitions(self) -> bool:
        """Whether the family's models are built on partitions as samples of one table (so
        the ETL shuffles the rows for it): per-partition models, a combiner of them, and
        data-parallel SGD over the workers' own partitions (a file sorted by its target
        gives each worker one slice of it: the averaged model is worse)."""
        return self.kind in ("per_partition", "combined") or self.averages_worker_updates

    def file(self, suffix: str = "json") -> str:
        """A file of the family in the train stage; ``json`` (its metadata) marks it as trained."""
        return f"{self.name}.{suffix}"

    def member_file(self, index: int, suffix: str) -> str:
        """The file of member model ``index`` of a per-partition family."""
        return f"{self.name}/model-{index:05d}.{suffix}"


def _members_payload(files, family) -> dict:
    """The payload of the family whose models ``family`` is built on."""
    members = FAMILIES[family.needs[0]]
    return members.load(files, members)


FAMILIES = {
    f.name: f
    for f in (
        Family(
            "linear",
            "linear baseline",
            "global",
            0,
            train=_lazy("linear", "train_family"),
            save=_lazy("linear", "save_family"),
            load=_lazy("linear", "load_family"),
            predict=Deferred("tasks.linear", "predict_linear"),
            curves=_view("linear_curves"),
            export=_exporter("export_linear"),
            libraries=("shardflow.tasks.linear",),
        ),
        Family(
            "xgboost",
            "global XGBoost",
            "global",
            0,
            train=_lazy("xgboost_global", "train_family"),
            save=_lazy("xgboost_global", "save_family"),
            load=_lazy("xgboost_global", "load_family"),
            predict=_predictor("predict_booster"),
            curves=_view("global_xgboost_curves"),
            export=_exporter("export_booster"),
            small_data_on_one_worker=True,
            tracking=_view("global_xgboost_tracking"),
        ),
        Family(
            "xgboost_partitions",
            "per-partition XGBoost ensemble",
            "per_partition",
            1,
            partition_job=_lazy("partitions", "xgboost_job"),
            save=_lazy("partitions", "save_boosters"),
            load=_lazy("partitions", "load_boosters"),
            predict=_predictor("predict_booster_ensemble"),
            curves=_view("xgboost_ensemble_curves"),
            export=_exporter("export_booster_ensemble"),
        ),
        Family(
            "stacked",
            "stacked ensemble",
            "combined",
            2,
            needs=("xgboost_partitions",),
            train=_lazy("stacking", "train_family"),
            save=_lazy("stacking", "save_family"),
            load=lambda files, family: {
                **_members_payload(files, family),
                **_lazy("stacking", "load_coefficients")(files, family),
            },
            predict=_predictor("predict_stacked"),
            validation_predict=_predictor("predict_stacked_out_of_fold"),
            curves=_view("stacked_curves"),
            export=_exporter("export_stacked"),
        ),
        Family(
            "mlp",
            "data-parallel MLP",
            "global",
            3,
            train=_lazy("mlp", "train_family"),
            save=_lazy("mlp", "save_family"),
            load=_lazy("mlp", "load_family"),
            predict=_predictor("predict_mlp"),
            curves=_view("data_parallel_mlp_curves"),
            export=_exporter("export_mlp"),
            tracking=_view("data_parallel_mlp_tracking"),
            averages_worker_updates=True,
            quantizable=True,
            libraries=("shardflow.tasks.neural",),
        ),
        Family(
            "mlp_partitions",
            "per-partition MLP ensemble",
            "per_partition",
            1,
            partition_job=_lazy("partitions", "mlp_job"),
            save=_lazy("partitions", "save_mlps"),
            load=_lazy("partitions", "load_mlps"),
            predict=_predictor("predict_mlp_ensemble"),
            curves=_view("mlp_ensemble_curves"),
            export=_exporter("export_mlp_ensemble"),
            quantizable=True,
            libraries=("shardflow.tasks.neural",),
        ),
        Family(
            "xgboost_groups",
            "per-group XGBoost (train.groups)",
            "per_group",
            2,
            needs=("xgboost",),
            train=_lazy("groups", "train_family"),
            save=_lazy("groups", "save_family"),
            load=lambda files, family: {
                **_lazy("groups", "load_family")(files, family),
                "fallback": _members_payload(files, family)["model"],
            },
            predict=Deferred("tasks.groups", "predict_by_group"),
            curves=_view("group_curves"),
            export=_exporter("export_by_group"),
            default=False,
        ),
    )
}

#: Every family's name, in the order tables and reports list them.
FAMILY_NAMES = tuple(FAMILIES)
#: The families a config without ``train.models`` trains.
DEFAULT_FAMILIES = tuple(name for name, family in FAMILIES.items() if family.default)


def label(name: str) -> str:
    """The family's label (the name itself for a name no family has)."""
    family = FAMILIES.get(name)
    return family.label if family else name


def libraries(names) -> list:
    """The modules the families named load on the workers.

    Examples
    --------
    >>> libraries(["stacked", "mlp"])
    ['shardflow.tasks.neural', 'xgboost']
    """
    return sorted({module for name in names for module in FAMILIES[name].libraries})


def training_order(names) -> list:
    """The families named, in the order they train."""
    return sorted((FAMILIES[n] for n in names), key=lambda f: (f.stage, FAMILY_NAMES.index(f.name)))


def validate_groups(train, features) -> None:
    """``train.groups`` against ``train.models`` and the categorical features."""
    from shardflow.pipelines.typed_yaml import ConfigError

    name = next(f.name for f in FAMILIES.values() if f.kind == "per_group")
    by = train.groups.partition_by
    if not isinstance(by, list) or not all(isinstance(c, str) for c in by):
        raise ConfigError(f"config key 'train.groups.partition_by': expected a list of column names, got {by!r}")
    wanted = name in train.models
    if wanted and not by:
        raise ConfigError(
            f"config key 'train.models': {name!r} needs train.groups.partition_by (the "
            "categorical column(s) whose values define the groups)"
        )
    if by and not wanted:
        raise ConfigError(
            f"config key 'train.groups.partition_by' is set but {name!r} is not in "
            "train.models: add it, or remove partition_by"
        )
    for col in by:
        if col not in features.categorical:
            raise ConfigError(
                f"config key 'train.groups.partition_by': {col!r} is not a categorical feature; "
                "list it under features.categorical"
            )
    if len(set(by)) != len(by):
        raise ConfigError(f"config key 'train.groups.partition_by': a column is named twice in {by}")
