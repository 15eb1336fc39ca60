"""The exported graph's own inputs: joins as key lookups, derived features as ONNX operators.

So that a serving process sends raw fact rows only, :mod:`shardflow.pipelines.serving.export`
builds into the graph (with :class:`~shardflow.tasks.onnx_graph.Graph`):

- each join as a lookup: the fact row's key (one or more columns) becomes the row position
  of its dimension row (``ai.onnx.ml.LabelEncoder``, -1 where none matches), and each
  attribute the model reads is a ``Gather`` from that dimension's column, whose last entry
  is what the ETL's left join gives an unmatched row;
- each derived feature compiled from its whitelisted expression tree
  (:mod:`shardflow.tasks.expressions`), with pandas' semantics on numbers (``NaN`` for
  missing, IEEE division, floored ``%`` and ``//``), booleans and text (``""`` for missing).

What cannot be compiled (a datetime column in an expression, text ordered by ``<``) raises
:class:`NotCompiled` with the reason; the caller then computes that value outside the graph.
"""

from __future__ import annotations

import math

import numpy as np

#: A missing integer or datetime join key as the graph takes it: ``int64``'s smallest value
#: (pandas' ``NaT``), which no key of a dimension table holds.
MISSING_INTEGER = int(np.iinfo(np.int64).min)
#: The graph input's element type for each kind of join key (see ``JoinSpec.key_kinds``):
#: datetimes as UTC microseconds since the epoch.
KEY_TYPES = {"string": "string", "number": "double", "integer": "int64", "datetime": "int64"}
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class NotCompiled(Exception):
    """An expression (or a piece of one) the graph cannot compute; the message says why."""


# ----------------------------------------------------------------------------- joins


def key_positions(g, keys: list, values: list) -> str:
    """The int64 row position, in a dimension table, of each fact row's key; -1 where none.

    Parameters
    ----------
    g : Graph
    keys : list of str
        The fact rows' key tensors, one per key column, in the graph types of
        :data:`KEY_TYPES`.
    values : list of numpy.ndarray
        The dimension table's key columns (unique together, none missing), same order.

    A key of several columns is encoded a column at a time: each column's value becomes its
    index among that column's distinct values, and each prefix of the key the index of that
    prefix among the table's, so no product of the columns' sizes is ever formed.
    """
    n = len(values[0])
    if len(keys) == 1:
        return _lookup(g, keys[0], values[0], np.arange(n))
    combined, prefix = None, np.zeros(n, dtype=np.int64)
    for key, column in zip(keys, values):
        distinct, codes = np.unique(column, return_inverse=True)
        code = _lookup(g, key, distinct, np.arange(len(distinct)))
        if combined is None:
            combined, prefix = code, codes.astype(np.int64)
            continue
        pairs = prefix * len(distinct) + codes
        present = g.op(
            "And",
            [
                g.op("GreaterOrEqual", [combined, g.const(0, np.int64)]),
                g.op("GreaterOrEqual", [code, g.const(0, np.int64)]),
            ],
        )
        pair = g.op("Add", [g.op("Mul", [combined, g.const(len(distinct), np.int64)]), code])
        pair = g.op("Where", [present, pair, g.const(-1, np.int64)])
        known, prefix = np.unique(pairs, return_inverse=True)
        combined = _lookup(g, pair, known, np.arange(len(known)))
        prefix = prefix.astype(np.int64)
    # The last prefix is the whole key: unique per dimension row.
    order = np.empty(n, dtype=np.int64)
    order[prefix] = np.arange(n)
    return _lookup(g, combined, np.arange(n), order)


