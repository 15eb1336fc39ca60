"""Inspect the input on the client before any task runs: files, schema, pieces (joins: :mod:`.dimensions`).

Everything a user can get wrong about the input (a missing path, a truncated file, a
missing or mistyped column, an empty table, a bad join key) is found here from file
footers and headers, and reported as one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import dask
import dask.dataframe as dd
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.utils import parse_bytes

from shardflow.pipelines.config import Config
from shardflow.pipelines.dimensions import Dimension, dimension_frames, load_dimensions
from shardflow.tasks import backend
from shardflow.tasks.errors import InputError
from shardflow.tasks.expression_kinds import arrow_kind, check_kinds
from shardflow.tasks.expressions import ExpressionError, parse_expression
from shardflow.tasks.io import CSV_SUFFIXES, ROW_ERROR_COLUMN, Piece, csv_header, read_piece
from shardflow.tasks.labels import label_keys
from shardflow.tasks.prepare import prepare_partition
from shardflow.tasks.schema import TableSpec
from shardflow.tasks.storage import file_identity, file_size, list_input_files, open_file
from shardflow.tasks.targets import target_kind


@dataclass
class Source:
    """The input table as found on disk."""

    format: str
    files: list
    schema: dict  #: column name -> arrow type (CSV: string)
    pieces: list
    rows: int | None  #: known for Parquet from the footers; None for CSV
    fingerprint: str
    csv_delimiter: str = ","
    file_rows: dict = field(default_factory=dict)
    bytes: int = 0  #: uncompressed Parquet size (from the footers), or CSV file size
    piece_rows: list = field(default_factory=list)  #: Parquet: rows of each piece (from the footers)
    #: ``input.partitions`` when the data bounded it (:data:`MIN_PARTITION_ROWS`), else None.
    partitions_bounded: int | None = None


#: Inputs smaller than this are read as they are (one partition per file, or per
#: ``input.blocksize`` / ``input.max_partition_rows``): one worker reads them in well under
#: a second, and more partitions would cost more in scheduling than they save.
SPLIT_MIN_BYTES = 8 * 2**20
SPLIT_MIN_ROWS = 100_000
#: ``input.partitions: N`` is bounded by the data: a partition holds at least this many rows
#: (estimated from line lengths for CSV). Smaller ones cost more in scheduling (about 1 ms a
#: task, several tasks a partition) than their rows take to process: 20,000 partitions of
#: one row each made no progress in minutes.
MIN_PARTITION_ROWS = 2_000


def inspect_source(config: Config, threads: int | None = None) -> Source:
    """List and check the input files of ``config.input`` (footers and headers only).

    ``threads``: the cluster's worker threads. With ``input.partitions: auto`` an input worth
    splitting (``SPLIT_MIN_BYTES``, ``SPLIT_MIN_ROWS``) is read in at least that many
    partitions of about equal size (byte ranges of CSV files, groups of Parquet row groups);
    ``input.partitions: N`` asks for about N whatever the size.
    """
    raw_path = config.input.path
    path = config.resolve(raw_path)
    fmt = config.input.format
    options = config.storage_options
    try:
        files = list_input_files(path, options)
    except Exception as err:
        raise InputError(
            f"input.path {raw_path!r}: cannot list it ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); check the URL, storage_options and "
            "the credentials in the environment"
        ) from None
    if files is None:
        raise InputError(
            f"input.path {raw_path!r}: no such file or directory (resolved to {path}); check config key 'input.path'"
        )
    if any(ch in path for ch in "*?["):
        if not files:
            raise InputError(f"input.path {raw_path!r}: no file matches this pattern; check config key 'input.path'")
    elif len(files) != 1 or files[0] != path:  # a directory
        if fmt == "auto":
            parquet = [f for f in files if f.endswith((".parquet", ".parq", ".pq"))]
            files = parquet or [f for f in files if f.endswith(CSV_SUFFIXES)]
        if not files:
            raise InputError(f"input.path {raw_path!r}: the directory holds no Parquet or CSV files")
    if fmt == "auto":
        fmt = "csv" if all(f.endswith(CSV_SUFFIXES) for f in files) else "parquet"
    wanted = config.input.partitions
    target = int(wanted) if wanted != "auto" else threads
    forced = wanted != "auto"
    if fmt == "parquet":
        source = _inspect_parquet(files, config.input.max_partition_rows, target=target, forced=forced, options=options)
    else:
        source = _inspect_csv(
            files,
            config.input.csv_delimiter,
            parse_bytes(config.input.blocksize),
            target=target,
            forced=forced,
            options=options,
        )
    return source


def _inspect_parquet(
    files, max_rows: int, *, target: int | None = None, forced: bool = False, options: dict | None = None
) -> Source:
    schema: dict = {}
    first_seen: dict = {}
    pieces, piece_rows, rows, file_rows, size, metas = [], [], 0, {}, 0, []
    for f in files:
        try:
            with open_file(f, "rb", options) as handle:
                meta = pq.ParquetFile(handle).metadata
            file_schema = meta.schema.to_arrow_schema()
        except Exception as err:
            raise InputError(
                f"{f}: not a readable Parquet file ({type(err).__name__}: {str(err).splitlines()[0]}); "
                "it may be truncated or still being written: repair or remove it"
            ) from None
        duplicated = sorted({n for n in file_schema.names if file_schema.names.count(n) > 1})
        if duplicated:
            raise InputError(
                f"{f}: column name(s) {', '.join(map(repr, duplicated))} appear more than once; "
                "rewrite the file with one name per column"
            )
        for name, typ in zip(file_schema.names, file_schema.types):
            if name in schema and not _compatible(schema[name], typ):
                raise InputError(
                    f"{f}: column {name!r} has type {typ} but {first_seen[name]} has {schema[name]}; "
                    "rewrite the file with one type for the column"
                )
            if name not in schema:
                schema[name], first_seen[name] = typ, f
            elif pa.types.is_floating(typ) and not pa.types.is_floating(schema[name]):
                schema[name] = typ  # int in one file, float in another: read as float
        file_rows[f] = meta.num_rows
        rows += meta.num_rows
        size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        metas.append((f, meta))
    bounded = None
    if forced and target > max(1, rows // MIN_PARTITION_ROWS):
        bounded, target = target, max(1, rows // MIN_PARTITION_ROWS)
    if target and (forced or rows >= SPLIT_MIN_ROWS):
        max_rows = min(max_rows, max(1, -(-rows // target)))
    for f, meta in metas:
        group, group_rows = [], 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            # Close a group once it holds its share: whichever of this group and the next is
            # nearer to ``max_rows`` rows (row groups are the unit; they are not cut).
            if group and group_rows + n > max_rows and abs(group_rows - max_rows) <= abs(group_rows + n - max_rows):
                pieces.append(Piece(f, "parquet", tuple(group), storage_options=options))
                piece_rows.append(group_rows)
                group, group_rows = [], 0
            group.append(rg)
            group_rows += n
        if group or meta.num_row_groups == 0:
            whole = meta.num_row_groups == len(group)
            pieces.append(Piece(f, "parquet", None if whole else tuple(group), storage_options=options))
            piece_rows.append(group_rows)
    return Source(
        "parquet",
        files,
        schema,
        pieces,
        rows,
        file_fingerprint(files, options),
        file_rows=file_rows,
        bytes=size,
        piece_rows=piece_rows,
        partitions_bounded=bounded,
    )


def _kind(typ: pa.DataType) -> str:
    """Types that read into the same pandas column kind are compatible across files."""
    if pa.types.is_dictionary(typ):
        return _kind(typ.value_type)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_decimal(typ):
        return "number"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ):
        return "string"
    if pa.types.is_timestamp(typ) or pa.types.is_date(typ):
        return "datetime"
    return str(typ)


def _compatible(a: pa.DataType, b: pa.DataType) -> bool:
    return _kind(a) == _kind(b)


def _inspect_csv(
    files,
    delimiter: str,
    blocksize: int,
    *,
    target: int | None = None,
    forced: bool = False,
    options: dict | None = None,
) -> Source:
    schema: dict = {}
    pieces = []
    sizes = {f: file_size(f, options) for f in files}
    size = sum(sizes.values())
    configured = blocksize
    bounded = None
    if forced and files:
        fewest_bytes = MIN_PARTITION_ROWS * _csv_bytes_per_row(files[0], options)
        if target > max(1, size // fewest_bytes):
            bounded, target = target, max(1, int(size // fewest_bytes))
    if target and (forced or size >= SPLIT_MIN_BYTES):
        blocksize = min(blocksize, max(1, -(-size // target)))
    for f in files:
        try:
            header = csv_header(f, delimiter, options)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{f}: cannot read the CSV header ({type(err).__name__}); check the file") from None
        if schema and set(header) != set(schema):
            missing = sorted(set(schema) - set(header)) or sorted(set(header) - set(schema))
            raise InputError(
                f"{f}: its columns differ from {files[0]} (e.g. {missing[0]!r}); give all CSV files one header"
            )
        schema = {name: pa.string() for name in header}
        length = sizes[f]
        if f.endswith(".gz") or length <= blocksize or (length <= configured and _has_quotes(f, options)):
            pieces.append(Piece(f, "csv", storage_options=options))
        else:
            count = -(-length // blocksize)
            bounds = [round(i * length / count) for i in range(count + 1)]  # equal ranges
            pieces.extend(
                Piece(f, "csv", start=a, end=b, storage_options=options) for a, b in zip(bounds[:-1], bounds[1:])
            )
    return Source(
        "csv",
        files,
        schema,
        pieces,
        None,
        file_fingerprint(files, options),
        csv_delimiter=delimiter,
        bytes=size,
        partitions_bounded=bounded,
    )


def _csv_bytes_per_row(path: str, options: dict | None = None) -> float:
    """The mean line length of a CSV file's first megabyte (an estimate of its rows' size)."""
    with open_file(path, "rb", options) as handle:
        head = handle.read(2**20)
    return max(1.0, len(head) / max(1, head.count(b"\n")))


def _has_quotes(path: str, options: dict | None = None) -> bool:
    """Whether a CSV file holds a quote character. Byte ranges are cut at line ends, so a
    quoted value spanning lines would break: a file under ``input.blocksize`` is split for
    the cluster's sake only when it has no quotes (over it, as configured)."""
    with open_file(path, "rb", options) as handle:
        while chunk := handle.read(16 * 2**20):
            if b'"' in chunk:
                return True
    return False


