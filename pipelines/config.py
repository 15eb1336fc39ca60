"""Job configuration: YAML in, validated dataclasses out, every error naming its key.

A config file is a mapping of sections (``input``, ``joins``, ``target``, ``features``,
``clean``, ``encode``, ``split``, ``output``, ``cluster``); ``data/trips.yaml`` is a
commented example. Command-line overrides use dotted keys: ``--set
features.numeric=[a,b]`` (values are parsed as YAML).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shardflow.cluster.config import ClusterConfig
from shardflow.pipelines.families import FAMILIES, FAMILY_NAMES
from shardflow.pipelines.typed_yaml import ConfigError, apply_overrides, build_section, check_byte_size, parse_yaml
from shardflow.tasks.expressions import ExpressionError, parse_expression
from shardflow.tasks.schema import COLUMN_KINDS, DATETIME_PARTS, TASK_TYPES


@dataclass
class InputConfig:
    """``input:`` the fact table.

    ``path`` is a Parquet file or directory, or a CSV file or glob (``raw/*.csv``);
    ``format`` ``auto`` decides by the file names. ``blocksize`` bounds a CSV
    partition; ``max_partition_rows`` bounds a Parquet partition (a file with many
    row groups is split between them). ``types`` gives the kind (``number``,
    ``datetime``, ``string``) of columns that are not features but are used by
    expressions; CSV has no types, so there such columns default to ``number``.
    ``persist`` (``auto``, ``true``, ``false``) keeps the prepared partitions in
    cluster memory between the ETL's passes; ``auto`` does so when they take less
    than a quarter of the workers' memory, and otherwise re-reads the input per pass.
    """

    path: str = ""
    format: str = "auto"
    csv_delimiter: str = ","
    blocksize: str = "128MB"
    max_partition_rows: int = 2_000_000
    types: dict[str, str] = field(default_factory=dict)
    persist: str = "auto"


@dataclass
class JoinConfig:
    """``joins: - ...`` a small dimension table joined (left) on key columns.

    Columns of the dimension table whose names clash with the fact table's get the
    suffix ``_<name>`` (``name`` defaults to the file's stem), so the result never
    depends on column order. Keys are compared as numbers when either side holds
    numbers (``7``, ``7.0`` and the CSV text ``"7"`` match). The share of input rows
    that found a dimension row is reported; under ``min_match_rate`` it is a warning.
    """

    path: str = ""
    on: list[str] = field(default_factory=list)
    right_on: list[str] | None = None
    columns: list[str] | None = None
    name: str | None = None
    min_match_rate: float = 0.9


@dataclass
class TargetConfig:
    """``target:`` what to predict; ``expression`` derives it (``arr_delay > 15``)."""

    column: str = ""
    task: str = "classification"
    expression: str | None = None


@dataclass
class FeaturesConfig:
    """``features:`` model inputs by kind; ``derived`` maps new names to expressions."""

    numeric: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    datetime: list[str] = field(default_factory=list)
    datetime_parts: list[str] = field(default_factory=lambda: ["hour", "dayofweek", "month"])
    derived: dict[str, str] = field(default_factory=dict)


@dataclass
class CleanConfig:
    """``clean:`` ``valid_ranges`` (outside: row quarantined) and outlier clipping."""

    valid_ranges: dict[str, list] = field(default_factory=dict)
    clip_sigma: float | None = 5.0


@dataclass
class EncodeConfig:
    """``encode:`` categorical vocabularies fitted across all partitions."""

    min_frequency: int = 10
    max_categories: int = 10_000


@dataclass
class SplitConfig:
    """``split:`` hash-based train/validation split; ``key`` defaults to every input column."""

    key: list[str] | None = None
    validation_fraction: float = 0.2
    seed: int = 0


@dataclass
class OutputConfig:
    """``output:`` where runs go and what the feature table carries along.

    ``runs_dir``, like every path in a config, is relative to the config file's directory.
    """

    runs_dir: str = "shardflow-work/runs"
    keep_columns: list[str] = field(default_factory=list)
    zarr_chunk_rows: int | None = None




@dataclass
class XGBoostConfig:
    """``train.xgboost:`` the global model, trained with allreduce across all workers.

    ``params`` are XGBoost parameters merged over shardflow's defaults (``hist``,
    ``max_depth`` 8, ``eta`` 0.1, the objective from ``target.task``, ``device`` cuda
    on GPU clusters). A checkpoint is written every ``checkpoint_every`` rounds; a run
    that failed resumes from it. If a worker is lost mid-training (the collective
    fails: it cannot continue without a member, and gives up after
    ``collective_timeout`` seconds of silence), training continues from the last
    checkpoint on the workers present, up to ``max_attempts`` times in all.
    """

    num_boost_round: int = 300
    early_stopping_rounds: int | None = 20
    checkpoint_every: int = 25
    categorical: bool = True
    max_attempts: int = 3
    collective_timeout: int | None = 600
    params: dict = field(default_factory=dict)


@dataclass
class PartitionModelsConfig:
    """``train.partitions:`` one model per group of partitions, trained where the data is."""

    partitions_per_model: int = 1
    xgboost_rounds: int = 100
    mlp_epochs: int = 3


@dataclass
class MLPConfig:
    """``train.mlp:`` the tabular MLP, trained data-parallel across workers.

    Every ``sync_every`` local steps (null: once per epoch) the workers' parameters are
    averaged, weighted by their rows (``sync: parameters``, local SGD); with ``sync:
    gradients`` every step's gradients are averaged instead (synchronous large-batch
    SGD: g = mean of the partitions' gradients). ``batch_size`` is per worker (null:
    the whole shard).
    """

    hidden: list[int] = field(default_factory=lambda: [128, 64])
    embedding_dim: int = 16
    dropout: float = 0.0
    epochs: int = 6
    batch_size: int | None = 1024
    optimizer: str = "adam"
    lr: float = 3e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "cosine"
    warmup: float = 0.0
    sync: str = "parameters"
    sync_every: int | None = 64
    accumulation_steps: int = 1
    bf16: bool = False
    early_stopping_patience: int | None = 2
    device: str = "auto"


@dataclass
class TrainConfig:
    """``train:`` which model families to train, and how."""

    models: list[str] = field(default_factory=lambda: list(FAMILY_NAMES))
    seed: int = 0
    xgboost: XGBoostConfig = field(default_factory=XGBoostConfig)
    partitions: PartitionModelsConfig = field(default_factory=PartitionModelsConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)


@dataclass
class Config:
    """A whole job. Build it with :func:`load_config`; ``base_dir`` anchors relative paths."""

    input: InputConfig = field(default_factory=InputConfig)
    joins: list[JoinConfig] = field(default_factory=list)
    target: TargetConfig = field(default_factory=TargetConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve(self, path: str) -> str:
        """``path`` made absolute against the config's ``base_dir`` (globs kept)."""
        p = Path(path).expanduser()
        return str(p if p.is_absolute() else Path(self.base_dir) / p)

    @property
    def runs_dir(self) -> Path:
        """``output.runs_dir`` as an absolute path (relative ones against the config's directory)."""
        return Path(self.resolve(self.output.runs_dir)).resolve()

    def resolved(self) -> "Config":
        """A copy whose paths are absolute (as saved in a run directory)."""
        data = copy.deepcopy(self)
        data.output.runs_dir = str(self.runs_dir)
        data.input.path = self.resolve(self.input.path)
        for join in data.joins:
            join.path = self.resolve(join.path)
        return data

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def default_config_path() -> Path:
    return Path(__file__).resolve().parent.parent / "data" / "trips.yaml"


def load_config(path=None, overrides=(), base_dir=None) -> Config:
    """Read, override and validate a job config.

    Parameters
    ----------
    path : str or Path, optional
        YAML file. ``None`` loads the default job (``data/trips.yaml``).
    overrides : iterable of str
        ``"dotted.key=value"`` strings; values are parsed as YAML.
    base_dir : str, optional
        Directory relative paths are resolved against (default: the file's directory).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        With the file and the offending key in the message.

    Examples
    --------
    >>> cfg = load_config(overrides=["input.path=/data/trips", "cluster.n_workers=2"])
    >>> cfg.cluster.n_workers
    2
    """
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        raw = parse_yaml(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        config = build_section(Config, raw, "")
        config.base_dir = str(Path(base_dir) if base_dir else path.resolve().parent)
        validate(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def validate(config: Config) -> None:
    """Checks that need more than one key; raises :class:`ConfigError`."""
    if not config.input.path:
        raise ConfigError("config key 'input.path' is required: a Parquet directory or a CSV glob")
    for col, kind in config.input.types.items():
        if kind not in COLUMN_KINDS:
            raise ConfigError(f"config key 'input.types.{col}': {kind!r} is not one of {', '.join(COLUMN_KINDS)}")
    if config.input.persist not in ("auto", "true", "false"):
        raise ConfigError(f"config key 'input.persist': {config.input.persist!r} is not one of auto, true, false")
    check_byte_size("input.blocksize", config.input.blocksize)
    if config.input.max_partition_rows < 1:
        raise ConfigError(f"config key 'input.max_partition_rows': must be at least 1, got "
                          f"{config.input.max_partition_rows}")
    if config.input.format not in ("auto", "parquet", "csv"):
        raise ConfigError(f"config key 'input.format': {config.input.format!r} is not one of auto, parquet, csv")
    if not config.target.column:
        raise ConfigError("config key 'target.column' is required: the column to predict")
    if config.target.task not in TASK_TYPES:
        raise ConfigError(f"config key 'target.task': {config.target.task!r} is not one of {', '.join(TASK_TYPES)}")
    for key, expression in [("target.expression", config.target.expression), *(
            (f"features.derived.{k}", v) for k, v in config.features.derived.items())]:
        if expression is None:
            continue
        try:
            parse_expression(expression, key)
        except ExpressionError as err:
            raise ConfigError(str(err)) from None
    for part in config.features.datetime_parts:
        if part not in DATETIME_PARTS:
            raise ConfigError(
                f"config key 'features.datetime_parts': {part!r} is not one of {', '.join(DATETIME_PARTS)}")
    f = config.features
    names = f.numeric + f.categorical + list(f.derived) + [
        f"{c}_{p}" for c in f.datetime for p in f.datetime_parts]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"config key 'features': column {name!r} is listed more than once")
    if config.target.column in names:
        raise ConfigError(f"config key 'target.column': {config.target.column!r} is also a feature; remove it from features")
    if not names:
        raise ConfigError("config key 'features': no feature columns configured (numeric, categorical, datetime or derived)")
    for col, bounds in config.clean.valid_ranges.items():
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ConfigError(f"config key 'clean.valid_ranges.{col}': expected [min, max] (null for open), got {bounds!r}")
    if config.clean.clip_sigma is not None and config.clean.clip_sigma <= 0:
        raise ConfigError(f"config key 'clean.clip_sigma': must be positive or null, got {config.clean.clip_sigma}")
    if not 0.0 < config.split.validation_fraction < 1.0:
        raise ConfigError(
            f"config key 'split.validation_fraction': must be between 0 and 1 (exclusive), got "
            f"{config.split.validation_fraction}; the validation rows drive early stopping, model selection "
            "and every reported metric")
    if config.encode.min_frequency < 1 or config.encode.max_categories < 1:
        raise ConfigError("config key 'encode': min_frequency and max_categories must be at least 1")
    for i, join in enumerate(config.joins):
        if not join.path or not join.on:
            raise ConfigError(f"config key 'joins[{i}]': path and on are required")
        if not 0.0 <= join.min_match_rate <= 1.0:
            raise ConfigError(f"config key 'joins[{i}].min_match_rate': must be between 0 and 1, got "
                              f"{join.min_match_rate}")
        if join.right_on is not None and len(join.right_on) != len(join.on):
            raise ConfigError(f"config key 'joins[{i}].right_on': needs as many columns as 'on' ({len(join.on)})")
    t = config.train
    for model in t.models:
        if model not in FAMILIES:
            raise ConfigError(f"config key 'train.models': {model!r} is not one of {', '.join(FAMILY_NAMES)}")
        for needed in FAMILIES[model].needs:
            if needed not in t.models:
                raise ConfigError(f"config key 'train.models': {model!r} is built on the {needed!r} models; "
                                  f"add {needed!r}")
    if t.mlp.sync not in ("parameters", "gradients"):
        raise ConfigError(f"config key 'train.mlp.sync': {t.mlp.sync!r} is not one of parameters, gradients")
    if t.mlp.optimizer not in ("adam", "sgd"):
        raise ConfigError(f"config key 'train.mlp.optimizer': {t.mlp.optimizer!r} is not one of adam, sgd")
    if t.mlp.lr_schedule not in ("constant", "cosine", "step"):
        raise ConfigError(f"config key 'train.mlp.lr_schedule': {t.mlp.lr_schedule!r} is not one of "
                          "constant, cosine, step")
    if t.mlp.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"config key 'train.mlp.device': {t.mlp.device!r} is not one of auto, cpu, cuda")
    for key, value in (("train.mlp.epochs", t.mlp.epochs), ("train.mlp.accumulation_steps", t.mlp.accumulation_steps),
                       ("train.xgboost.num_boost_round", t.xgboost.num_boost_round),
                       ("train.xgboost.checkpoint_every", t.xgboost.checkpoint_every),
                       ("train.partitions.partitions_per_model", t.partitions.partitions_per_model)):
        if value < 1:
            raise ConfigError(f"config key '{key}': must be at least 1, got {value}")
    if t.mlp.sync_every is not None and t.mlp.sync_every < 1:
        raise ConfigError(f"config key 'train.mlp.sync_every': must be at least 1 or null, got {t.mlp.sync_every}")
    try:
        config.cluster.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    c = config.cluster
    check_byte_size("cluster.memory_limit", c.memory_limit, fraction=True, auto=True)
    check_byte_size("cluster.rmm_pool_size", c.rmm_pool_size, fraction=True)
    check_byte_size("cluster.device_memory_limit", c.device_memory_limit, fraction=True, auto=True)