def _lookup(g, tensor: str, keys: np.ndarray, values: np.ndarray) -> str:
    """``values[i]`` where ``tensor`` equals ``keys[i]``, else -1 (``LabelEncoder``, opset 4)."""
    from onnx import numpy_helper

    keys = np.asarray(keys)
    keys = keys.astype(object) if keys.dtype.kind in "OU" else keys
    return g.op(
        "LabelEncoder",
        [tensor],
        domain="ai.onnx.ml",
        hint="key_lookup",
        keys_tensor=numpy_helper.from_array(keys, g.name("keys")),
        values_tensor=numpy_helper.from_array(np.asarray(values, dtype=np.int64), g.name("rows")),
        default_tensor=numpy_helper.from_array(np.array([-1], dtype=np.int64), g.name("none")),
    )


def gathered(g, positions: str, column: np.ndarray) -> str:
    """``column[position]`` per fact row; ``column``'s last entry for a position of -1 (its
    value for an unmatched row)."""
    unmatched = g.op("Less", [positions, g.const(0, np.int64)])
    index = g.op("Where", [unmatched, g.const(len(column) - 1, np.int64), positions])
    return g.op("Gather", [g.const(column, hint="dimension_column"), index], axis=0)


# ----------------------------------------------------------------------------- expressions


def compile_expression(g, tree: tuple, column) -> str:
    """The float64 feature an expression computes, as the ETL stores it: booleans as 1/0,
    magnitudes past float32's largest as missing.

    Parameters
    ----------
    g : Graph
    tree : tuple
        ``Expression.tree``.
    column : callable
        ``name -> (tensor, kind)`` with kind ``"number"`` (double), ``"boolean"`` or ``"text"``
        (string, ``""`` missing); it raises :class:`NotCompiled` for a column it cannot give.

    Raises
    ------
    NotCompiled
    """
    from onnx import TensorProto

    value, kind = _compile(g, tree, column)
    if isinstance(value, _Const):
        raise NotCompiled("it is a constant")
    if kind == "text":
        raise NotCompiled("its value is text")
    x = g.op("Cast", [value], to=TensorProto.DOUBLE) if kind == "boolean" else value
    inside = g.op("LessOrEqual", [g.op("Abs", [x]), g.const(_FLOAT32_MAX, np.float64)])
    return g.op("Where", [inside, x, g.const(np.nan, np.float64)])


class _Const:
    def __init__(self, value):
        self.value = value


