"""Which old name a name of the new statement becomes, and whether that rename is sound.

Evidence comes nearest first: the statement's own neighbours (its anchor, the statement after
it, its block's header), whose matches say what a name is at that very point; then the votes
of the enclosing function; then the whole file's. A rename `new -> old` is sound only when the
two names play the same role: `old` is bound at the spot, it is not already the image of
another name, and its binding has the shape of the new name's (the same constructor or call,
or at least the same kind of binding). Which attributes the statement uses on the name is
reported with a refusal, so the user sees what would have crashed (`opt.get_last_lr`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

import libcst as cst

from flor_flows import pyast
from flor_flows.propagate.matching import Matching
from flor_flows.propagate.scope import _parameters, bound_by
from flor_flows.propagate.statements import Module, Statement

UNSURE = 0.7  # confidence cap for a rename whose bindings differ in shape (below the warning)
_EMPTY = cst.Module(body=[])


_KINDS = {
    "param": "a parameter", "import": "an import", "for": "a loop variable",
    "with": "a `with` target", "def": "a function", "class": "a class",
}  # fmt: skip


@dataclass(frozen=True)
class Binding:
    """How a name got its value: an assignment's expression, or another kind of binding."""

    kind: str  # "assign", "param", "import", "def", "for", "with", "other"
    value: ast.expr | None = None

    def describe(self) -> str:
        """The binding in words for a refusal: its kind, or the call or expression it assigns."""
        if self.value is None:
            return _KINDS.get(self.kind, self.kind)
        if isinstance(self.value, ast.Call):
            return f"`{ast.unparse(self.value.func)}(...)`"
        code = ast.unparse(self.value)
        return f"`{code if len(code) <= 40 else code[:37] + '...'}`"


def _expression(value: cst.BaseExpression | ast.expr) -> ast.expr | None:
    """An assigned value as an `ast` expression, whichever reader read it."""
    if isinstance(value, ast.expr):
        return value
    try:
        return pyast.parse("(" + _EMPTY.code_for_node(value) + ")", mode="eval").body
    except SyntaxError:
        return None


def _small_statements(stmt: Statement) -> list:
    node = stmt.node
    if isinstance(node, cst.CSTNode):
        return list(getattr(node, "body", ())) if stmt.kind == "simple" else []
    return list(getattr(stmt, "group", None) or [node]) if stmt.kind == "simple" else []


def _binding_of(stmt: Statement, name: str) -> Binding | None:
    """The binding of `name` by `stmt`, if it binds it."""
    if name not in bound_by(stmt):
        return None
    if stmt.kind in ("def", "for", "with", "class"):
        return Binding(stmt.kind)
    for small in _small_statements(stmt):
        if isinstance(small, cst.Assign | ast.Assign) and len(small.targets) == 1:
            target = small.targets[0]
            target = target.target if isinstance(target, cst.AssignTarget) else target
            if getattr(target, "value", getattr(target, "id", None)) == name:
                value = _expression(small.value)
                return Binding("assign", value) if value is not None else Binding("other")
        if isinstance(small, cst.AugAssign | ast.AugAssign):
            return None  # `x += ...` keeps the kind of an earlier binding: look further back
        if isinstance(small, cst.Import | cst.ImportFrom | ast.Import | ast.ImportFrom):
            return Binding("import")
    return Binding("other")


def _scopes(scope: Statement | None) -> Iterator[Statement | None]:
    while scope is not None:
        yield scope
        scope = scope.function
    yield None


def binding(module: Module, name: str, scope: Statement | None, order: int) -> Binding | None:
    """The binding of `name` seen at a point: the last one before it in the innermost scope
    that binds it (any earlier one in an enclosing scope), a parameter, or None."""
    for level in _scopes(scope):
        if level is not None and name in _parameters(level.node):
            found = _last(module, name, level, order)
            return found or Binding("param")
        found = _last(module, name, level, order)
        if found is not None:
            return found
    return None


def _last(module: Module, name: str, level: Statement | None, order: int) -> Binding | None:
    for stmt in reversed(module.statements[:order]):
        if stmt.function is level:
            found = _binding_of(stmt, name)
            if found is not None:
                return found
    return None


def _callee(node: ast.expr | None) -> str:
    return ast.unparse(node.func) if isinstance(node, ast.Call) else ""


_LOOSE = {"for", "with"}  # bindings whose value cannot be told statically


def compare(
    new: Binding | None, old: Binding | None, renames: dict[str, str]
) -> tuple[str, bool] | None:
    """None when the bindings agree or cannot be told apart; else how they differ, and whether
    that is certain (another constructor, another call, another kind of value)."""
    if new is None or old is None or {new.kind, old.kind} & {"param", "other"}:
        return None  # a parameter takes whatever its caller passes
    differ = f"it is {new.describe()} in the new version, {old.describe()} in the old"
    if new.kind != old.kind:
        return differ, new.kind not in _LOOSE and old.kind not in _LOOSE
    if new.kind != "assign":
        return None
    a, b = _callee(new.value), _callee(old.value)
    if a and b:
        same = a.split(".")[-1] == b.split(".")[-1] or renames.get(a, a) == b
        return None if same else (differ, True)
    return (differ, True) if type(new.value) is not type(old.value) else None


class _Attributes(cst.CSTVisitor):
    def __init__(self, name: str) -> None:
        self.name, self.found = name, []

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        if isinstance(node.value, cst.Name) and node.value.value == self.name:
            self.found.append(node.attr.value)
        return True


def attributes(node: cst.CSTNode, name: str) -> list[str]:
    """The attributes and methods a statement uses on `name` (`scheduler.get_last_lr`)."""
    visitor = _Attributes(name)
    node.visit(visitor)
    return sorted(set(visitor.found))


def neighbour_evidence(matching: Matching, unit: Statement, name: str) -> list[str]:
    """Old names for `name` that the matches right around the statement imply: its anchor,
    the statement after it, and its block's header."""
    siblings = [s for s in unit.block.statements if s.log_name is None]
    before = [s for s in siblings if s.index < unit.index][-1:]
    after = [s for s in siblings if s.index > unit.index][:1]
    around = [*before, *after, *([unit.parent] if unit.parent is not None else [])]
    found = []
    for stmt in around:
        match = matching.get(stmt)
        if match is None or name not in stmt.names:
            continue
        if stmt.shape == match.old.shape:
            found += [o for n, o in zip(stmt.names, match.old.names, strict=True) if n == name]
        elif name in match.old.names:  # an update that kept the name
            found.append(name)
    return list(dict.fromkeys(found))
