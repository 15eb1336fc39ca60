"""The ``train:`` section of a job config: which model families train, and how."""

from __future__ import annotations

import typing
from dataclasses import dataclass

from shardflow.core.constraints import (
    MAX_EMBEDDING_DIM,
    MAX_LAYER_WIDTH,
    MAX_PARTITIONS,
    MAX_ROUNDS,
    MAX_ROWS,
    MAX_SECONDS,
    MAX_SEED,
    Anything,
    Between,
    OneOf,
    Section,
    option,
)
from shardflow.pipelines.families.specs import default_families, family_names, searchable_families
from shardflow.pipelines.tuning.space import (
    MIN_LAYER_WIDTH,
    MLP_FIXED,
    MLP_SEARCHABLE,
    MLP_SPACE,
    merge_space,
)


@dataclass
class XGBoostConfig:
    """``train.xgboost:`` the global model, trained with allreduce across all workers.

    ``params`` are XGBoost parameters merged over shardflow's defaults (``hist``,
    ``max_depth`` 8, ``eta`` 0.1, the objective from ``target.task``, ``device`` cuda
    on GPU clusters). Checkpoints are taken by training time (``train.checkpoint_seconds``);
    a run that failed resumes from the last one (see ``train.max_attempts``). ``single_worker:
    auto`` trains on one worker with its host's threads, no allreduce, when the arrays fit in
    it (:func:`trains_on_one_worker`).
    """

    #: Keys that moved, with where they live now (a config using them gets that answer).
    MOVED_KEYS: typing.ClassVar[dict] = {
        "max_attempts": "train.max_attempts",
        "collective_timeout": "train.collective_timeout",
    }
    #: Keys that were replaced by an option of another meaning: the new key, and what it means.
    REPLACED_KEYS: typing.ClassVar[dict] = {
        "checkpoint_every": ("train.checkpoint_seconds", "seconds of training between checkpoints, not rounds")
    }

    num_boost_round: int = option(300, check=Between(1, MAX_ROUNDS))
    early_stopping_rounds: int | None = option(20, check=Between(1, MAX_ROUNDS))
    categorical: bool = option(True, check=OneOf((True, False)))
    single_worker: str = option("auto", check=OneOf(("auto", "true", "false")))
    params: dict = option(
        factory=dict, check=Anything("XGBoost's own parameters, checked by XGBoost", allows_non_finite=True)
    )  # missing: .nan


@dataclass
class PartitionModelsConfig:
    """``train.partitions:`` one model per group of partitions, trained where the data is; the XGBoost
    models take the global model's parameters and ``early_stopping_rounds`` (on their own validation rows).

    The MLPs take ``train.mlp``'s options; their length follows the same rule as the data-parallel
    MLP's (``train.mlp.max_steps`` on the group's own rows, early stopping on its own validation
    rows) unless ``mlp_epochs`` fixes it.
    """

    partitions_per_model: int = option(1, check=Between(1, MAX_PARTITIONS))
    xgboost_rounds: int = option(300, check=Between(1, MAX_ROUNDS))
    mlp_epochs: int | None = option(None, check=Between(1, MAX_ROUNDS))


@dataclass
class GroupModelsConfig:
    """``train.groups:`` one XGBoost model per key group (model ``xgboost_groups``).

    ``partition_by`` names categorical features; each distinct combination of their
    categories is a group (one per store, per region), trained on its own rows and
    predicting its own rows. A group with fewer than ``min_rows`` training rows, and rows
    whose key is missing or a rare category (``encode.min_frequency``), are predicted by
    the global XGBoost.
    """

    partition_by: list[str] = option(factory=list, check=Anything("categorical feature names, checked below"))
    min_rows: int = option(200, check=Between(1, MAX_ROWS))
    xgboost_rounds: int = option(300, check=Between(1, MAX_ROUNDS))


