"""Where each column of an exported graph comes from: the fact row, a join, or the graph.

The export's inputs are the raw fact columns a serving process has: a join's attributes are
looked up inside the graph from its dimension table (embedded in the graph), and derived
features are computed there (:mod:`shardflow.tasks.onnx_inputs`). Dimension columns are typed
as the ETL types them (:func:`~shardflow.tasks.prepare.type_columns` on the table's rows as a
left join gives them, plus the row an unmatched key gets), so a looked-up value is the value
training saw. A feature computed from one dimension table's columns alone is computed here,
per dimension row, with the ETL's own :func:`~shardflow.tasks.expressions.evaluate`.

What the graph cannot compute stays an input that the caller computes (``metadata.json``
names its expression or datetime part); when that value reads a joined column, the joins
stay outside the graph (:class:`JoinsOutside`), as they were before: the caller sends the
joined columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from shardflow.core import backend
from shardflow.core.errors import ShardflowError
from shardflow.pipelines.setup.read import expression_column_kinds
from shardflow.tasks.expressions import evaluate
from shardflow.tasks.onnx_inputs import (
    KEY_TYPES,
    NotCompiled,
    compile_expression,
    gathered,
    key_positions,
)
from shardflow.tasks.prepare import as_float, datetime_part, type_columns

_FLOAT32_MAX = float(np.finfo(np.float32).max)
#: The most dimension-table bytes an export embeds (ONNX files are protobufs, at most 2 GiB).
MAX_EMBEDDED_BYTES = 1 << 30


def input_plan(config, run_dir):
    """The run's input, readable here and with the dimension tables it was trained with; None
    when it is not readable (the joins then stay outside the graph, and nothing is checked).

    Raises
    ------
    ArtifactError
        A dimension table that is here but differs from the run's (its SHA-256).
    """
    from shardflow.pipelines.records.artifacts import check_dimension_tables
    from shardflow.pipelines.records.rundir import read_manifest
    from shardflow.pipelines.setup.plan import InputPlan

    try:
        plan = InputPlan(config)
        plan.dimensions, plan.spec  # noqa: B018 (read now: an unreadable table is found here)
    except (ShardflowError, OSError):
        return None
    check_dimension_tables(config, read_manifest(run_dir))
    return plan


class JoinsOutside(Exception):
    """The joins cannot be computed inside the graph; the message says which column and why."""


@dataclass
class GraphInputs:
    """What :func:`graph_inputs` built: the tensors the graph computes, and the inputs' roles."""

    #: Feature column -> the tensor the graph computes it as.
    sources: dict = field(default_factory=dict)
    #: Join key input -> how it is compared (``"string"``, ``"number"``, ``"integer"``, ``"datetime"``).
    keys: dict = field(default_factory=dict)
    #: Per join: rows embedded in the graph.
    rows: list = field(default_factory=list)
    #: Input -> the fact column it holds, for an input named otherwise (see :func:`fact_input`).
    columns: dict = field(default_factory=dict)


def graph_inputs(g, preprocessor, spec, dimensions, schema: dict) -> GraphInputs:
    """Build into ``g`` the joins and derived features ``preprocessor`` reads.

    Parameters
    ----------
    g : Graph
    preprocessor : Preprocessor
        The run's fitted preprocessing: which columns the model reads.
    spec : TableSpec
        The run's table spec (its joins with their key kinds, derived expressions, types).
    dimensions : list of Dimension
        The run's dimension tables, as the ETL loaded them.
    schema : dict
        The fact table's columns and Arrow types.

    Raises
    ------
    JoinsOutside
        A value that reads a joined column cannot be computed by the graph.
    """
    built = GraphInputs(rows=[len(d.frame) for d in dimensions])
    embedded = sum(int(d.frame.memory_usage(deep=True).sum()) for d in dimensions)
    if embedded > MAX_EMBEDDED_BYTES:
        raise JoinsOutside(f"the dimension tables hold {embedded / 2**30:.1f} GiB, over the 1 GiB an export embeds")
    owner = {d.join.rename.get(c, c): i for i, d in enumerate(dimensions) for c in d.join.columns}
    tables = [_joined_rows(d, spec) for d in dimensions]
    positions = {}

    def position(i: int) -> str:
        if i not in positions:
            d = dimensions[i]
            kinds = d.join.key_kinds or ("string",) * len(d.join.on)
            keys = [fact_input(g, col, KEY_TYPES[kind], built) for col, kind in zip(d.join.on, kinds)]
            built.keys.update(zip(keys, kinds))
            values = [_key_values(d.frame[col], kind) for col, kind in zip(d.join.on, kinds)]
            positions[i] = key_positions(g, keys, values)
        return positions[i]

    looked_up = {}

    def lookup(name: str, values: np.ndarray) -> str:
        key = (name, values.dtype.kind, values.tobytes() if values.dtype != object else tuple(values))
        if key not in looked_up:
            looked_up[key] = gathered(g, position(owner[name]), values)
        return looked_up[key]

    # The feature inputs first, in the model's order (the keys and expressions' columns follow).
    datetime_parts = {f"{col}_{part}": (col, part) for col in spec.datetime for part in spec.datetime_parts}
    derived = dict(spec.derived)
    for col in preprocessor.numeric:
        if col not in owner and col not in derived and col not in datetime_parts:
            g.input(col, "double")
    for col in preprocessor.categorical:
        if col not in owner:
            g.input(col, "string")

    for col in preprocessor.numeric:
        if col in owner:
            built.sources[col] = lookup(col, _numbers(tables[owner[col]][col]))
        elif col in datetime_parts and datetime_parts[col][0] in owner:
            source, part = datetime_parts[col]
            built.sources[col] = lookup(source, _numbers(datetime_part(tables[owner[source]][source], part)))
    for col in preprocessor.categorical:
        if col in owner:
            built.sources[col] = lookup(col, _texts(tables[owner[col]][col]))

    kinds = expression_column_kinds(spec, schema)
    for name, expression in spec.derived:
        if name not in preprocessor.numeric:
            continue
        joined = {owner[c] for c in expression.names if c in owner}
        if len(joined) == 1 and set(expression.names) <= owner.keys():  # one dimension table's columns
            (i,) = joined
            built.sources[name] = lookup(expression.names[0], _numbers(evaluate(expression, tables[i])))
            continue
        try:
            if not expression.names:
                raise NotCompiled("it reads no column")
            dry_run = _columns(kinds, tables, owner, lookup=None, g=g, built=built)
            compile_expression(type(g)(), expression.tree, dry_run)  # every column given, or NotCompiled
            column = _columns(kinds, tables, owner, lookup=lookup, g=g, built=built)
            built.sources[name] = compile_expression(g, expression.tree, column)
        except NotCompiled as why:
            if joined:
                raise JoinsOutside(f"features.derived.{name} reads a joined column, and {why}") from None
            # Computed by the caller, as an input named after the feature (metadata.json says how).
    return built


