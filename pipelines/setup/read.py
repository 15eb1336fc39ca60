"""Reading the inspected input: which columns, typed how, and the lazy table.

:func:`table_spec` turns the config into the :class:`~shardflow.tasks.schema.TableSpec` the
partitions are prepared with, checked on the client against the columns the input (see
:func:`~shardflow.pipelines.setup.source.inspect_source`) and the joined tables really hold: a
missing or mistyped column, or arithmetic on text, is one line naming the config key.
:func:`read_source` is the raw table as a lazy Dask DataFrame (one partition per piece);
:func:`raw_meta` and :func:`prepared_meta` are the meta of its partitions before and after
:func:`~shardflow.tasks.prepare.prepare_partition`.
"""

from __future__ import annotations

from dataclasses import replace

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa

from shardflow.core import backend
from shardflow.core.errors import InputError
from shardflow.pipelines.setup.config import Config
from shardflow.pipelines.setup.dimensions import Dimension, dimension_frames, load_dimensions
from shardflow.pipelines.setup.source import Source, inspect_source
from shardflow.tasks.expression_kinds import arrow_kind, check_kinds
from shardflow.tasks.expressions import ExpressionError, parse_expression
from shardflow.tasks.io import ROW_ERROR_COLUMN, read_piece
from shardflow.tasks.labels import label_keys
from shardflow.tasks.prepare import prepare_partition
from shardflow.tasks.schema import TableSpec
from shardflow.tasks.targets import target_kind


def table_spec(config: Config, source: Source, dims: list[Dimension], for_prediction: bool = False) -> TableSpec:
    """The :class:`TableSpec` for ``config``, checked against the columns really present.

    ``for_prediction`` drops what only training reads: new data to score needs the
    features (and the join keys) only. Its target, weight and split key are not read; the
    ``output.keep_columns`` and ``clean.valid_ranges`` columns it lacks are left out (a
    range still applies to a column that is there).
    """
    f = config.features
    spec = TableSpec(
        target_required=not for_prediction,
        target=config.target.column,
        task=config.target.task,
        numeric=tuple(f.numeric),
        categorical=tuple(f.categorical),
        datetime=tuple(f.datetime),
        datetime_parts=tuple(f.datetime_parts),
        derived=tuple((name, parse_expression(text, f"features.derived.{name}")) for name, text in f.derived.items()),
        target_expression=None
        if config.target.expression is None
        else parse_expression(config.target.expression, "target.expression"),
        valid_ranges=tuple((c, b[0], b[1]) for c, b in config.clean.valid_ranges.items()),
        joins=tuple(d.join for d in dims),
        split_key=tuple(config.split.key or ()),
        validation_fraction=config.split.validation_fraction,
        split_seed=config.split.seed,
        keep_columns=tuple(config.output.keep_columns),
        classes=tuple(str(k) for k in label_keys(pd.Series(config.target.classes, dtype=object)))
        if config.target.classes
        else (),
        target_transform=config.target.transform,
        weight=None if for_prediction else config.target.weight,
    )
    keys = list(spec.classes)
    if len(set(keys)) < len(keys):
        raise InputError(
            f"config key 'target.classes': {config.target.classes} names a label twice (as labels compare: {keys})"
        )
    available = dict(source.schema)
    for d in dims:
        dim_schema = pa.Schema.from_pandas(d.frame, preserve_index=False)
        for col in d.join.columns:
            available[d.join.rename.get(col, col)] = dim_schema.field(col).type
    if for_prediction:
        present = set(available) | {name for name, _ in spec.derived}
        spec = replace(
            spec,
            split_key=(),
            keep_columns=tuple(c for c in spec.keep_columns if c in present),
            valid_ranges=tuple(r for r in spec.valid_ranges if r[0] in present),
        )
    where = {
        "features.numeric": f.numeric,
        "features.categorical": f.categorical,
        "features.datetime": f.datetime,
        "output.keep_columns": spec.keep_columns,
        "split.key": spec.split_key,
        "clean.valid_ranges": [c for c, _, _ in spec.valid_ranges],
        "target.expression" if config.target.expression else "target.column": spec.target_inputs,
        "features.derived": spec.derived_inputs,
        "target.weight": [spec.weight] if spec.weight else [],
    }
    first = source.files[0]
    for key, columns in where.items():
        for col in columns:
            if col not in available and col not in dict(spec.derived):
                raise InputError(
                    f"column {col!r} (config key '{key}') is not in the input ({first}) or a joined table; "
                    f"available: {', '.join(sorted(available))}"
                )
    if source.format == "parquet":  # CSV has no types: its values are parsed, and quarantined if malformed
        number = (
            "a number",
            "list it under features.categorical or convert it",
            (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal),
        )
        when = (
            "a timestamp, date or string",
            "convert it",
            (pa.types.is_timestamp, pa.types.is_date, pa.types.is_string, pa.types.is_large_string),
        )
        label = (
            "a number, boolean or string",
            "convert it",
            (*number[2], pa.types.is_string, pa.types.is_large_string, pa.types.is_dictionary),
        )
        checks = [("features.numeric", f.numeric, number), ("features.datetime", f.datetime, when)]
        if not (config.target.expression or for_prediction):
            labels = target_kind(config.target.task).is_classification
            regression_target = (
                "a number",
                "it holds labels: set target.task: classification (or convert it)",
                number[2],
            )
            checks.append(("target.column", [config.target.column], label if labels else regression_target))
        if spec.weight:
            checks.append(("target.weight", [spec.weight], number))
        for key, columns, (expected, fix, kinds) in checks:
            for col in columns:
                if not any(kind(available[col]) for kind in kinds):
                    raise InputError(
                        f"column {col!r} (config key '{key}') has type {available[col]} in {first}, "
                        f"expected {expected}; {fix}"
                    )
    spec = replace(spec, column_types=_column_types(config, source, spec))
    check_expression_kinds(spec, available)
    if not spec.split_key:
        # Default split key: every column the job reads, so identical rows agree.
        # (not the weight: weighing rows must not move them between train and validation)
        spec = replace(spec, split_key=tuple(sorted(c for c in spec.source_columns() if c != spec.weight)))
    return spec