def file_fingerprint(files, options: dict | None = None) -> str:
    """Hash of every input file's path, size and modification time (and ETag in an object store)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{file_identity(f, options)}\n".encode())
    return digest.hexdigest()[:16]


def table_spec(config: Config, source: Source, dims: list[Dimension], for_prediction: bool = False) -> TableSpec:
    """The :class:`TableSpec` for ``config``, checked against the columns really present.

    ``for_prediction`` drops the target: new data to score need not have it.
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
    where = {
        "features.numeric": f.numeric,
        "features.categorical": f.categorical,
        "features.datetime": f.datetime,
        "output.keep_columns": config.output.keep_columns,
        "split.key": config.split.key or [],
        "clean.valid_ranges": list(config.clean.valid_ranges),
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
    kinds = {col: arrow_kind(arrow_type) for col, arrow_type in available.items()}
    kinds.update(dict(spec.column_types))
    kinds.update({col: "number" for col, _, _ in spec.valid_ranges if kinds.get(col) != "datetime"})
    kinds.update(dict.fromkeys(spec.numeric, "number"))
    kinds.update(dict.fromkeys(spec.datetime, "datetime"))
    expressions = [(f"features.derived.{name}", expression) for name, expression in spec.derived]
    if spec.target_expression is not None:
        expressions.append(("target.expression", spec.target_expression))
    for key, expression in expressions:
        try:
            check_kinds(expression, kinds, key)
        except ExpressionError as err:
            raise InputError(str(err)) from None


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
