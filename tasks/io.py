"""Read one piece of the input (a Parquet file's row groups, or a CSV byte range).

Errors are re-raised as :class:`~shardflow.core.errors.InputError` naming the file, so
a corrupt file among hundreds is reported as that file, not as a worker traceback.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from shardflow.core import backend
from shardflow.core.errors import InputError
from shardflow.core.storage import open_file

#: CSV pieces carry this column: why a row could not be parsed (null for good rows).
#: File name endings read as CSV (``format: auto``).
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz")
ROW_ERROR_COLUMN = "_row_error"


@dataclass(frozen=True)
class Piece:
    """One partition's worth of one input file.

    ``row_groups`` selects Parquet row groups (``None``: all); ``start``/``end`` select
    the CSV lines that begin inside that byte range (``end=None``: to the end).
    ``path`` is a local path or an object-store URL opened with ``storage_options``.
    """

    path: str
    format: str
    row_groups: tuple[int, ...] | None = None
    start: int = 0
    end: int | None = None
    storage_options: dict | None = field(default=None, compare=False)


def read_piece(piece: Piece, column_names, backend_name: str = "pandas", csv_delimiter: str = ","):
    """Read ``column_names`` of one piece as a frame of ``backend_name``.

    CSV values are read as strings; the ETL types them and quarantines malformed ones.
    """
    try:
        if piece.format == "parquet":
            return _read_parquet(piece, column_names, backend_name)
        return _read_csv(piece, column_names, backend_name, csv_delimiter)
    except InputError:
        raise
    except Exception as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{piece.path}: cannot read this {piece.format} file ({type(err).__name__}: {message}); "
            "repair or remove it and run again"
        ) from None


def _read_parquet(piece: Piece, columns, backend_name):
    if backend_name == "cudf":
        cudf = backend.frame_module("cudf")
        row_groups = None if piece.row_groups is None else [list(piece.row_groups)]
        return cudf.read_parquet(
            piece.path, columns=list(columns), row_groups=row_groups, storage_options=piece.storage_options
        )
    with open_file(piece.path, "rb", piece.storage_options) as handle:
        file = pq.ParquetFile(handle)
        if piece.row_groups is None:
            table = file.read(columns=list(columns))
        else:
            table = file.read_row_groups(list(piece.row_groups), columns=list(columns))
    return backend.from_arrow(table, backend_name)


#: Strings read as missing in CSV files (pandas' ``read_csv`` defaults).
CSV_NULL_VALUES = (
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
)


def _open_text_head(path: str, storage_options: dict | None = None):
    if path.endswith(".gz"):
        import gzip

        return gzip.open(open_file(path, "rb", storage_options), "rb")
    return open_file(path, "rb", storage_options)


def csv_header(path: str, delimiter: str = ",", storage_options: dict | None = None) -> list[str]:
    """Column names from a CSV file's first line; empty names read as pandas does.

    Raises
    ------
    InputError
        The file is empty or starts with an empty line (it has no header), or the
        header names a column more than once (which of them a feature would read is
        undefined); the message names the file and, for duplicates, the names.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write('id,"a,b",,c\\n1,2,3,4\\n')
    >>> csv_header(path)
    ['id', 'a,b', 'Unnamed: 2', 'c']
    """
    import csv

    with _open_text_head(path, storage_options) as f:
        first = f.readline()
    line = first.decode("utf-8-sig").rstrip("\r\n")
    if not line.strip():  # no columns at all: every configured column would be reported missing instead
        what = "the file is empty (0 bytes)" if not first else "its first line is empty"
        raise InputError(
            f"{path}: {what}; a CSV file starts with a header line naming its columns: write the "
            "header and rows, or remove the file"
        )
    names = next(csv.reader([line], delimiter=delimiter), [])
    names = [name if name else f"Unnamed: {i}" for i, name in enumerate(names)]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InputError(
            f"{path}: column name(s) {', '.join(map(repr, duplicated))} appear more than once in "
            "the header; give every column its own name"
        )
    return names


def _csv_bytes(piece: Piece) -> bytes:
    """The header line plus every line that starts inside ``[start, end)``."""
    if piece.path.endswith(".gz"):  # compressed files are one piece
        with _open_text_head(piece.path, piece.storage_options) as f:
            return f.read()
    with open_file(piece.path, "rb", piece.storage_options) as f:
        header = f.readline()
        begin = max(piece.start, len(header))
        if begin > len(header):
            f.seek(begin - 1)
            if f.read(1) != b"\n":
                f.readline()  # finish the line that began before this range
        else:
            f.seek(begin)
        first = f.tell()
        if piece.end is None:
            body = f.read()
        else:
            body = f.read(max(0, piece.end - first))
            if body and not body.endswith(b"\n"):
                body += f.readline()
        return header + body


def _read_csv(piece: Piece, columns, backend_name, delimiter):
    """Read the piece's lines as strings; rows with the wrong number of fields are kept
    apart and come back last, with their reason in :data:`ROW_ERROR_COLUMN`."""
    import csv

    import pyarrow.csv as pacsv

    data = _csv_bytes(piece)
    header = csv_header(piece.path, delimiter, piece.storage_options)
    ragged = []

    def keep_apart(row):
        ragged.append((row.text, row.actual_columns))
        return "skip"

    table = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=header, skip_rows=1, use_threads=False),
        # A byte range is cut at line ends: a quoted value spanning lines would be split
        # across pieces, so there such a row is malformed (and quarantined), never glued
        # to the wrong lines. A whole file may hold quoted newlines.
        parse_options=pacsv.ParseOptions(
            delimiter=delimiter,
            invalid_row_handler=keep_apart,
            newlines_in_values=piece.start == 0 and piece.end is None,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in header},
            include_columns=list(columns),
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            null_values=list(CSV_NULL_VALUES),
        ),
    )
    reasons = pa.nulls(table.num_rows, pa.string())
    if ragged:
        position = {name: i for i, name in enumerate(header)}
        values = {name: [] for name in columns}
        for text, _ in ragged:
            fields = next(csv.reader([text], delimiter=delimiter), [])
            for name in columns:
                i = position[name]
                value = fields[i] if i < len(fields) else None
                values[name].append(None if value in CSV_NULL_VALUES else value)
        extra = pa.table({name: pa.array(values[name], pa.string()) for name in columns})
        table = pa.concat_tables([table, extra])
        reasons = pa.concat_arrays(
            [reasons, pa.array([f"{n} fields, expected {len(header)}" for _, n in ragged], pa.string())]
        )
    table = table.append_column(ROW_ERROR_COLUMN, reasons)
    return backend.from_arrow(table, backend_name)