def _columns(kinds: dict, tables: list, owner: dict, *, lookup, g, built: GraphInputs):
    """``name -> (tensor, kind)`` for :func:`compile_expression`: a fact column as an input of
    ``g``, a joined one looked up; with ``lookup`` None, a dry run (into a scratch graph) that
    adds nothing to ``g`` and only checks that every column can be given."""

    def column(name: str):
        if name in owner:
            values = tables[owner[name]][name]
            kind = _value_kind(values)
            if kind is None:
                raise NotCompiled(f"joined column {name!r} holds {values.dtype} values")
            if lookup is None:
                return name, kind
            return lookup(name, _numbers(values, clip=False) if kind == "number" else _texts(values)), kind
        kind = kinds.get(name, "unknown")
        if kind not in _ELEMENT:
            raise NotCompiled(f"column {name!r} is {kind}")
        return (fact_input(g, name, _ELEMENT[kind], built) if lookup is not None else name), kind

    return column


_ELEMENT = {"number": "double", "text": "string"}


def _value_kind(values: pd.Series) -> str | None:
    if values.dtype.kind in "iuf":
        return "number"
    present = values.dropna()
    textual = values.dtype.kind in "OU" or pd.api.types.is_string_dtype(values.dtype)
    if textual and all(isinstance(v, str) for v in present):
        return "text"
    return None


def fact_input(g, col: str, elem_type: str, built: GraphInputs) -> str:
    """The graph input holding fact column ``col`` as ``elem_type``: named ``col``, or, when
    ``col`` is already an input of another type (a categorical that is also a numeric join
    key), ``col:elem_type``, fed from the same column (``metadata.json``'s ``column``)."""
    existing = g.input_type(col)
    if existing in (None, elem_type):
        return g.input(col, elem_type)
    name = f"{col}:{elem_type}"
    built.columns[name] = col
    return g.input(name, elem_type)


def _key_values(values: pd.Series, kind: str) -> np.ndarray:
    """A dimension table's key column (already in its comparable form) as the graph holds it."""
    if kind == "string":
        return values.astype(object).to_numpy()
    if kind == "integer":
        return values.to_numpy(dtype=np.int64)
    if kind == "datetime":
        return values.to_numpy().astype("datetime64[us]").astype(np.int64)
    return values.to_numpy(dtype=np.float64)


def _joined_rows(dimension, spec) -> pd.DataFrame:
    """The dimension table's columns as the ETL's left join gives them, typed as the ETL
    types them, plus one last row: what an unmatched key gets."""
    table = dimension.frame[list(dimension.join.columns)]
    rows = backend.take_rows(table, np.append(np.arange(len(table)), -1))
    return type_columns(rows.rename(columns=dimension.join.rename), spec)


def _numbers(values, clip: bool = True) -> np.ndarray:
    """A feature's values as the ETL stores them: float64, past float32's range missing."""
    numbers = as_float(values).to_numpy(dtype=np.float64, na_value=np.nan)
    if clip:
        with np.errstate(invalid="ignore"):
            numbers = np.where(np.abs(numbers) <= _FLOAT32_MAX, numbers, np.nan)
    return numbers


def _texts(values) -> np.ndarray:
    """A categorical's values as the ETL spells them, ``""`` for missing."""
    return backend.as_strings(values).fillna("").astype(object).to_numpy()
