"""The `--where` compiler: a filter over the wide table, compiled without evaluating user text.

The expression is parsed with `ast`, and only comparisons of columns with literals, joined by
and/or/not, are compiled, into vectorised pandas operations over the table's rows. A column is
a name (`lr`), or one of the table's prefixed columns: `arg.lr` (an arg whose name a logged
value takes) and `data.batch` (a data batch).
"""

from __future__ import annotations

import ast
import functools
import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from flor_flows import pyast
from flor_flows.errors import FlorError, RequestError

Predicate = Callable[[pd.DataFrame], pd.Series]  # a nullable boolean per row (NA: unknown)
Operand = Callable[[pd.DataFrame], Any]  # a column of the frame, or a literal


@dataclass(frozen=True)
class Where:
    """A parsed `--where` filter: the columns it reads and a vectorised evaluation."""

    expression: str
    names: tuple[str, ...]  # the columns it reads, in order of appearance
    _predicate: Predicate = field(repr=False, compare=False)

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        """True for the rows of `frame` that satisfy the filter; a missing value never does."""
        absent = [name for name in self.names if name not in frame.columns]
        if absent:
            raise RequestError(f"--where {self.expression!r}: no column {', '.join(absent)}")
        try:
            result = self._predicate(frame)
        except TypeError as exc:  # e.g. a number column compared with a string
            raise RequestError(f"--where {self.expression!r}: {exc}") from exc
        return result.fillna(False).astype(bool)


_ORDERED = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}  # fmt: skip
_CONSTRUCTS = {
    ast.Call: "function calls", ast.Attribute: "attribute access", ast.Subscript: "subscripts",
    ast.Lambda: "lambdas", ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings", ast.NamedExpr: "assignment expressions (:=)",
    ast.BinOp: "arithmetic", ast.IfExp: "conditional expressions", ast.Starred: "unpacking",
    ast.Dict: "dict literals", ast.Set: "set literals", ast.Await: "await",
    ast.Compare: "a comparison used as a value", ast.BoolOp: "and/or used as a value",
}  # fmt: skip
_LITERALS = (int, float, str, bool, type(None))
_PREFIXES = ("arg", "data")  # of the wide table's dotted columns: arg.lr, data.batch
_HINT = "a filter compares columns with literals, e.g. `lr < 0.01 and seed in (1, 2)`"


def parse_where(expression: str) -> Where:
    """Parse a filter over the wide table; FlorError for anything but comparisons and logic.

    Accepted: comparisons (`<`, `<=`, `>`, `>=`, `==`, `!=`, chained, and `in`/`not in` a
    list or tuple of literals) of column names, literals and negated numbers or columns,
    joined by `and`, `or`, `not` and parentheses. `x == None` / `x != None` test whether
    a value is missing. Logic is three-valued, as in SQL: a comparison with a missing value
    is unknown, `not` of unknown stays unknown, and only true rows are selected.
    """
    text = expression.strip()
    try:
        tree = pyast.parse(text, mode="eval")
        predicate = _Compiler(text).predicate(tree.body)
    except SyntaxError as exc:
        raise RequestError(
            f"--where {expression!r} is not an expression: {exc.msg} (column {exc.offset})"
        ) from exc
    except ValueError as exc:  # null bytes, integer literals past the digit limit
        raise RequestError(f"--where {expression!r}: {exc}") from exc
    except RecursionError as exc:  # the parser's, or ours
        raise RequestError(f"--where {expression[:40]!r}... is nested too deeply") from exc
    found = (node for node in ast.walk(tree) if _column_name(node) is not None)
    ordered = sorted(found, key=lambda node: (node.lineno, node.col_offset))
    return Where(text, tuple(dict.fromkeys(_column_name(node) for node in ordered)), predicate)


def _column_name(node: ast.AST) -> str | None:
    """The column `node` names: `lr`, `arg.lr` or `data.batch`; None if it names none."""
    if isinstance(node, ast.Name) and node.id not in _PREFIXES:
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}" if node.value.id in _PREFIXES else None
    return None