@dataclass
class MLPConfig:
    """``train.mlp:`` the tabular MLP, trained data-parallel across workers.

    Every ``sync_every`` local steps (null: once per epoch) the workers' parameters are
    averaged, weighted by their rows or sample weights (``sync: parameters``, local SGD); with ``sync:
    gradients`` every step's gradients are averaged instead (synchronous large-batch
    SGD: g = mean of the partitions' gradients). ``batch_size`` is per worker (null:
    the whole shard).

    Training length: ``epochs`` when set; by default (null) a budget of ``max_steps``
    optimizer steps, ``ceil(max_steps / steps per epoch)`` epochs but at least one (a table
    whose epoch alone exceeds the budget still sees every row once). The validation loss
    is evaluated every epoch, or every few epochs when an epoch is shorter than
    :data:`~shardflow.tasks.neural.MIN_STEPS_PER_EVALUATION` (50) steps; training stops after
    ``early_stopping_patience`` evaluations without improvement and keeps the best weights.
    """

    hidden: list[int] = option(factory=lambda: [128, 64], check=Between(1, MAX_LAYER_WIDTH))
    embedding_dim: int = option(16, check=Between(1, MAX_EMBEDDING_DIM))
    dropout: float = option(0.0, check=Between(0, 1, open_high=True))
    epochs: int | None = option(None, check=Between(1, MAX_ROUNDS))
    max_steps: int = option(1000, check=Between(1, MAX_ROUNDS))
    batch_size: int | None = option(1024, check=Between(1, MAX_ROWS))
    optimizer: str = option("adam", check=OneOf(("adam", "sgd")))
    lr: float = option(3e-3, check=Between(0, 10, open_low=True))
    momentum: float = option(0.0, check=Between(0, 1, open_high=True))
    weight_decay: float = option(0.0, check=Between(0, 10))
    lr_schedule: str = option("cosine", check=OneOf(("constant", "cosine", "step")))
    warmup: float = option(0.0, check=Between(0, 1, open_high=True))
    sync: str = option("parameters", check=OneOf(("parameters", "gradients")))
    sync_every: int | None = option(64, check=Between(1, MAX_ROWS))
    accumulation_steps: int = option(1, check=Between(1, MAX_ROWS))
    bf16: bool = option(False, check=OneOf((True, False)))
    early_stopping_patience: int | None = option(4, check=Between(1, MAX_ROUNDS))
    device: str = option("auto", check=OneOf(("auto", "cpu", "cuda")))


@dataclass
class RangeConfig:
    """One parameter's range in ``train.tune.space``: ``low``..``high`` (``log``: on a log
    scale; ``integer``: whole numbers), or ``choices``; an option left out keeps the default
    range's (see :data:`~shardflow.pipelines.tuning.space.XGBOOST_SPACE`)."""

    low: float | None = option(None, check=Between())
    high: float | None = option(None, check=Between())
    log: bool | None = option(None, check=OneOf((True, False)))
    integer: bool | None = option(None, check=OneOf((True, False)))
    choices: list | None = option(None, check=Anything("the values to choose from, checked by the space"))


@dataclass
class TuneConfig:
    """``train.tune:`` the search of the global XGBoost's and the MLP's parameters (``shardflow tune``).

    ``families`` names what is searched: ``xgboost`` (the global XGBoost, over ``space``) and
    ``mlp`` (``train.mlp``, which the data-parallel and the per-partition MLPs train with, over
    ``mlp_space``); by default both that ``train.models`` lists. Each has its own study of
    ``trials`` trials (the first trains the untuned parameters), proposed by Optuna's TPE
    sampler (``startup_trials`` random ones first) over the default ranges
    (:data:`~shardflow.pipelines.tuning.space.XGBOOST_SPACE`,
    :data:`~shardflow.pipelines.tuning.space.MLP_SPACE`), each overridable
    (``max_depth: {high: 6}``), removable (``alpha: null``), and other parameters added with a
    range (any of XGBoost's; :data:`~shardflow.pipelines.tuning.space.MLP_SEARCHABLE` of the
    MLP's). A trial whose validation metric falls behind stops early (``pruner``: ``median`` of
    the finished trials at the same step, ``halving``: successive halving, ``none``): an XGBoost
    trial after any round past ``warmup_rounds``, an MLP trial after any evaluation of its
    validation loss past ``warmup_evaluations``. ``concurrent: auto`` runs one trial per worker,
    side by side, when a trial's data fits one worker (:func:`trains_on_one_worker`), else one
    trial at a time across all workers.
    """

    trials: int = option(40, check=Between(1, 100_000))
    families: list[str] | None = option(None, check=OneOf(searchable_families))
    startup_trials: int = option(10, check=Between(1, 100_000))
    pruner: str = option("median", check=OneOf(("median", "halving", "none")))
    warmup_rounds: int = option(10, check=Between(0, MAX_ROUNDS))
    warmup_evaluations: int = option(2, check=Between(0, MAX_ROUNDS))
    concurrent: str = option("auto", check=OneOf(("auto", "true", "false")))
    space: dict[str, RangeConfig | None] = option(
        factory=dict, check=Anything("XGBoost parameters and their ranges, checked by merge_space")
    )
    mlp_space: dict[str, RangeConfig | None] = option(
        factory=dict, check=Anything("train.mlp options and their ranges, checked by merge_space")
    )

    def __post_init__(self):
        # A bad range fails as the config loads, naming its key.
        merge_space(self.space)
        merge_space(self.mlp_space, **mlp_space_rules())


