"""Config expressions (``features.derived``, ``target.expression``), parsed into a whitelist.

A config is untrusted text: an expression must never reach ``eval``, ``DataFrame.eval``
or anything that resolves attributes. :func:`parse_expression` turns the text into a
small tree of plain tuples, accepting only

- column names (``distance``, or backticked ``\\`dist ance\\```; never dunder names),
- numeric, string and boolean literals,
- arithmetic ``+ - * / // % **`` and unary ``-``/``+``,
- comparisons ``== != < <= > >=`` (chained too) and ``in``/``not in`` a list of literals,
- boolean ``and or not`` (also written ``& | ~``), and ``a if condition else b``,
- the functions in :data:`FUNCTIONS`.

Anything else — attribute access, subscripts, other calls, lambdas, comprehensions —
is refused with one line naming the config key and the offending piece. The tree is
built once, on the client, and :func:`evaluate` walks it on each partition (pandas or
cuDF) with ordinary column operations.

Nor may a whitelisted expression exhaust a worker: numeric literals and constant
sub-expressions are float64 (``2 ** 2 ** 64`` is ``inf``, computed once on the client),
arithmetic on a text literal is refused when parsed, and
:func:`~shardflow.tasks.expression_kinds.check_kinds` refuses
arithmetic on a text column from the columns' kinds, before any partition is read
(text times n repeats it n times: ``cat * (id + id + ...)`` filled a worker's memory).
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass

import numpy as np

from shardflow.core.errors import ShardflowError

#: Functions an expression may call: name -> (number of arguments, description).
FUNCTIONS = {
    "abs": (1, "absolute value"),
    "sqrt": (1, "square root"),
    "exp": (1, "e to the power x"),
    "log": (1, "natural logarithm"),
    "log1p": (1, "log(1 + x)"),
    "log10": (1, "base-10 logarithm"),
    "floor": (1, "round down"),
    "ceil": (1, "round up"),
    "clip": (3, "clip(x, low, high): x limited to [low, high] (null: open)"),
    "where": (3, "where(condition, a, b): a where condition holds, else b"),
    "isnull": (1, "true where x is missing"),
    "notnull": (1, "true where x is present"),
    "fillna": (2, "fillna(x, value): missing x replaced by value"),
}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}
_UFUNCS = {
    "sqrt": np.sqrt,
    "exp": np.exp,
    "log": np.log,
    "log1p": np.log1p,
    "log10": np.log10,
    "floor": np.floor,
    "ceil": np.ceil,
}
#: The functions that take numbers only (``abs`` does too).
NUMBER_FUNCTIONS = tuple(_UFUNCS)

ALLOWED = (
    "column names, numbers, strings, True/False, + - * / // % **, comparisons, "
    "and/or/not (& | ~), 'a if condition else b', 'x in [..]', and the functions " + ", ".join(FUNCTIONS)
)


class ExpressionError(ShardflowError, ValueError):
    """A config expression is not valid or uses something outside the whitelist."""


@dataclass(frozen=True)
class Expression:
    """A parsed, whitelisted expression: its source text, its tree and the columns it reads.

    Examples
    --------
    >>> e = parse_expression("`trip km` / (duration + 1)")
    >>> e.names
    ('trip km', 'duration')
    >>> e.tree[0]
    'binary'
    """

    source: str
    tree: tuple
    names: tuple


def parse_expression(text: str, key: str = "expression") -> Expression:
    """Parse ``text`` into an :class:`Expression`, refusing everything not whitelisted.

    Parameters
    ----------
    text : str
        The expression, in the syntax of pandas ``eval`` (backticks around names
        with spaces).
    key : str
        The config key it came from, named in errors.

    Raises
    ------
    ExpressionError
        One line naming ``key`` and the offending piece.

    Examples
    --------
    >>> parse_expression("arr_delay > 15").names
    ('arr_delay',)
    >>> try:
    ...     parse_expression("distance.to_csv('/tmp/x')", "features.derived.x")
    ... except ExpressionError as err:
    ...     print(str(err).split(";")[0])
    config key 'features.derived.x': 'distance.to_csv' is not allowed in an expression (attribute access)
    """
    if not isinstance(text, str) or not text.strip():
        raise ExpressionError(f"config key '{key}': an expression must be non-empty text, got {text!r}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(
            f"config key '{key}': an expression of {len(text)} characters is longer than "
            f"{MAX_LENGTH}; derive it in steps (one features.derived entry per step)"
        )
    source, quoted = _placeholders(text, key)
    try:
        node = ast.parse(source, mode="eval").body
        names: list[str] = []
        tree = _Builder(key, source, quoted, names).build(node)
    except SyntaxError as err:
        raise ExpressionError(f"config key '{key}': {text!r} is not a valid expression ({err.msg})") from None
    except (RecursionError, MemoryError):
        raise ExpressionError(f"config key '{key}': the expression is nested too deeply; derive it in steps") from None
    if not names:
        raise ExpressionError(
            f"config key '{key}': {text!r} refers to no column; an expression computes a value per row from columns"
        )
    return Expression(text, tree, tuple(names))


#: Longest expression accepted (characters), and deepest nesting of its tree.
MAX_LENGTH = 2000
MAX_DEPTH = 100


def _placeholders(text: str, key: str) -> tuple:
    """``text`` with each backticked name (outside string literals) replaced by a
    placeholder that cannot clash with anything in it, and the placeholders' names.

    ``&`` and ``|`` become ``and``/``or``, as pandas ``eval`` reads them: looser than
    comparisons, so ``a > 1 & b < 2`` means ``(a > 1) and (b < 2)``.
    """
    prefix = "bt"
    while prefix in text:
        prefix += "x"
    quoted, out, i, quote = {}, [], 0, None
    while i < len(text):
        ch = text[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(text):
                out.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            out.append(ch)
        elif ch in "&|":
            out.append(" and " if ch == "&" else " or ")
        elif ch == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise ExpressionError(f"config key '{key}': {text!r} has an unclosed backtick (`)")
            if end == i + 1:
                raise ExpressionError(f"config key '{key}': {text!r} has an empty backticked name")
            placeholder = f"{prefix}{len(quoted)}"
            quoted[placeholder] = text[i + 1 : end]
            out.append(f" {placeholder} ")
            i = end
        else:
            out.append(ch)
        i += 1
    return "".join(out).strip(), quoted


def expression_names(text: str) -> list[str]:
    """Column names an expression refers to, in order of first use.

    Examples
    --------
    >>> expression_names("`dep time` > 3 and dist < dep_delay")
    ['dep time', 'dist', 'dep_delay']
    """
    return list(parse_expression(text).names)


def _as_float64(value) -> float:
    """A numeric literal as float64; an integer past float64's range is ``inf``, as ``1e999``
    is (``float`` raises on it, and a huge Python int would be slow on every row)."""
    try:
        return float(value)
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


class _Builder:
    def __init__(self, key, source, quoted, names):
        #: ``source`` is the text as parsed (backticked names replaced by placeholders).
        self.key, self.source, self.quoted, self.names = key, source, quoted, names

    def refuse(self, node, why: str):
        piece = ast.get_source_segment(self.source, node) or type(node).__name__
        for placeholder, name in self.quoted.items():
            piece = piece.replace(f" {placeholder} ", f"`{name}`").replace(placeholder, f"`{name}`")
        raise ExpressionError(
            f"config key '{self.key}': {piece.strip()!r} is not allowed in an expression ({why}); allowed: {ALLOWED}"
        )

    depth = 0

    def build(self, node) -> tuple:
        """The tree of ``node``, refusing nesting deeper than :data:`MAX_DEPTH` (evaluation
        recurses on the workers, whose stacks are not the client's)."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise ExpressionError(
                    f"config key '{self.key}': the expression is nested more than {MAX_DEPTH} "
                    "levels deep; derive it in steps"
                )
            return self._build(node)
        finally:
            self.depth -= 1

    def _build(self, node) -> tuple:
        if isinstance(node, ast.Name):
            name = self.quoted.get(node.id, node.id)
            if name in ("True", "False"):
                return ("const", name == "True")
            if name.startswith("__") and name.endswith("__") and node.id not in self.quoted:
                self.refuse(node, "dunder names")
            if name not in self.names:
                self.names.append(name)
            return ("column", name)
        if isinstance(node, ast.Constant):
            if isinstance(node.value, (bool, str)):
                return ("const", node.value)
            if isinstance(node.value, (int, float)):
                return ("const", _as_float64(node.value))  # numbers are float64, as the features are
            self.refuse(node, f"{type(node.value).__name__} literals")
        if isinstance(node, ast.BinOp):
            op = _BINARY.get(type(node.op))
            if op is None:
                self.refuse(node, f"operator {type(node.op).__name__}")
            left, right = self.build(node.left), self.build(node.right)
            if any(side[0] == "const" and isinstance(side[1], str) for side in (left, right)):
                self.refuse(node, "arithmetic on text")
            if left[0] == right[0] == "const":  # folded now, in float64: no huge integers on workers
                with np.errstate(all="ignore"):
                    return ("const", float(op(np.float64(left[1]), np.float64(right[1]))))
            return ("binary", type(node.op).__name__, left, right)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return ("not", self.build(node.operand))
            if isinstance(node.op, ast.USub):
                return ("neg", self.build(node.operand))
            if isinstance(node.op, ast.UAdd):
                return self.build(node.operand)
        if isinstance(node, ast.BoolOp):
            kind = "and" if isinstance(node.op, ast.And) else "or"
            return (kind, tuple(self.build(v) for v in node.values))
        if isinstance(node, ast.Compare):
            terms, left = [], node.left
            for op, right in zip(node.ops, node.comparators):
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(right, (ast.List, ast.Tuple, ast.Set)) or not all(
                        isinstance(e, ast.Constant) and isinstance(e.value, (int, float, str, bool)) for e in right.elts
                    ):
                        self.refuse(right, "'in' takes a list of literals")
                    term = ("isin", self.build(left), tuple(e.value for e in right.elts))
                    terms.append(("not", term) if isinstance(op, ast.NotIn) else term)
                elif type(op) in _COMPARE:
                    terms.append(("compare", type(op).__name__, self.build(left), self.build(right)))
                else:
                    self.refuse(node, f"comparison {type(op).__name__}")
                left = right
            return terms[0] if len(terms) == 1 else ("and", tuple(terms))
        if isinstance(node, ast.IfExp):
            return ("call", "where", (self.build(node.test), self.build(node.body), self.build(node.orelse)))
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Attribute):
                self.refuse(node.func, "attribute access")
            if not isinstance(node.func, ast.Name) or node.func.id in self.quoted:
                self.refuse(node.func, "only the listed functions may be called")
            name = node.func.id
            if name not in FUNCTIONS:
                self.refuse(node.func, f"function {name!r} is not in the list")
            if node.keywords:
                self.refuse(node, "keyword arguments")
            arity = FUNCTIONS[name][0]
            if len(node.args) != arity:
                self.refuse(node, f"{name} takes {arity} argument{'s' if arity > 1 else ''}")
            args = []
            for i, arg in enumerate(node.args):
                if name == "clip" and i > 0 and isinstance(arg, ast.Constant) and arg.value is None:
                    args.append(("const", None))
                else:
                    args.append(self.build(arg))
            return ("call", name, tuple(args))
        if isinstance(node, ast.Attribute):
            self.refuse(node, "attribute access")
        if isinstance(node, ast.Subscript):
            self.refuse(node, "subscripts")
        if isinstance(node, ast.Lambda):
            self.refuse(node, "lambdas")
        self.refuse(node, f"{type(node).__name__} expressions")


