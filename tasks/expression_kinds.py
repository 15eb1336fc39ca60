"""What kind of value an expression makes, from its columns' kinds: arithmetic on text refused.

The whitelist of :mod:`shardflow.tasks.expressions` decides which operations may appear; this
decides which values they may take. ``*`` repeats text and lists and ``+`` concatenates them,
so ``cat * (id + id + ...)`` grows every row without bound: it is refused before any worker
evaluates it, naming the key, the operator and the column.
"""

from __future__ import annotations

from shardflow.tasks.expressions import NUMBER_FUNCTIONS, Expression, ExpressionError

#: Kinds of value for :func:`check_kinds`: a column's kind (``"string"`` reads as ``"text"``),
#: and that of an expression's value. ``"nested"``: lists, structs, maps.
VALUE_KINDS = ("number", "boolean", "datetime", "text", "nested", "unknown")
#: Kinds that arithmetic refuses: ``*`` repeats text and lists, ``+`` concatenates them, ``%``
#: formats text, so an innocent-looking expression can grow every row without bound.
_NOT_ARITHMETIC = ("text", "nested")
_SYMBOLS = {
    "Add": "+",
    "Sub": "-",
    "Mult": "*",
    "Div": "/",
    "FloorDiv": "//",
    "Mod": "%",
    "Pow": "**",
    "BitAnd": "&",
    "BitOr": "|",
}
#: Functions that compute on numbers (the others compare, select or fill, which text may).
_NUMERIC_FUNCTIONS = ("abs", *NUMBER_FUNCTIONS)


def check_kinds(expression: Expression, column_kinds, key: str = "expression") -> str:
    """The kind of ``expression``'s value, refusing arithmetic on text.

    Called on the client, before any partition is read, with the kind each column has
    when the expression runs (as the ETL types it).

    Parameters
    ----------
    expression : Expression
        A parsed expression (:func:`parse_expression`).
    column_kinds : mapping
        Column name -> one of :data:`VALUE_KINDS` (or ``"string"``); a column not in it is
        ``"unknown"`` and passes.
    key : str
        The config key the expression came from, named in errors.

    Returns
    -------
    str
        One of :data:`VALUE_KINDS`.

    Raises
    ------
    ExpressionError
        One line naming ``key``, the operator or function, and the text column (or literal).

    Examples
    --------
    >>> from shardflow.tasks.expressions import parse_expression
    >>> kinds = {"cat": "text", "id": "number"}
    >>> check_kinds(parse_expression("(cat == 'x') * id"), kinds)
    'number'
    >>> try:
    ...     check_kinds(parse_expression("cat * (id + id)"), kinds, "features.derived.blowup")
    ... except ExpressionError as err:
    ...     print(err)
    config key 'features.derived.blowup': '*' on text column 'cat'; arithmetic takes numbers (list the column under
    features.numeric, or compare it: cat == 'x')
    """
    kinds = {name: "text" if kind == "string" else kind for name, kind in dict(column_kinds).items()}
    return _Kinds(key, kinds).kind(expression.tree)[0]


class _Kinds:
    """Infers the kind of each node of an expression tree: ``(kind, origin)``, where
    ``origin`` is ``("column", name)`` or ``("literal", value)`` for a text value (named in
    the refusal), else None."""

    def __init__(self, key: str, column_kinds: dict):
        self.key, self.column_kinds = key, column_kinds

    def refuse(self, what: str, value) -> None:
        kind, origin = value
        if origin and origin[0] == "column":
            name = origin[1]
            shown = name if name.isidentifier() else f"`{name}`"
            fix = (
                f"list the column under features.numeric, or compare it: {shown} == 'x'"
                if kind == "text"
                else "a column of lists or structs holds no numbers; flatten it before the ETL"
            )
            raise ExpressionError(
                f"config key '{self.key}': '{what}' on {kind} column {name!r}; arithmetic takes numbers ({fix})"
            )
        literal = repr(origin[1]) if origin else "'x'"
        raise ExpressionError(
            f"config key '{self.key}': '{what}' on the text {literal}; arithmetic takes "
            f"numbers (compare text instead: column == {literal})"
        )

    def kind(self, node) -> tuple:
        tag = node[0]
        if tag == "column":
            kind = self.column_kinds.get(node[1], "unknown")
            return kind, ("column", node[1]) if kind in _NOT_ARITHMETIC else None
        if tag == "const":
            value = node[1]
            if isinstance(value, bool):
                return "boolean", None
            if isinstance(value, str):
                return "text", ("literal", value)
            return ("unknown", None) if value is None else ("number", None)
        if tag == "binary":
            left, right = self.kind(node[2]), self.kind(node[3])
            for side in (left, right):
                if side[0] in _NOT_ARITHMETIC:
                    self.refuse(_SYMBOLS.get(node[1], node[1]), side)
            kinds = {left[0], right[0]}
            if kinds <= {"number", "boolean"}:
                return "number", None
            return ("datetime" if "datetime" in kinds else "unknown"), None
        if tag == "neg":
            operand = self.kind(node[1])
            if operand[0] in _NOT_ARITHMETIC:
                self.refuse("-", operand)
            return ("number" if operand[0] == "boolean" else operand[0]), None
        if tag == "compare":
            self.kind(node[2]), self.kind(node[3])  # text compares; arithmetic inside it is still checked
            return "boolean", None
        if tag in ("not", "isin"):
            self.kind(node[1])
            return "boolean", None
        if tag in ("and", "or"):
            for value in node[1]:
                self.kind(value)
            return "boolean", None
        if tag == "call":
            name, args = node[1], [self.kind(a) for a in node[2]]
            if name in _NUMERIC_FUNCTIONS:
                if args[0][0] in _NOT_ARITHMETIC:
                    self.refuse(name, args[0])
                return "number", None
            if name in ("isnull", "notnull"):
                return "boolean", None
            if name == "clip":
                return args[0]
            if name in ("where", "fillna"):  # either value may come out: text in, text out
                values = args[1:] if name == "where" else args
                return _union(values)
        return "unknown", None


def _union(values: list) -> tuple:
    """The kind of a value that is one of ``values`` row by row (``where``, ``fillna``)."""
    for value in values:
        if value[0] in _NOT_ARITHMETIC:
            return value
    kinds = {value[0] for value in values}
    if kinds <= {"number", "boolean"}:
        return ("boolean" if kinds == {"boolean"} else "number"), None
    return (kinds.pop() if len(kinds) == 1 else "unknown"), None


def arrow_kind(arrow_type) -> str:
    """The kind (see :data:`VALUE_KINDS`) of a column read as ``arrow_type``."""
    import pyarrow as pa

    types = pa.types
    if types.is_dictionary(arrow_type):
        return arrow_kind(arrow_type.value_type)
    if types.is_boolean(arrow_type):
        return "boolean"
    if types.is_integer(arrow_type) or types.is_floating(arrow_type) or types.is_decimal(arrow_type):
        return "number"
    if types.is_temporal(arrow_type):
        return "datetime"
    if (
        types.is_string(arrow_type)
        or types.is_large_string(arrow_type)
        or types.is_binary(arrow_type)
        or types.is_large_binary(arrow_type)
        or types.is_fixed_size_binary(arrow_type)
    ):
        return "text"
    if types.is_nested(arrow_type):
        return "nested"
    return "unknown"