def mlp_space_rules() -> dict:
    """How :func:`~shardflow.pipelines.tuning.space.merge_space` reads ``train.tune.mlp_space``:
    the MLP's default ranges, its searchable options and each option's own constraint."""
    from dataclasses import fields

    checks = {f.name: f.metadata["check"] for f in fields(MLPConfig) if f.name in MLP_SEARCHABLE}
    checks.update(width=Between(MIN_LAYER_WIDTH, MAX_LAYER_WIDTH), layers=Between(1, MAX_HIDDEN_LAYERS))
    return dict(defaults=MLP_SPACE, prefix="train.tune.mlp_space", fixed=MLP_FIXED, known=MLP_SEARCHABLE, checks=checks)


#: The most hidden layers ``train.tune.mlp_space.layers`` searches.
MAX_HIDDEN_LAYERS = 8


@dataclass
class TrainConfig:
    """``train:`` which model families to train, and how.

    The global models (XGBoost, the data-parallel MLP) train as one collective over all
    workers. If a worker is lost mid-training the collective fails (it cannot continue
    without a member; a silent member is given up after ``collective_timeout``
    seconds), and training continues from the last checkpoint on the workers present, up
    to ``max_attempts`` times in all.

    Checkpoints are taken by training time: after the round (XGBoost) or evaluation (MLP)
    that ends ``checkpoint_seconds`` or more after the last one, and when training ends; 0
    checkpoints after every round or evaluation. A model that trains for less than
    ``checkpoint_seconds`` writes only its final state (which a ``--resume`` reuses). One
    checkpoint costs milliseconds at 100k rows (a model of a few MB), so the default (60 s)
    costs well under 1% of training while a long model loses at most a minute of it.

    ``overlap``: families that submit ordinary tasks (the per-partition models, the linear
    baseline, the stacked combiner, per-group models) share the cluster at once instead of
    training one after another; a collective (the global XGBoost, the data-parallel MLP) always
    runs alone. ``auto`` overlaps on worker processes with two workers or more (``shardflow
    plan`` says which); every family's model is the same either way.
    """

    models: list[str] = option(factory=default_families, check=OneOf(family_names))
    seed: int = option(0, check=Between(0, MAX_SEED))
    max_attempts: int = option(3, check=Between(1, 100))
    collective_timeout: int | None = option(600, check=Between(1, MAX_SECONDS))
    checkpoint_seconds: float = option(60.0, check=Between(0, MAX_SECONDS))
    overlap: str = option("auto", check=OneOf(("auto", "true", "false")))
    xgboost: XGBoostConfig = option(factory=XGBoostConfig, check=Section())
    partitions: PartitionModelsConfig = option(factory=PartitionModelsConfig, check=Section())
    groups: GroupModelsConfig = option(factory=GroupModelsConfig, check=Section())
    mlp: MLPConfig = option(factory=MLPConfig, check=Section())
    tune: TuneConfig = option(factory=TuneConfig, check=Section())


def check_groups(train, features, name: str) -> None:
    """``train.groups`` (the options of the per-group family ``name``) against ``train.models``
    and the categorical features."""
    from shardflow.core.constraints import ConfigError

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


#: Training arrays up to this size train the global XGBoost on one worker (``auto``): below
#: it, an allreduce per tree level costs more than the second worker's rows save.
SINGLE_WORKER_BYTES = 256 * 2**20


def trains_on_one_worker(setting: str, array_bytes: float, memory_limits: list) -> bool:
    """Whether the global XGBoost trains on one worker with all its host's threads (no
    allreduce): ``auto`` when the training arrays (``array_bytes``) take at most
    :data:`SINGLE_WORKER_BYTES` and an eighth of the smallest worker's memory limit.

    Examples
    --------
    >>> trains_on_one_worker("auto", 8e6, [4e9, 4e9]), trains_on_one_worker("auto", 8e8, [4e9, 4e9])
    (True, False)
    """
    if setting in ("true", "false"):
        return setting == "true"
    limit = min(memory_limits) if memory_limits and all(memory_limits) else 8 * SINGLE_WORKER_BYTES
    return array_bytes <= min(SINGLE_WORKER_BYTES, limit / 8)
