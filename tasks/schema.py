"""What one partition's tasks need to know about the table, as plain picklable data.

The pipeline builds a :class:`TableSpec` from the validated YAML config once, on the
client; tasks receive it as an argument and never read configuration themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shardflow.tasks.expressions import Expression

DATETIME_PARTS = ("hour", "dayofweek", "month", "day", "dayofyear", "minute", "year")
COLUMN_KINDS = ("number", "datetime", "string")
REASON_COLUMN = "_reason"
SPLIT_COLUMN = "_is_validation"
#: The sample weight of each prepared row (when the job has ``target.weight``).
WEIGHT_COLUMN = "_weight"


@dataclass(frozen=True)
class JoinSpec:
    """A left join with a small dimension table, broadcast to every partition.

    ``rename`` maps a dimension column to its name in the joined table (name clashes
    with the fact table get the join's suffix); only ``columns`` are brought in.
    """

    name: str
    on: tuple[str, ...]
    columns: tuple[str, ...]
    rename: dict = field(default_factory=dict)
    #: How each key is compared: ``"number"`` (both sides as float64, so ``7``, ``7.0``
    #: and the CSV text ``"7"`` match), ``"integer"`` (exactly, as Int64), ``"datetime"``
    #: (as UTC instants: ISO 8601 text and datetimes alike) or ``"string"``.
    key_kinds: tuple[str, ...] = ()

    def joined_names(self) -> list[str]:
        return [self.rename.get(c, c) for c in self.columns]


@dataclass(frozen=True)
class TableSpec:
    """The schema of the input table and of the features the ETL derives from it."""

    target: str
    task: str
    numeric: tuple[str, ...] = ()
    categorical: tuple[str, ...] = ()
    datetime: tuple[str, ...] = ()
    datetime_parts: tuple[str, ...] = ("hour", "dayofweek", "month")
    #: ``(name, expression)`` pairs, parsed and whitelisted on the client.
    derived: tuple[tuple[str, Expression], ...] = ()
    target_expression: Expression | None = None
    valid_ranges: tuple[tuple[str, float | None, float | None], ...] = ()
    joins: tuple[JoinSpec, ...] = ()
    split_key: tuple[str, ...] = ()
    validation_fraction: float = 0.2
    split_seed: int = 0
    keep_columns: tuple[str, ...] = ()
    #: Other columns to type before use: ``(column, "number" | "datetime" | "string")``.
    column_types: tuple[tuple[str, str], ...] = ()
    #: False at prediction time: a missing target column is allowed and quarantines nothing.
    target_required: bool = True
    #: Classification: the configured classes as label keys (empty: fitted from the data).
    classes: tuple[str, ...] = ()
    #: Regression: the target transform's name (``none``, ``log1p``).
    target_transform: str = "none"
    #: The column of sample weights, if any (never at prediction time).
    weight: str | None = None

    @property
    def datetime_features(self) -> list[str]:
        return [f"{col}_{part}" for col in self.datetime for part in self.datetime_parts]

    @property
    def numeric_features(self) -> list[str]:
        """Numeric model inputs: raw numerics, derived expressions, datetime parts."""
        return list(self.numeric) + [name for name, _ in self.derived] + self.datetime_features

    @property
    def feature_names(self) -> list[str]:
        """Every model input column, numeric first, then the encoded categoricals."""
        return self.numeric_features + list(self.categorical)

    @property
    def joined_columns(self) -> list[str]:
        return [c for join in self.joins for c in join.joined_names()]

    @property
    def target_inputs(self) -> list[str]:
        if not self.target_required:
            return []
        if self.target_expression is None:
            return [self.target]
        return list(self.target_expression.names)

    @property
    def derived_inputs(self) -> list[str]:
        return [n for _, expr in self.derived for n in expr.names]

    def source_columns(self) -> list[str]:
        """Columns to read from the fact table (everything else is never loaded)."""
        wanted = [
            *self.keep_columns,
            *self.numeric,
            *self.categorical,
            *self.datetime,
            *self.split_key,
            *(k for join in self.joins for k in join.on),
            *self.target_inputs,
            *([self.weight] if self.weight else []),
            *self.derived_inputs,
            *(col for col, _, _ in self.valid_ranges),
        ]
        produced = set(self.joined_columns) | {name for name, _ in self.derived}
        seen: dict[str, None] = {}
        for col in wanted:
            if col not in produced:
                seen.setdefault(col)
        return list(seen)
