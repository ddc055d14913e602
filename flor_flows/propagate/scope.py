"""Names: what a statement reads, and what is bound at a point of a module.

Deliberately simple static scoping, erring on the side of "not bound": a name counts as
bound at a point in a function when the function binds it (assignment, loop or `with`
target, import, def, parameter) in a statement that comes before the point, or when an
enclosing function or the module binds it anywhere; at module level, only bindings before
the point count. A name bound only later in an enclosing loop's body is not bound: the
first iteration would fail.
"""

from __future__ import annotations

import ast

import libcst as cst

from flor_flows.propagate.astscope import ast_bound_by, ast_parameters
from flor_flows.propagate.statements import BUILTINS, Module, Statement


class _Bindings(cst.CSTVisitor):
    """Names bound by one statement's own header or line (not by the bodies inside it)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def _targets(self, node: cst.CSTNode | None) -> None:
        if node is None:
            return
        for name in _names_in(node):
            self.names.add(name)

    def visit_Assign(self, node: cst.Assign) -> bool:
        for target in node.targets:
            self._targets(target.target)
        return True

    def visit_AnnAssign(self, node: cst.AnnAssign) -> bool:
        if node.value is not None:
            self._targets(node.target)
        return True

    def visit_AugAssign(self, node: cst.AugAssign) -> bool:
        self._targets(node.target)
        return True

    def visit_NamedExpr(self, node: cst.NamedExpr) -> bool:
        self._targets(node.target)
        return True

    def visit_For(self, node: cst.For) -> bool:
        self._targets(node.target)
        return False

    def visit_With(self, node: cst.With) -> bool:
        for item in node.items:
            if item.asname is not None:
                self._targets(item.asname.name)
        return False

    def visit_ExceptHandler(self, node: cst.ExceptHandler) -> bool:
        if node.name is not None:
            self._targets(node.name.name)
        return False

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.names.add(node.name.value)
        return False

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.names.add(node.name.value)
        return False

    def visit_Import(self, node: cst.Import) -> bool:
        for alias in node.names:
            if alias.asname is not None:
                self._targets(alias.asname.name)
            else:
                self.names.add(cst.Module([]).code_for_node(alias.name).split(".")[0])
        return False

    def visit_ImportFrom(self, node: cst.ImportFrom) -> bool:
        if not isinstance(node.names, cst.ImportStar):
            for alias in node.names:
                bound = alias.asname.name if alias.asname is not None else alias.name
                self.names.add(cst.Module([]).code_for_node(bound))
        return False

    def visit_Global(self, node: cst.Global) -> bool:
        self.names.update(item.name.value for item in node.names)
        return False

    def visit_Nonlocal(self, node: cst.Nonlocal) -> bool:
        self.names.update(item.name.value for item in node.names)
        return False

    # bodies of compound statements and nested scopes are not this statement's bindings
    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> bool:
        return False

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        return False

    def visit_ListComp(self, node: cst.ListComp) -> bool:
        return False

    def visit_SetComp(self, node: cst.SetComp) -> bool:
        return False

    def visit_DictComp(self, node: cst.DictComp) -> bool:
        return False

    def visit_GeneratorExp(self, node: cst.GeneratorExp) -> bool:
        return False


def _names_in(target: cst.CSTNode) -> list[str]:
    """The plain names an assignment target binds (`a, (b, *c)` -> a, b, c; not `x.y`, `x[i]`)."""
    if isinstance(target, cst.Name):
        return [target.value]
    if isinstance(target, cst.Tuple | cst.List):
        return [n for element in target.elements for n in _names_in(element.value)]
    if isinstance(target, cst.StarredElement):
        return _names_in(target.value)
    return []


def bound_by(stmt: Statement) -> set[str]:
    """The names a statement binds (cached: a module is checked once per statement placed)."""
    if stmt.bound is None:
        if isinstance(stmt.node, cst.CSTNode):
            visitor = _Bindings()
            stmt.node.visit(visitor)
            stmt.bound = frozenset(visitor.names)
        else:
            stmt.bound = frozenset(ast_bound_by(stmt))
    return set(stmt.bound)


def _parameters(node: cst.FunctionDef | cst.Lambda | ast.AST) -> set[str]:
    if isinstance(node, ast.AST):
        return ast_parameters(node)
    params = node.params
    found = [*params.posonly_params, *params.params, *params.kwonly_params]
    names = {p.name.value for p in found}
    for star in (params.star_arg, params.star_kwarg):
        if isinstance(star, cst.Param):
            names.add(star.name.value)
    return names


def bound_at(module: Module, owner: Statement | None, order: int) -> set[str]:
    """Names bound at a point: in the block of `owner`, before statement number `order`."""
    names = set(BUILTINS)
    innermost = owner.scope if owner is not None else None
    enclosing = set()
    scope = innermost
    while scope is not None:
        enclosing.add(id(scope))
        names |= _parameters(scope.node)
        scope = scope.function
    for stmt in module.statements:
        home = stmt.function
        if home is None:  # module level: bound anywhere for code in functions
            if innermost is not None or stmt.order < order:
                names |= bound_by(stmt)
        elif home is innermost:
            if stmt.order < order:
                names |= bound_by(stmt)
        elif id(home) in enclosing:
            names |= bound_by(stmt)
    return names


class _Reads(cst.CSTVisitor):
    """Names an expression or statement reads that it does not bind itself."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self.local: set[str] = set()

    def visit_Attribute(self, node: cst.Attribute) -> bool:
        node.value.visit(self)
        return False

    def visit_Arg(self, node: cst.Arg) -> bool:
        node.value.visit(self)
        return False

    def visit_CompFor(self, node: cst.CompFor) -> bool:
        self.local.update(_names_in(node.target))
        return True

    def visit_Lambda(self, node: cst.Lambda) -> bool:
        self.local.update(_parameters(node))
        return True

    def visit_Name(self, node: cst.Name) -> bool:
        self.reads.add(node.value)
        return False


def free_names(node: cst.CSTNode) -> set[str]:
    """The names a statement (or block) needs bound around it."""
    visitor = _Reads()
    node.visit(visitor)
    inner = set()
    for stmt_node in _simple_statements(node):
        binder = _Bindings()
        stmt_node.visit(binder)
        inner |= binder.names
    return visitor.reads - visitor.local - inner


def _simple_statements(node: cst.CSTNode) -> list[cst.CSTNode]:
    if isinstance(node, cst.SimpleStatementLine):
        return [node]
    body = getattr(node, "body", None)
    if isinstance(body, cst.IndentedBlock):
        return [s for child in body.body for s in _simple_statements(child)]
    return []
