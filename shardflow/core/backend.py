"""The few operations where pandas and cuDF differ, behind one dispatch each.

pandas implementations are registered eagerly; cuDF ones lazily, the first time a
cuDF object reaches a dispatch (``Dispatch.register_lazy``), so importing shardflow
never imports cudf or cupy and never creates a CUDA context.

Readers are chosen by backend *name* (``"pandas"`` or ``"cudf"``, Dask's
``dataframe.backend`` values) because they have no frame to dispatch on yet.
"""

from __future__ import annotations

import datetime as _dt
import decimal as _decimal
import importlib

import numpy as np
import pandas as pd
import pyarrow as pa
from dask.utils import Dispatch

from shardflow.core.storage import write_table

BACKENDS = ("pandas", "cudf")

to_numeric = Dispatch("to_numeric")
to_datetime = Dispatch("to_datetime")
to_pandas = Dispatch("to_pandas")
to_host_array = Dispatch("to_host_array")
category_codes = Dispatch("category_codes")
as_strings = Dispatch("as_strings")
write_parquet = Dispatch("write_parquet")
row_positions = Dispatch("row_positions")
take_rows = Dispatch("take_rows")
#: ``host_series_like(like, series)``: a pandas Series of host values as a column of
#: ``like``'s backend, with ``like``'s index.
host_series_like = Dispatch("host_series_like")
#: ``concat_frames(first, frames)``: the rows of ``frames`` (``first``'s backend) in order.
concat_frames = Dispatch("concat_frames")


def gpu_install_hint() -> str:
    return 'install the GPU stack: `pip install "shardflow[gpu]"` (CUDA 13) or `conda env create -f environment.yml`'


def frame_module(backend: str):
    """The dataframe library for ``backend``, imported on first use."""
    if backend not in BACKENDS:
        raise ValueError(f"dataframe backend {backend!r} is not one of {BACKENDS}")
    try:
        return importlib.import_module(backend)
    except ImportError as err:  # pragma: no cover - only without cudf
        raise ImportError(f"backend {backend!r} needs cuDF: {gpu_install_hint()}") from err


def from_arrow(table: pa.Table, backend: str):
    """An Arrow table as a frame of ``backend`` (host → device copy for cuDF)."""
    if backend == "pandas":
        return table.to_pandas()
    return frame_module(backend).DataFrame.from_arrow(table)


# ----------------------------------------------------------------------------- pandas


@to_numeric.register((pd.Series, pd.Index))
def _to_numeric_pandas(series):
    return pd.to_numeric(series, errors="coerce")


@to_datetime.register(pd.Series)
def _to_datetime_pandas(series):
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return series
    return pd.to_datetime(series, errors="coerce", format="mixed")


@to_pandas.register((pd.DataFrame, pd.Series))
def _to_pandas_pandas(obj):
    return obj


@to_host_array.register((pd.DataFrame, pd.Series))
def _to_host_array_pandas(obj, dtype):
    return obj.to_numpy(dtype=dtype, na_value=np.nan)


@write_parquet.register(pd.DataFrame)
def _write_parquet_pandas(frame, path):
    write_table(pa.Table.from_pandas(frame, preserve_index=False), path)


@row_positions.register(pd.DataFrame)
def _row_positions_pandas(keys, table_keys):
    """Row of ``table_keys`` (unique) holding each row of ``keys``; -1 where none does."""
    if keys.shape[1] == 1:
        return pd.Index(table_keys.iloc[:, 0]).get_indexer(keys.iloc[:, 0])
    return pd.MultiIndex.from_frame(table_keys).get_indexer(pd.MultiIndex.from_frame(keys))


@take_rows.register(pd.DataFrame)
def _take_rows_pandas(table, positions):
    """``table``'s rows at ``positions`` (-1: a row of nulls), indexed like nothing else.

    Integer columns come back as float64 and booleans as objects whether or not a position
    is -1, so a partition whose every key matched types (and spells, as text) a column as
    the others do: ``7.0``, never ``7`` in one partition and ``7.0`` in the next.
    """
    columns = {}
    for col in table.columns:
        values = table[col].array
        if values.dtype.kind in "iu":
            values = values.astype("float64")
        elif values.dtype.kind == "b":
            values = values.astype(object)
        columns[col] = pd.api.extensions.take(values, positions, allow_fill=True)
    return pd.DataFrame(columns)


#: What ``infer_dtype`` calls an object column of scalars only (the rest is checked value by value).
_SCALAR_KINDS = {
    "string",
    "empty",
    "integer",
    "floating",
    "mixed-integer-float",
    "boolean",
    "decimal",
    "datetime",
    "datetime64",
    "date",
    "time",
    "timedelta",
    "bytes",
}
_SCALAR_TYPES = (
    str,
    bytes,
    int,
    float,
    bool,
    np.generic,
    pd.Timestamp,
    pd.Timedelta,
    _dt.date,
    _dt.time,
    _dt.timedelta,
    _decimal.Decimal,
)


@as_strings.register(pd.Series)
def _as_strings_pandas(series):
    if pd.api.types.is_string_dtype(series.dtype) and series.dtype != object:
        return series
    require_scalars(series)
    return series.astype("string")