class _Compiler:
    """Turns the accepted subset of Python expressions into closures over a DataFrame."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def refuse(self, node: ast.AST, what: str | None = None) -> FlorError:
        what = what or f"{_CONSTRUCTS.get(type(node), type(node).__name__)} cannot be used"
        line = self.lines[node.lineno - 1].encode()  # ast offsets count UTF-8 bytes
        column = len(line[: node.col_offset].decode(errors="ignore")) + 1
        place = f"line {node.lineno}, column {column}" if node.lineno > 1 else f"column {column}"
        return FlorError(f"--where: {what} (at {place}); {_HINT}")

    def predicate(self, node: ast.expr) -> Predicate:
        if isinstance(node, ast.BoolOp):
            parts = [self.predicate(value) for value in node.values]
            join = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            return lambda frame: functools.reduce(join, (part(frame) for part in parts))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            inner = self.predicate(node.operand)
            return lambda frame: ~inner(frame)
        if isinstance(node, ast.Compare):
            pairs = itertools.pairwise([node.left, *node.comparators])  # a < b < c: a < b, b < c
            tests = [
                self.comparison(node, op, left, right)
                for op, (left, right) in zip(node.ops, pairs, strict=True)
            ]
            return lambda frame: functools.reduce(operator.and_, (t(frame) for t in tests))
        if isinstance(node, ast.Constant) or _column_name(node) is not None:
            kind = "a literal" if isinstance(node, ast.Constant) else "a column"
            raise self.refuse(node, f"{kind} alone is not a condition: compare it")
        raise self.refuse(node)

    def comparison(
        self, node: ast.Compare, op: ast.cmpop, left: ast.expr, right: ast.expr
    ) -> Predicate:
        if isinstance(op, ast.In | ast.NotIn):
            return _membership(self.operand(left), self.values(right), isinstance(op, ast.NotIn))
        if type(op) not in _ORDERED:
            symbol = "is not" if isinstance(op, ast.IsNot) else "is"
            raise self.refuse(node, f"the `{symbol}` operator is not allowed (use == or !=)")
        nones = [side for side in (left, right) if _is_none(side)]
        if nones:
            if not isinstance(op, ast.Eq | ast.NotEq):
                raise self.refuse(nones[0], "None compares only with == and !=")
            other = self.operand(right if _is_none(left) else left)
            return _missing_test(other, isinstance(op, ast.NotEq))
        return _ordered(_ORDERED[type(op)], self.operand(left), self.operand(right))

    def operand(self, node: ast.expr) -> Operand:
        name = self.column(node)
        if name is not None:
            return lambda frame: frame[name]
        negated = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
        if negated and (name := self.column(node.operand)) is not None:
            return lambda frame: -frame[name]
        value = self.literal(node)
        return lambda frame: value

    def column(self, node: ast.expr) -> str | None:
        """The column `node` names (see `_column_name`); a prefix alone is refused."""
        if isinstance(node, ast.Name) and node.id in _PREFIXES:
            raise self.refuse(node, f"`{node.id}` alone is not a column: write {node.id}.NAME")
        return _column_name(node)

    def literal(self, node: ast.expr) -> Any:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = node.operand
            if isinstance(inner, ast.Constant) and type(inner.value) in (int, float):
                return -inner.value
            raise self.refuse(node, "unary minus applies to a number or a column")
        if isinstance(node, ast.UnaryOp):
            raise self.refuse(node, f"the unary {type(node.op).__name__} operator is not allowed")
        if isinstance(node, ast.Constant):
            if type(node.value) not in _LITERALS:
                raise self.refuse(node, f"{type(node.value).__name__} literals are not allowed")
            return node.value
        raise self.refuse(node)

    def values(self, node: ast.expr) -> list[Any]:
        if not isinstance(node, ast.List | ast.Tuple):
            raise self.refuse(node, "`in` takes a list or tuple of literals")
        return [self.literal(element) for element in node.elts]


def _is_none(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _column(value: Any, index: pd.Index) -> pd.Series:
    """A column as it is, a literal broadcast to one."""
    return value if isinstance(value, pd.Series) else pd.Series([value] * len(index), index=index)


def _ordered(compare: Callable[[Any, Any], Any], left: Operand, right: Operand) -> Predicate:
    """`left <op> right` per row, unknown (NA) where either side is missing."""

    def test(frame: pd.DataFrame) -> pd.Series:
        a, b = left(frame), right(frame)
        present = pd.Series(True, index=frame.index)
        for side in (a, b):
            if isinstance(side, pd.Series):
                present &= side.notna()
        result = pd.Series(pd.NA, index=frame.index, dtype="boolean")
        if present.any():  # compare only present values: None < "a" would raise
            a, b = (x[present] if isinstance(x, pd.Series) else x for x in (a, b))
            result[present] = np.asarray(compare(a, b), dtype=bool)
        return result

    return test


def _membership(left: Operand, values: list[Any], negate: bool) -> Predicate:
    def test(frame: pd.DataFrame) -> pd.Series:
        column = _column(left(frame), frame.index)
        found = column.isin(values).astype("boolean").mask(column.isna())
        return ~found if negate else found

    return test


def _missing_test(operand: Operand, negate: bool) -> Predicate:
    def test(frame: pd.DataFrame) -> pd.Series:
        missing = _column(operand(frame), frame.index).isna().astype("boolean")
        return ~missing if negate else missing

    return test
