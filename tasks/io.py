"""Read one piece of the input (a Parquet file's row groups, or a CSV byte range).

Errors are re-raised as :class:`~shardflow.tasks.errors.InputError` naming the file, so
a corrupt file among hundreds is reported as that file, not as a worker traceback.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from shardflow.tasks import backend
from shardflow.tasks.errors import InputError


@dataclass(frozen=True)
class Piece:
    """One partition's worth of one input file.

    ``row_groups`` selects Parquet row groups (``None``: all); ``start``/``end`` select
    the CSV lines that begin inside that byte range (``end=None``: to the end).
    """

    path: str
    format: str
    row_groups: tuple[int, ...] | None = None
    start: int = 0
    end: int | None = None


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
    except Exception as err:  # noqa: BLE001 - any reader failure is this file's fault
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(
            f"{piece.path}: cannot read this {piece.format} file ({type(err).__name__}: {message}); "
            "repair or remove it and run again"
        ) from None


def _read_parquet(piece: Piece, columns, backend_name):
    if backend_name == "cudf":
        cudf = backend.frame_module("cudf")
        row_groups = None if piece.row_groups is None else [list(piece.row_groups)]
        return cudf.read_parquet(piece.path, columns=list(columns), row_groups=row_groups)
    file = pq.ParquetFile(piece.path)
    if piece.row_groups is None:
        table = file.read(columns=list(columns))
    else:
        table = file.read_row_groups(list(piece.row_groups), columns=list(columns))
    return backend.from_arrow(table, backend_name)


def csv_header(path: str, delimiter: str = ",") -> list[str]:
    """Column names from a CSV file's first line."""
    import pandas as pd

    return list(pd.read_csv(path, sep=delimiter, nrows=0).columns)


def _csv_bytes(piece: Piece) -> bytes:
    """The header line plus every line that starts inside ``[start, end)``."""
    with open(piece.path, "rb") as f:
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
    import pandas as pd

    data = _csv_bytes(piece)
    frame = pd.read_csv(io.BytesIO(data), sep=delimiter, usecols=list(columns), dtype=str,
                        keep_default_na=True)
    frame = frame[list(columns)]
    if backend_name == "pandas":
        return frame
    return backend.from_arrow(pa.Table.from_pandas(frame, preserve_index=False), backend_name)
