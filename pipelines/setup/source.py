"""Inspect the input on the client before any task runs: files, schema, pieces (joins: :mod:`.dimensions`).

Everything a user can get wrong about the input (a missing path, a truncated file, a
missing or mistyped column, an empty table, a bad join key) is found from file footers
and headers, here and in :mod:`.read` (the columns the job reads, and reading them), and
reported as one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from dask.utils import parse_bytes

from shardflow.core.errors import InputError
from shardflow.core.storage import file_identity, file_size, list_input_files, open_file
from shardflow.pipelines.setup.config import Config
from shardflow.tasks.io import CSV_SUFFIXES, Piece, csv_header


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