def evaluate(expression: Expression, frame):
    """Compute ``expression`` on one partition (pandas or cuDF) from its tree alone.

    Examples
    --------
    >>> import pandas as pd
    >>> frame = pd.DataFrame({"a": [1.0, 4.0, None], "b c": [2, 0, 1]})
    >>> evaluate(parse_expression("sqrt(a) * `b c` if a > 1 else -1"), frame).tolist()
    [-1.0, 0.0, -1.0]
    >>> evaluate(parse_expression("isnull(a) or `b c` in [0]"), frame).tolist()
    [False, True, True]
    """
    value = _eval(expression.tree, frame)
    if np.isscalar(value) or value is None:
        value = _broadcast(value, frame)
    return value


def _broadcast(value, frame):
    """A constant as a column of ``frame``'s length and index (same backend)."""
    name = "_constant"
    while name in frame.columns:
        name += "_"
    return frame[[]].assign(**{name: value})[name]


def _eval(node, frame):
    kind = node[0]
    if kind == "column":
        return frame[node[1]]
    if kind == "const":
        return node[1]
    if kind == "binary":
        return _BINARY[getattr(ast, node[1])](_eval(node[2], frame), _eval(node[3], frame))
    if kind == "compare":
        return _COMPARE[getattr(ast, node[1])](_eval(node[2], frame), _eval(node[3], frame))
    if kind == "neg":
        return -_eval(node[1], frame)
    if kind == "not":
        value = _eval(node[1], frame)
        return (not value) if isinstance(value, (bool, np.bool_)) else ~_as_bool(value)
    if kind in ("and", "or"):
        values = [_eval(v, frame) for v in node[1]]
        combine = operator.and_ if kind == "and" else operator.or_
        result = values[0]
        for v in values[1:]:
            result = combine(_as_bool(result), _as_bool(v))
        return result
    if kind == "isin":
        value = _eval(node[1], frame)
        if np.isscalar(value):
            return value in node[2]
        return value.isin(list(node[2]))
    if kind == "call":
        return _call(node[1], [_eval(a, frame) for a in node[2]], frame)
    raise ExpressionError(f"unknown expression node {kind!r}")  # only reachable with a forged tree


