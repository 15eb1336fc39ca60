"""The dimension tables of a job's joins: read on the client, keys checked and made comparable.

A dimension table is small: it is read whole, its key columns are checked (present, unique,
comparable with the fact table's), clashing column names get the join's suffix, and the
table travels to every partition in the task graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from shardflow.core import backend
from shardflow.core.errors import InputError
from shardflow.core.storage import list_input_files, open_file
from shardflow.pipelines.setup.config import Config
from shardflow.tasks.io import CSV_SUFFIXES, csv_header
from shardflow.tasks.keys import ISO_DATETIME
from shardflow.tasks.prepare import join_key
from shardflow.tasks.schema import JoinSpec


@dataclass
class Dimension:
    """A loaded dimension table, keys renamed to the fact table's names."""

    join: JoinSpec
    frame: pd.DataFrame
    path: str


def load_dimensions(config: Config, source) -> list[Dimension]:
    """Read every ``joins`` table, check its keys, and resolve column-name clashes."""
    taken = set(source.schema)
    dims = []
    for i, join in enumerate(config.joins):
        path = config.resolve(join.path)
        options = config.storage_options
        try:
            found = list_input_files(path, options) == [path]
        except Exception as err:
            raise InputError(
                f"joins[{i}].path {join.path!r}: cannot reach it ({type(err).__name__}); check the URL, "
                "storage_options and the credentials in the environment"
            ) from None
        if not found:
            raise InputError(f"joins[{i}].path {join.path!r}: no such file (resolved to {path})")
        try:
            if path.endswith(CSV_SUFFIXES):
                csv_header(path, config.input.csv_delimiter, options)  # refuses duplicated column names
                with open_file(path, "rb", options) as handle:
                    table = pd.read_csv(
                        handle, sep=config.input.csv_delimiter, compression="gzip" if path.endswith(".gz") else None
                    )
            else:
                with open_file(path, "rb", options) as handle:
                    table = pq.read_table(handle).to_pandas()
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"{path}: cannot read the dimension table ({type(err).__name__}: {err})") from None
        right_on = join.right_on or join.on
        for key_cfg, key in (("on", join.on), ("right_on", right_on)):
            where = source.schema if key_cfg == "on" else table.columns
            for col in key:
                if col not in where:
                    owner = "the input table" if key_cfg == "on" else path
                    raise InputError(
                        f"joins[{i}].{key_cfg}: key column {col!r} is not in {owner}; "
                        f"available: {', '.join(map(str, where))}"
                    )
        columns = join.columns if join.columns is not None else [c for c in table.columns if c not in right_on]
        for col in columns:
            if col not in table.columns:
                raise InputError(
                    f"joins[{i}].columns: column {col!r} is not in {path}; available: {', '.join(table.columns)}"
                )
        if table.duplicated(list(right_on)).any():
            dup = table[table.duplicated(list(right_on), keep=False)][list(right_on)].iloc[0].tolist()
            raise InputError(
                f"{path}: key {dup} appears more than once in columns {list(right_on)}; "
                "a dimension table needs unique keys (deduplicate it)"
            )
        name = join.name or Path(path).name.split(".")[0]
        table = table[list(right_on) + list(columns)].rename(columns=dict(zip(right_on, join.on)))
        kinds = tuple(_key_kind(i, col, source, table[col], path) for col in join.on)
        table = table.assign(**{col: join_key(table[col], kind) for col, kind in zip(join.on, kinds)})
        # A missing key matches nothing (as in SQL), not the fact rows whose key is missing too.
        table = table[table[list(join.on)].notna().all(axis=1)].reset_index(drop=True)
        if table.duplicated(list(join.on)).any():
            dup = table[table.duplicated(list(join.on), keep=False)][list(join.on)].iloc[0].tolist()
            raise InputError(
                f"{path}: keys that differ as text are equal as numbers (e.g. {dup}); a dimension "
                "table needs unique keys: deduplicate it"
            )
        rename = {}
        for col in columns:
            if col in taken or col in join.on:
                rename[col] = f"{col}_{name}"
        taken.update(rename.get(c, c) for c in columns)
        dims.append(Dimension(JoinSpec(name, tuple(join.on), tuple(columns), rename, kinds), table, path))
    return dims


def _key_kind(index: int, column: str, source, dim_values: pd.Series, path: str) -> str:
    """How key ``column`` is compared: as numbers when either side holds numbers, as instants
    when the dimension table holds datetimes (or ISO 8601 text only), else as text.

    The fact table's CSV text is parsed as numbers (or instants) then; a dimension table's
    text key against a numeric fact key must parse entirely, or the join could never match.
    Instants are decided by the dimension table alone (the same file at training and at
    scoring), so a key given as text to train and as a pandas datetime to score joins the
    same rows.
    """
    fact = source.schema[column]
    fact_numeric = (
        pa.types.is_integer(fact)
        or pa.types.is_floating(fact)
        or pa.types.is_decimal(fact)
        or pa.types.is_boolean(fact)
    )
    fact_moment = pa.types.is_timestamp(fact) or pa.types.is_date(fact)
    present = dim_values.dropna()
    dim_moment = pd.api.types.is_datetime64_any_dtype(dim_values.dtype) or (
        len(present) > 0
        and not pd.api.types.is_numeric_dtype(present.dtype)
        and bool(present.astype("string").str.strip().str.fullmatch(ISO_DATETIME).all())
    )
    if dim_moment and not fact_numeric:
        return "datetime"
    if fact_moment:
        example = present.iloc[0] if len(present) else None
        raise InputError(
            f"joins[{index}].on: key {column!r} holds datetimes ({fact}) in the input but "
            f"{'values such as ' + repr(example) if example is not None else 'no values'} in {path}, "
            "which are not ISO 8601 datetimes; they can never match: fix the key column's type in one "
            "of them"
        )
    if pd.api.types.is_numeric_dtype(dim_values.dtype) and not pd.api.types.is_bool_dtype(dim_values.dtype):
        whole = pd.api.types.is_integer_dtype(present.dtype) or bool((present == present.round()).all())
        fact_whole = pa.types.is_integer(fact) or not fact_numeric
        return "integer" if whole and fact_whole else "number"
    if fact_numeric:
        parsed = pd.to_numeric(present, errors="coerce")
        if parsed.isna().any():
            example = present[parsed.isna()].iloc[0]
            raise InputError(
                f"joins[{index}].on: key {column!r} holds numbers ({fact}) in the input but text such as "
                f"{example!r} in {path}; they can never match: fix the key column's type in one of them"
            )
        return "number"
    return "string"


def dimension_frames(dims: list[Dimension], backend_name: str) -> list:
    """The dimension tables as frames of the job's backend."""
    if backend_name == "pandas":
        return [d.frame for d in dims]
    return [backend.from_arrow(pa.Table.from_pandas(d.frame, preserve_index=False), backend_name) for d in dims]
