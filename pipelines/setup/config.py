"""Job configuration: YAML in, validated dataclasses out, every error naming its key.

A config file is a mapping of sections (``input``, ``joins``, ``target``, ``features``,
``clean``, ``encode``, ``split``, ``output``, ``cluster``); ``data/trips.yaml`` is a
commented example. Command-line overrides use dotted keys: ``--set
features.numeric=[a,b]`` (values are parsed as YAML).
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from shardflow.cluster.config import ALLOW_REMOTE_CLUSTER_ENV, ClusterConfig, check_cluster_reach
from shardflow.core.constraints import (
    MAX_PARTITIONS,
    MAX_ROWS,
    MAX_SEED,
    Anything,
    Between,
    ByteSize,
    ConfigError,
    Names,
    OneOf,
    Section,
    Text,
    apply_overrides,
    build_section,
    field_problems,
    option,
    parse_yaml,
)
from shardflow.core.storage import location, url_scheme
from shardflow.pipelines.families.specs import SPECS
from shardflow.pipelines.setup.paths import check_config_locations, resolve_path
from shardflow.pipelines.setup.tracking_config import TrackingConfig
from shardflow.pipelines.setup.train_config import TrainConfig, check_groups
from shardflow.tasks.expressions import ExpressionError, parse_expression
from shardflow.tasks.labels import MAX_CLASSES
from shardflow.tasks.schema import COLUMN_KINDS, DATETIME_PARTS
from shardflow.tasks.targets import TARGET_TRANSFORMS, TASK_TYPES, target_kind


@dataclass
class InputConfig:
    """``input:`` the fact table.

    ``path`` is a Parquet file or directory, or a CSV file or glob (``raw/*.csv``);
    ``format`` ``auto`` decides by the file names. ``partitions: auto`` reads an input
    worth splitting (8 MB of CSV, 100,000 Parquet rows) in at least as many partitions as
    the cluster has worker threads, of about equal size (byte ranges of a CSV file — one
    under ``blocksize`` only if it has no quotes —, groups of Parquet row groups);
    ``partitions: N`` asks for about N (at most 100,000, and bounded by the data: a partition
    holds at least 2,000 rows, which ``shardflow plan`` reports). ``blocksize`` bounds a CSV partition;
    ``max_partition_rows`` bounds a Parquet partition (a file with many row groups is
    split between them). ``types`` gives the kind (``number``,
    ``datetime``, ``string``) of columns that are not features but are used by
    expressions; CSV has no types, so there such columns default to ``number``.
    When the job trains per-partition models (their reductions assume every partition is
    a sample of the same table), the ETL redistributes the rows by a seeded hash (Dask's
    shuffle) unless ``exchangeable: true`` says the input's partitions already are (a file
    sorted by date, price or id is not). ``persist`` (``auto``, ``true``, ``false``) keeps the prepared partitions in
    cluster memory between the ETL's passes; ``auto`` does so when they take less
    than a quarter of the workers' memory, and otherwise re-reads the input per pass.
    """

    path: str = option("", check=Text("a Parquet file or directory, or a CSV file or glob", nonempty=True))
    format: str = option("auto", check=OneOf(("auto", "parquet", "csv")))
    csv_delimiter: str = option(",", check=Text("one character"))
    partitions: str = option("auto", check=Anything("auto, or a number of partitions (at least 1)"))
    blocksize: str = option("128MB", check=ByteSize())
    max_partition_rows: int = option(2_000_000, check=Between(1, MAX_ROWS))
    types: dict[str, str] = option(factory=dict, check=OneOf(COLUMN_KINDS))
    persist: str = option("auto", check=OneOf(("auto", "true", "false")))
    exchangeable: bool = option(False, check=OneOf((True, False)))


@dataclass
class JoinConfig:
    """``joins: - ...`` a small dimension table joined (left) on key columns.

    Columns of the dimension table whose names clash with the fact table's get the
    suffix ``_<name>`` (``name`` defaults to the file's stem), so the result never
    depends on column order. Keys are compared as numbers when either side holds
    numbers (``7``, ``7.0`` and the CSV text ``"7"`` match). The share of input rows
    that found a dimension row is reported; under ``min_match_rate`` it is a warning.
    """

    path: str = option("", check=Text("a CSV or Parquet file", nonempty=True))
    on: list[str] = option(factory=list, check=Names())
    right_on: list[str] | None = option(None, check=Names())
    columns: list[str] | None = option(None, check=Names())
    name: str | None = option(None, check=Text("the suffix of clashing column names"))
    min_match_rate: float = option(0.9, check=Between(0, 1))


@dataclass
class TargetConfig:
    """``target:`` what to predict; ``expression`` derives it (``arr_delay > 15``).

    A ``classification`` target's labels may be numbers, booleans or strings; two
    classes make a binary classifier, three or more a multi-class one. ``classes``
    fixes the labels and their order (else: numbers ascending, false before true, text
    sorted; for two classes the second is the positive one); rows with other labels are
    quarantined. ``transform: log1p`` trains regression models on ``log(1 + y)`` (for
    skewed positive targets) and maps predictions back. ``weight`` names a column of
    sample weights (0, or a float32 number ≥ 1.2e-38; other rows are quarantined) used by
    every model's loss, the ensembles' averaging and the metrics; the training and the
    validation rows must not all weigh 0. A regression target past float32's range
    (``inf``, ``1e400``) quarantines its row.
    """

    column: str = option("", check=Text("a column name", nonempty=True))
    task: str = option(TASK_TYPES[0], check=OneOf(TASK_TYPES))
    expression: str | None = option(None, check=Text("an expression (checked by the whitelist)"))
    classes: list | None = option(None, check=Anything("the class labels, in order (classification)"))
    transform: str = option("none", check=OneOf(tuple(TARGET_TRANSFORMS)))
    weight: str | None = option(None, check=Text("a column of sample weights", nonempty=True))


@dataclass
class FeaturesConfig:
    """``features:`` model inputs by kind; ``derived`` maps new names to expressions."""

    numeric: list[str] = option(factory=list, check=Names())
    categorical: list[str] = option(factory=list, check=Names())
    datetime: list[str] = option(factory=list, check=Names())
    datetime_parts: list[str] = option(factory=lambda: ["hour", "dayofweek", "month"], check=OneOf(DATETIME_PARTS))
    derived: dict[str, str] = option(factory=dict, check=Names())


@dataclass
class CleanConfig:
    """``clean:`` ``valid_ranges`` (outside: row quarantined) and outlier clipping."""

    valid_ranges: dict[str, list] = option(
        factory=dict, check=Anything("[min, max] per column, checked with the columns")
    )
    clip_sigma: float | None = option(5.0, check=Between(0, 1_000, open_low=True))  # null: no clipping


@dataclass
class EncodeConfig:
    """``encode:`` categorical vocabularies fitted across all partitions."""

    min_frequency: int = option(10, check=Between(1, MAX_ROWS))
    max_categories: int = option(10_000, check=Between(1, 100_000_000))  # codes are int32


@dataclass
class SplitConfig:
    """``split:`` hash-based train/validation split; ``key`` defaults to every input column."""

    key: list[str] | None = option(None, check=Names())
    validation_fraction: float = option(0.2, check=Between(0, 1, open_low=True, open_high=True))
    seed: int = option(0, check=Between(0, MAX_SEED))


@dataclass
class OutputConfig:
    """``output:`` where runs go and what the feature table carries along.

    ``runs_dir``, like every path in a config, is relative to the config file's directory.
    """

    runs_dir: str = option("shardflow-work/runs", check=Text("a directory", nonempty=True))
    keep_columns: list[str] = option(factory=list, check=Names())
    zarr_chunk_rows: int | None = option(None, check=Between(1, MAX_ROWS))


@dataclass
class Config:
    """A whole job. Build it with :func:`load_config`; ``base_dir`` anchors relative paths."""

    input: InputConfig = option(factory=InputConfig, check=Section())
    joins: list[JoinConfig] = option(factory=list, check=Section())
    target: TargetConfig = option(factory=TargetConfig, check=Section())
    features: FeaturesConfig = option(factory=FeaturesConfig, check=Section())
    clean: CleanConfig = option(factory=CleanConfig, check=Section())
    encode: EncodeConfig = option(factory=EncodeConfig, check=Section())
    split: SplitConfig = option(factory=SplitConfig, check=Section())
    output: OutputConfig = option(factory=OutputConfig, check=Section())
    train: TrainConfig = option(factory=TrainConfig, check=Section())
    cluster: ClusterConfig = option(factory=ClusterConfig, check=Section())
    #: Options of the object store's file system (``endpoint_url``, ``anon``, ...); credentials come
    #: from the environment, never from here (refused: a config is copied into every run).
    storage_options: dict = option(factory=dict, check=Anything("options of the object store (no credentials)"))
    tracking: TrackingConfig = option(factory=TrackingConfig, check=Section())
    base_dir: str = field(default=".", metadata={"internal": True})

    def resolve(self, path: str) -> str:
        """``path`` made absolute against the config's ``base_dir`` (see :func:`.paths.resolve_path`)."""
        return resolve_path(path, self.base_dir)

    @property
    def runs_dir(self):
        """``output.runs_dir`` as an absolute path (relative ones against the config's directory),
        or a :class:`~shardflow.core.storage.StorePath` with ``storage_options``."""
        return location(self.resolve(self.output.runs_dir), self.storage_options).resolve()

    def resolved(self) -> Config:
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
    """The embedded default job (``shardflow.data``'s ``trips.yaml``)."""
    import shardflow.data

    return Path(shardflow.data.__file__).resolve().parent / "trips.yaml"


def load_config(path=None, overrides=(), base_dir=None, *, allow_remote_cluster: bool = False) -> Config:
    """Read, override and validate a job config.

    Parameters
    ----------
    path : str or Path, optional
        YAML file. ``None`` loads the default job (``data/trips.yaml``).
    overrides : iterable of str
        ``"dotted.key=value"`` strings; values are parsed as YAML.
    base_dir : str, optional
        Directory relative paths are resolved against (default: the file's directory).
    allow_remote_cluster : bool
        Let the file's ``cluster:`` section name a scheduler on another host or bind the
        cluster or its dashboard to a non-loopback interface. A config file is data that
        may come from anyone: without this consent (or ``SHARDFLOW_ALLOW_REMOTE_CLUSTER=1``)
        where the cluster runs and listens comes from the person running the command
        (``overrides``, the command line), never from the file.

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
    try:
        path = location(path) if path is not None else default_config_path()
    except ValueError as err:
        raise ConfigError(str(err)) from None
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        raw = parse_yaml(text, source=path) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}".replace("\n", " ")) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config is a mapping of sections, got {type(raw).__name__}")
    from_file = raw.get("cluster") if isinstance(raw.get("cluster"), dict) else {}
    raw = apply_overrides(raw, overrides)
    if not (allow_remote_cluster or os.environ.get(ALLOW_REMOTE_CLUSTER_ENV) == "1"):
        overridden = {item.partition("=")[0].strip() for item in overrides}
        check_cluster_reach(
            path,
            {
                key: value
                for key, value in from_file.items()
                if f"cluster.{key}" not in overridden and "cluster" not in overridden
            },
        )
    try:
        config = build_section(Config, raw, "")
        config.base_dir = (
            str(base_dir if url_scheme(base_dir) else Path(base_dir)) if base_dir else str(path.resolve().parent)
        )
        validate(config)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return config


def validate(config: Config) -> None:
    """Every field's declared constraint (all violations at once), then the checks that
    need more than one key; raises :class:`ConfigError`."""
    problems = field_problems(config)
    if problems:
        raise ConfigError("; ".join(problems))
    for key, expression in [
        ("target.expression", config.target.expression),
        *((f"features.derived.{k}", v) for k, v in config.features.derived.items()),
    ]:
        if expression is None:
            continue
        try:
            parse_expression(expression, key)
        except ExpressionError as err:
            raise ConfigError(str(err)) from None
    f = config.features
    names = f.numeric + f.categorical + list(f.derived) + [f"{c}_{p}" for c in f.datetime for p in f.datetime_parts]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"config key 'features': column {name!r} is listed more than once")
    if config.target.column in names:
        raise ConfigError(
            f"config key 'target.column': {config.target.column!r} is also a feature; remove it from features"
        )
    if not names:
        raise ConfigError(
            "config key 'features': no feature columns configured (numeric, categorical, datetime or derived)"
        )
    _validate_target(config.target, names, config.train.xgboost.params)
    check_config_locations(config)
    partitions = config.input.partitions
    if isinstance(partitions, str) and partitions.strip().isdigit():
        partitions = config.input.partitions = int(partitions)
    elif isinstance(partitions, str) and _whole_number(partitions) is not None:  # 1e3, 1000.0
        partitions = config.input.partitions = _whole_number(partitions)
    if partitions != "auto" and not (isinstance(partitions, int) and partitions >= 1):
        raise ConfigError(
            f"config key 'input.partitions': expected auto or a whole number of at least 1, got {partitions!r}"
        )
    if partitions != "auto" and partitions > MAX_PARTITIONS:
        raise ConfigError(
            f"config key 'input.partitions': {partitions:,} partitions, at most {MAX_PARTITIONS:,} "
            "(a task costs about 1 ms to schedule); write auto, or fewer"
        )
    for col, bounds in config.clean.valid_ranges.items():
        if not isinstance(bounds, list) or len(bounds) != 2:
            raise ConfigError(
                f"config key 'clean.valid_ranges.{col}': expected [min, max] (null for open), got {bounds!r}"
            )
    for i, join in enumerate(config.joins):
        if not join.on:
            raise ConfigError(f"config key 'joins[{i}].on': the key column(s) are required")
        if join.right_on is not None and len(join.right_on) != len(join.on):
            raise ConfigError(f"config key 'joins[{i}].right_on': needs as many columns as 'on' ({len(join.on)})")
    t = config.train
    for model in t.models:
        for needed in SPECS[model].needs:
            if needed not in t.models:
                raise ConfigError(
                    f"config key 'train.models': {model!r} is built on the {needed!r} models; add {needed!r}"
                )
    for spec in SPECS.values():  # train.groups holds the options of the per-group family
        if spec.kind == "per_group":
            check_groups(t, config.features, spec.name)
    if any(not isinstance(width, int) or width < 1 for width in t.mlp.hidden):
        raise ConfigError(
            f"config key 'train.mlp.hidden': layer widths must be whole numbers of at least 1, got {t.mlp.hidden}"
        )
    try:
        config.cluster.validate()
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _whole_number(text: str) -> int | None:
    """``text`` as a whole number when it spells one (``1e3``, ``1000.0``), else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _validate_target(target: TargetConfig, features: list, xgboost_params: dict) -> None:
    """The ``target`` keys that depend on each other and on the features."""
    classification = target_kind(target.task).is_classification
    if target.transform != "none" and classification:
        raise ConfigError(
            f"config key 'target.transform': {target.transform!r} transforms a regression target; "
            "remove it, or set target.task: regression"
        )
    if target.classes is not None:
        if not classification:
            raise ConfigError(
                "config key 'target.classes': only a classification target has classes; remove it, "
                "or set target.task: classification"
            )
        if (
            not isinstance(target.classes, list)
            or len(target.classes) < 2
            or any(isinstance(c, (list, dict)) or c is None or str(c).strip() == "" for c in target.classes)
        ):
            raise ConfigError(
                f"config key 'target.classes': expected a list of at least two labels, got {target.classes!r}"
            )
        if len(target.classes) > MAX_CLASSES:
            raise ConfigError(f"config key 'target.classes': {len(target.classes)} classes, at most {MAX_CLASSES}")
    alpha = xgboost_params.get("quantile_alpha")
    if isinstance(alpha, list) and len(alpha) != 1:
        raise ConfigError(
            "config key 'train.xgboost.params.quantile_alpha': one quantile per job (several would "
            "give each row several predictions); run one job per quantile"
        )
    if target.weight is not None and (target.weight in features or target.weight == target.column):
        raise ConfigError(
            f"config key 'target.weight': {target.weight!r} is also the target or a feature; "
            "give a column of sample weights of its own"
        )