def _as_bool(value):
    if isinstance(value, (bool, np.bool_)) or np.isscalar(value):
        return bool(value)
    if value.dtype.kind == "b":
        return value
    if hasattr(value, "str") and (value.dtype == object or str(value.dtype) in ("str", "string")):
        return value.notna() & (value.str.len() > 0)  # text: true when not empty
    return value.fillna(0).astype(bool) if hasattr(value, "fillna") else value.astype(bool)


def _call(name, args, frame):
    if name in _UFUNCS:
        return _UFUNCS[name](args[0])
    if name == "abs":
        return abs(args[0])
    if name == "clip":
        x = args[0] if not np.isscalar(args[0]) else _broadcast(args[0], frame)
        return x.clip(lower=args[1], upper=args[2])
    if name == "where":
        condition, a, b = args
        if np.isscalar(condition):
            return a if condition else b
        a = _broadcast(a, frame) if np.isscalar(a) else a
        return a.where(_as_bool(condition), b)
    if name in ("isnull", "notnull"):
        x = args[0]
        if np.isscalar(x) or x is None:
            missing = x is None or (isinstance(x, float) and np.isnan(x))
            return missing if name == "isnull" else not missing
        return x.isna() if name == "isnull" else x.notna()
    if name == "fillna":
        x = args[0] if not np.isscalar(args[0]) else _broadcast(args[0], frame)
        return x.fillna(args[1]) if np.isscalar(args[1]) else x.where(x.notna(), args[1])
    raise ExpressionError(f"unknown function {name!r}")  # only reachable with a forged tree