def _column_types(config: Config, source: Source, spec: TableSpec) -> tuple:
    """Kinds of the columns that are not features but feed expressions, ranges or the target."""
    typed = set(spec.numeric) | set(spec.categorical) | set(spec.datetime)
    if target_kind(spec.task).is_classification and spec.target_expression is None:
        typed.add(spec.target)  # labels: read as written (numbers, booleans or strings)
    used = [
        *spec.target_inputs,
        *([spec.weight] if spec.weight else []),
        *spec.derived_inputs,
        *(c for c, _, _ in spec.valid_ranges),
    ]
    kinds = {}
    for col in used:
        if col in typed or col in kinds:
            continue
        if col in config.input.types:
            kinds[col] = config.input.types[col]
        elif source.format == "csv" and col in source.schema:
            kinds[col] = "number"
    for col, kind in config.input.types.items():
        if col not in typed:
            kinds.setdefault(col, kind)
    return tuple(kinds.items())


def check_expression_kinds(spec: TableSpec, available: dict) -> None:
    """Refuse arithmetic on text in ``features.derived`` and ``target.expression``, on the
    client and before any partition is read.

    Each column's kind is the one it has when :func:`prepare_partition` evaluates the
    expressions: numeric features, ``valid_ranges`` columns and ``input.types`` as typed
    there, anything else (categoricals, joined columns) as read (``available``: column ->
    arrow type; a CSV's columns are text). The empty-frame check of :func:`prepared_meta`
    cannot see this: ``'ab' * 3`` is valid on an empty column and fills a worker's memory on
    a full one (``cat * (id + id + ...)``).

    Raises
    ------
    InputError
        One line naming the config key, the operator and the text column (an error of the
        input's columns, as a missing or mistyped one is).
    """
    kinds = expression_column_kinds(spec, available)
    expressions = [(f"features.derived.{name}", expression) for name, expression in spec.derived]
    if spec.target_expression is not None:
        expressions.append(("target.expression", spec.target_expression))
    for key, expression in expressions:
        try:
            check_kinds(expression, kinds, key)
        except ExpressionError as err:
            raise InputError(str(err)) from None


def expression_column_kinds(spec: TableSpec, available: dict) -> dict:
    """Column -> the kind (see :data:`~shardflow.tasks.expression_kinds.VALUE_KINDS`) its
    values have when :func:`prepare_partition` evaluates the expressions: as typed there, or
    as read (``available``: column -> Arrow type)."""
    kinds = {col: arrow_kind(arrow_type) for col, arrow_type in available.items()}
    kinds.update(dict(spec.column_types))
    kinds.update({col: "number" for col, _, _ in spec.valid_ranges if kinds.get(col) != "datetime"})
    kinds.update(dict.fromkeys(spec.numeric, "number"))
    kinds.update(dict.fromkeys(spec.datetime, "datetime"))
    return kinds


def raw_meta(source: Source, columns, backend_name: str):
    """An empty frame with the columns and dtypes one piece reads as."""
    if source.format == "csv":
        frame = pd.DataFrame({c: pd.Series([], dtype="str") for c in [*columns, ROW_ERROR_COLUMN]})
        if backend_name == "pandas":
            return frame
        return backend.from_arrow(pa.Table.from_pandas(frame, preserve_index=False), backend_name)
    fields = [pa.field(c, source.schema[c]) for c in columns]
    return backend.from_arrow(pa.schema(fields).empty_table(), backend_name)


def read_source(
    config: Config, backend_name: str = "pandas", source: Source | None = None, spec: TableSpec | None = None
) -> dd.DataFrame:
    """The raw input as a lazy Dask DataFrame: one partition per piece, configured columns only.

    Examples
    --------
    >>> raw = read_source(load_config("job.yaml"))  # doctest: +SKIP
    >>> raw.npartitions  # doctest: +SKIP
    """
    source = source or inspect_source(config)
    if spec is None:
        spec = table_spec(config, source, load_dimensions(config, source))
    columns = spec.source_columns()
    # The meta already has the dtypes each piece reads as; no object→string pass.
    with dask.config.set({"dataframe.convert-string": False}):
        return dd.from_map(
            read_piece,
            source.pieces,
            args=[columns, backend_name, source.csv_delimiter],
            meta=raw_meta(source, columns, backend_name),
            label="etl-read",
            enforce_metadata=False,
        )


def prepared_meta(source: Source, spec: TableSpec, dims, backend_name: str):
    """Run :func:`prepare_partition` on an empty frame: the output's meta, and an early
    check that every expression in the config evaluates."""
    empty = raw_meta(source, spec.source_columns(), backend_name)
    try:
        return prepare_partition(empty, spec, dimension_frames(dims, backend_name))
    except Exception as err:
        raise InputError(
            f"the configured features cannot be computed on the input's columns "
            f"({type(err).__name__}: {err}); check features.derived and target.expression"
        ) from None