def _kind_of_constant(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "text"
    return "number"


def _tensor(g, value, kind: str) -> str:
    if not isinstance(value, _Const):
        return value
    dtype = {"number": np.float64, "boolean": np.bool_, "text": object}[kind]
    return g.const(np.array(value.value, dtype=dtype))


def _number(g, value, kind: str, what: str):
    """``value`` as double (booleans 1/0), refusing text."""
    from onnx import TensorProto

    if kind == "text":
        raise NotCompiled(f"{what} on text")
    if kind == "boolean":
        if isinstance(value, _Const):
            return _Const(float(value.value))
        return g.op("Cast", [value], to=TensorProto.DOUBLE)
    return value


def _truth(g, value, kind: str) -> str:
    """``value`` as a condition, as the ETL's ``fillna(0).astype(bool)``: a number is true when
    present and not 0, text when not empty."""
    if kind == "boolean":
        return _tensor(g, value, kind)
    if isinstance(value, _Const):
        return _tensor(g, _Const(bool(value.value) and value.value == value.value), "boolean")
    if kind == "text":
        return g.op("Not", [g.op("Equal", [value, g.const(np.array("", dtype=object))])])
    present = g.op("Not", [g.op("IsNaN", [value])])
    return g.op("And", [present, g.op("Not", [g.op("Equal", [value, g.const(0.0, np.float64)])])])


def _compile(g, node: tuple, column):
    kind = node[0]
    if kind == "column":
        return column(node[1])
    if kind == "const":
        if node[1] is None:
            raise NotCompiled("a null literal")
        return _Const(node[1]), _kind_of_constant(node[1])
    if kind == "binary":
        return _binary(g, node[1], _compile(g, node[2], column), _compile(g, node[3], column))
    if kind == "compare":
        return _compare(g, node[1], _compile(g, node[2], column), _compile(g, node[3], column))
    if kind == "neg":
        value, value_kind = _compile(g, node[1], column)
        if value_kind != "number":
            raise NotCompiled(f"unary minus on {value_kind}")
        return (_Const(-value.value), "number") if isinstance(value, _Const) else (g.op("Neg", [value]), "number")
    if kind == "not":
        return g.op("Not", [_truth(g, *_compile(g, node[1], column))]), "boolean"
    if kind in ("and", "or"):
        terms = [_truth(g, *_compile(g, v, column)) for v in node[1]]
        result = terms[0]
        for term in terms[1:]:
            result = g.op("And" if kind == "and" else "Or", [result, term])
        return result, "boolean"
    if kind == "isin":
        return _isin(g, *_compile(g, node[1], column), node[2]), "boolean"
    if kind == "call":
        return _call(g, node[1], [_compile(g, a, column) if a != ("const", None) else (None, "null") for a in node[2]])
    raise NotCompiled(f"expression node {kind!r}")


_ARITHMETIC = {"Add": "Add", "Sub": "Sub", "Mult": "Mul", "Div": "Div", "Pow": "Pow"}


def _binary(g, op: str, left, right):
    (a, a_kind), (b, b_kind) = left, right
    if op in ("BitAnd", "BitOr"):
        if a_kind != "boolean" or b_kind != "boolean":
            raise NotCompiled(f"'&' or '|' on {a_kind} and {b_kind}")
        return g.op("And" if op == "BitAnd" else "Or", [_tensor(g, a, a_kind), _tensor(g, b, b_kind)]), "boolean"
    if a_kind == b_kind == "boolean":
        raise NotCompiled("arithmetic on two booleans")
    a, b = _number(g, a, a_kind, "arithmetic"), _number(g, b, b_kind, "arithmetic")
    a, b = _tensor(g, a, "number"), _tensor(g, b, "number")
    if op in _ARITHMETIC:
        return g.op(_ARITHMETIC[op], [a, b]), "number"
    if op not in ("Mod", "FloorDiv"):
        raise NotCompiled(f"operator {op}")
    # NumPy's divmod: the remainder takes the divisor's sign; the quotient is rounded to the
    # nearest whole number below a / b; a divisor of 0 gives a / b and a NaN remainder.
    remainder = g.op("Mod", [a, b], fmod=1)
    zero = g.const(0.0, np.float64)
    crossed = g.op(
        "And",
        [
            g.op("Not", [g.op("Equal", [remainder, zero])]),
            g.op("Xor", [g.op("Less", [b, zero]), g.op("Less", [remainder, zero])]),
        ],
    )
    if op == "Mod":
        return g.op("Where", [crossed, g.op("Add", [remainder, b]), remainder]), "number"
    quotient = g.op("Div", [g.op("Sub", [a, remainder]), b])
    quotient = g.op("Where", [crossed, g.op("Sub", [quotient, g.const(1.0, np.float64)]), quotient])
    floor = g.op("Floor", [quotient])
    floor = g.op(
        "Where",
        [
            g.op("Greater", [g.op("Sub", [quotient, floor]), g.const(0.5, np.float64)]),
            g.op("Add", [floor, g.const(1.0, np.float64)]),
            floor,
        ],
    )
    return g.op("Where", [g.op("Equal", [b, zero]), g.op("Div", [a, b]), floor]), "number"


_COMPARE = {"Eq": "Equal", "Lt": "Less", "LtE": "LessOrEqual", "Gt": "Greater", "GtE": "GreaterOrEqual"}


def _compare(g, op: str, left, right):
    (a, a_kind), (b, b_kind) = left, right
    if "text" in (a_kind, b_kind):
        if a_kind != b_kind:
            raise NotCompiled(f"text compared with {a_kind if a_kind != 'text' else b_kind}")
        if op not in ("Eq", "NotEq"):
            raise NotCompiled("text ordered by a comparison")
        if "" in [v.value for v in (a, b) if isinstance(v, _Const)]:
            raise NotCompiled("a comparison with the empty string (the graph's missing text)")
    else:
        a, b = _number(g, a, a_kind, "comparison"), _number(g, b, b_kind, "comparison")
        a_kind = b_kind = "number"
    a, b = _tensor(g, a, a_kind), _tensor(g, b, b_kind)
    if op == "NotEq":
        return g.op("Not", [g.op("Equal", [a, b])]), "boolean"
    return g.op(_COMPARE[op], [a, b]), "boolean"


def _isin(g, value, kind: str, literals: tuple) -> str:
    if isinstance(value, _Const):
        raise NotCompiled("'in' on a constant")
    if kind == "text":
        wanted = [v for v in literals if isinstance(v, str)]
        if "" in wanted:
            raise NotCompiled("'in' a list holding the empty string (the graph's missing text)")
        constants = [g.const(np.array(v, dtype=object)) for v in wanted]
    else:
        value = _number(g, value, kind, "'in'")
        constants = [g.const(float(v), np.float64) for v in literals if not isinstance(v, str)]
    if not constants:
        raise NotCompiled("'in' a list that holds none of the column's kind")
    result = None
    for constant in constants:
        equal = g.op("Equal", [value, constant])
        result = equal if result is None else g.op("Or", [result, equal])
    return result


_UNARY = {"sqrt": "Sqrt", "exp": "Exp", "log": "Log", "floor": "Floor", "ceil": "Ceil", "abs": "Abs"}


def _call(g, name: str, args: list):
    if name in _UNARY or name in ("log1p", "log10"):
        value = _tensor(g, _number(g, *args[0], name), "number")
        if name == "log1p":
            return g.op("Log", [g.op("Add", [value, g.const(1.0, np.float64)])]), "number"
        if name == "log10":
            return g.op("Div", [g.op("Log", [value]), g.const(math.log(10.0), np.float64)]), "number"
        return g.op(_UNARY[name], [value]), "number"
    if name == "clip":
        x = _tensor(g, _number(g, *args[0], "clip"), "number")
        for bound, compare in zip(args[1:], ("Less", "Greater")):
            if bound[1] == "null":
                continue
            limit = _tensor(g, _number(g, *bound, "clip"), "number")
            x = g.op("Where", [g.op(compare, [x, limit]), limit, x])
        return x, "number"
    if name == "where":
        (condition, condition_kind), (a, a_kind), (b, b_kind) = args
        if a_kind != b_kind:
            if "text" in (a_kind, b_kind):
                raise NotCompiled(f"where() choosing between {a_kind} and {b_kind}")
            a, b, a_kind = _number(g, a, a_kind, "where"), _number(g, b, b_kind, "where"), "number"
        truth = _truth(g, condition, condition_kind)
        return g.op("Where", [truth, _tensor(g, a, a_kind), _tensor(g, b, a_kind)]), a_kind
    if name in ("isnull", "notnull"):
        value, kind = args[0]
        if isinstance(value, _Const):
            raise NotCompiled(f"{name} of a constant")
        if kind == "number":
            missing = g.op("IsNaN", [value])
        elif kind == "text":
            missing = g.op("Equal", [value, g.const(np.array("", dtype=object))])
        else:
            missing = g.op("And", [value, g.op("Not", [value])])  # a boolean column is never missing
        return (missing if name == "isnull" else g.op("Not", [missing])), "boolean"
    if name == "fillna":
        (value, kind), (fill, fill_kind) = args
        if isinstance(value, _Const) or kind == "boolean":
            raise NotCompiled(f"fillna of a {'constant' if isinstance(value, _Const) else 'boolean'}")
        if kind == "text":
            if fill_kind != "text":
                raise NotCompiled("fillna of text with a non-text value")
            missing = g.op("Equal", [value, g.const(np.array("", dtype=object))])
        else:
            fill = _number(g, fill, fill_kind, "fillna")
            missing = g.op("IsNaN", [value])
        return g.op("Where", [missing, _tensor(g, fill, kind), value]), kind
    raise NotCompiled(f"function {name!r}")