def require_scalars(series: pd.Series, name=None) -> None:
    """Refuse a column holding values that are not scalars (dicts, lists, arrays): as a
    category it would become its repr (``"{'a': 1}"``), a value no file spells.

    Raises
    ------
    InputError
        Naming the column (``name``, default the series' name) and the first such value.

    Examples
    --------
    >>> require_scalars(pd.Series(["a", 1, None], dtype=object))
    >>> require_scalars(pd.Series(["a", {"k": 1}], dtype=object), "city")
    Traceback (most recent call last):
    ...
    shardflow.core.errors.InputError: column 'city': holds dict values (such as "{'k': 1}"); a categorical or key
    column takes text, numbers or booleans: flatten it first (for example to JSON text)
    """
    from shardflow.core.errors import InputError

    label = name if name is not None else series.name
    if isinstance(series.dtype, pd.ArrowDtype) and pa.types.is_nested(series.dtype.pyarrow_dtype):
        raise InputError(
            f"column {label!r}: holds {series.dtype.pyarrow_dtype} values; a categorical or key column "
            "takes text, numbers or booleans: flatten it first (for example to JSON text)"
        )
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = pd.Series(series.cat.categories, dtype=object)
    if series.dtype != object or pd.api.types.infer_dtype(series, skipna=True) in _SCALAR_KINDS:
        return
    odd = series[series.map(lambda v: not (v is None or v is pd.NA or isinstance(v, _SCALAR_TYPES)))]
    if len(odd):
        example = odd.iloc[0]
        raise InputError(
            f"column {label!r}: holds {type(example).__name__} "
            f"values (such as {str(example)[:40]!r}); a categorical or key column takes text, numbers "
            "or booleans: flatten it first (for example to JSON text)"
        )


@concat_frames.register(pd.DataFrame)
def _concat_frames_pandas(first, frames):
    return pd.concat(frames, ignore_index=True)


@host_series_like.register((pd.Series, pd.DataFrame))
def _host_series_like_pandas(like, series):
    return series.set_axis(like.index)


@category_codes.register(pd.Series)
def _category_codes_pandas(series, vocabulary):
    """Position of each value in ``vocabulary``; -1 for values not in it (and nulls)."""
    import pyarrow.compute as pc

    # Arrow's hash lookup works on the Arrow-backed strings directly (no object copies).
    values = pa.array(series, from_pandas=True)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        values = values.cast(pa.string())
    codes = pc.index_in(values, value_set=pa.array(list(vocabulary), type=values.type))
    return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


# ----------------------------------------------------------------------------- cuDF


@to_numeric.register_lazy("cudf")
@to_datetime.register_lazy("cudf")
@to_pandas.register_lazy("cudf")
@to_host_array.register_lazy("cudf")
@category_codes.register_lazy("cudf")
@as_strings.register_lazy("cudf")
@write_parquet.register_lazy("cudf")
@row_positions.register_lazy("cudf")
@take_rows.register_lazy("cudf")
@host_series_like.register_lazy("cudf")
@concat_frames.register_lazy("cudf")
def _register_cudf():
    import cudf
    import cupy

    @to_numeric.register((cudf.Series, cudf.Index))
    def _to_numeric_cudf(series):
        return cudf.to_numeric(series, errors="coerce")

    @to_datetime.register(cudf.Series)
    def _to_datetime_cudf(series):
        if series.dtype.kind == "M":
            return series
        return cudf.to_datetime(series, errors="coerce")

    @to_pandas.register((cudf.DataFrame, cudf.Series))
    def _to_pandas_cudf(obj):
        return obj.to_pandas()

    @to_host_array.register((cudf.DataFrame, cudf.Series))
    def _to_host_array_cudf(obj, dtype):
        return cupy.asnumpy(obj.astype(dtype).to_cupy(na_value=np.nan))

    @write_parquet.register(cudf.DataFrame)
    def _write_parquet_cudf(frame, path):
        frame.to_parquet(str(path), index=False, storage_options=getattr(path, "storage_options", None) or None)

    @row_positions.register(cudf.DataFrame)
    def _row_positions_cudf(keys, table_keys):
        left = keys.reset_index(drop=True).assign(_row=cupy.arange(len(keys)))
        right = table_keys.reset_index(drop=True).assign(_pos=cupy.arange(len(table_keys)))
        merged = left.merge(right, on=list(keys.columns), how="left").sort_values("_row")
        return merged["_pos"].fillna(-1).astype("int64").to_cupy()

    @take_rows.register(cudf.DataFrame)
    def _take_rows_cudf(table, positions):
        positions = cupy.asarray(positions)
        found = positions >= 0
        taken = table.reset_index(drop=True).take(cupy.where(found, positions, 0))
        return taken.where(cudf.Series(found), None) if len(taken) else taken

    @concat_frames.register(cudf.DataFrame)
    def _concat_frames_cudf(first, frames):
        return cudf.concat(frames, ignore_index=True)

    @host_series_like.register((cudf.Series, cudf.DataFrame))
    def _host_series_like_cudf(like, series):
        return cudf.from_pandas(series.set_axis(like.index.to_pandas()))

    @as_strings.register(cudf.Series)
    def _as_strings_cudf(series):
        return series if series.dtype == "object" else series.astype("str")

    @category_codes.register(cudf.Series)
    def _category_codes_cudf(series, vocabulary):
        lookup = cudf.DataFrame(
            {"_value": cudf.Series(list(vocabulary), dtype="str"), "_code": cupy.arange(len(vocabulary), dtype="int64")}
        )
        left = cudf.DataFrame({"_value": series.astype("str"), "_row": cupy.arange(len(series))})
        merged = left.merge(lookup, on="_value", how="left").sort_values("_row")
        return cupy.asnumpy(merged["_code"].fillna(-1).to_cupy()).astype(np.int64)
