"""`scope`'s questions for the statements of an old version read by `fastread` (`ast` nodes):
the names a statement binds and a function's parameters, with the same rules as the libcst side.
"""

from __future__ import annotations

import ast

from flor_flows.propagate.statements import Statement

_NESTED = (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
_HEADERS = (ast.If, ast.While, ast.Match)


def _names_in(target: ast.AST) -> list[str]:
    """The plain names an assignment target binds (`a, (b, *c)`; not `x.y`, `x[i]`)."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [n for element in target.elts for n in _names_in(element)]
    if isinstance(target, ast.Starred):
        return _names_in(target.value)
    return []


def _walrus(node: ast.AST) -> list[str]:
    """Names bound by `:=` in an expression, outside lambdas and comprehensions."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.NamedExpr):
            found += _names_in(current.target)
        if not isinstance(current, _NESTED):
            stack.extend(ast.iter_child_nodes(current))
    return found


def _one(node: ast.AST) -> set[str]:
    names: set[str] = set()
    if isinstance(node, ast.Assign):
        names.update(n for t in node.targets for n in _names_in(t))
        names.update(_walrus(node.value))
    elif isinstance(node, ast.AnnAssign):
        if node.value is not None:
            names.update(_names_in(node.target))
            names.update(_walrus(node.value))
    elif isinstance(node, ast.AugAssign | ast.For | ast.AsyncFor):
        names.update(_names_in(node.target))
    elif isinstance(node, ast.With | ast.AsyncWith):
        names.update(n for i in node.items if i.optional_vars for n in _names_in(i.optional_vars))
    elif isinstance(node, ast.ExceptHandler):
        names.update([node.name] if node.name else [])
    elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        names.add(node.name)
    elif isinstance(node, ast.Import):
        names.update(a.asname or a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom):
        names.update(a.asname or a.name for a in node.names if a.name != "*")
    elif isinstance(node, ast.Global | ast.Nonlocal):
        names.update(node.names)
    elif isinstance(node, _HEADERS):
        names.update(_walrus(node.test if not isinstance(node, ast.Match) else node.subject))
    elif isinstance(node, ast.Expr | ast.Return | ast.Assert | ast.Delete | ast.Raise):
        names.update(_walrus(node))
    return names


def ast_bound_by(stmt: Statement) -> set[str]:
    """The names a statement of an old version binds (its own line or header, not its body)."""
    node = stmt.node
    if not isinstance(node, ast.AST):
        return set()  # an `else:`/`finally:` clause
    if stmt.kind == "simple":
        names: set[str] = set()
        for small in _line(stmt):
            names |= _one(small)
        return names
    return _one(node)


def _line(stmt: Statement) -> list[ast.AST]:
    """The small statements of a statement line (`a = 1; b = 2` is one statement)."""
    node = stmt.node
    siblings = getattr(stmt, "group", None)
    return siblings if siblings else [node]


def ast_parameters(node: ast.AST) -> set[str]:
    """The parameter names of a function or lambda of an old version (none for other nodes)."""
    args = getattr(node, "args", None)
    if not isinstance(args, ast.arguments):
        return set()
    found = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    names = {a.arg for a in found}
    names.update(a.arg for a in (args.vararg, args.kwarg) if a is not None)
    return names
