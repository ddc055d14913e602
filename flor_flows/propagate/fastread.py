"""The old version read with CPython's parser: the same statements as `statements.read`, faster.

An old version is read once per version propagated into, and libcst's parse of a 1,300-line
script alone costs more than the time a version may take. Matching needs only each statement's
tokens, kind and place, and the insertion needs only line numbers and indentation (`splice`),
so the old version is read with `ast` and `tokenize` on the statement's own source. Each
`Statement.node` is then an `ast` node (or an `AstClause` for `else:`/`finally:`), and each
`Block.node` an `AstBlock`. `tests/test_propagation_fastread.py` checks that both readers give
the same statements on every benchmark case.
"""

from __future__ import annotations

import ast
import io
import tokenize
from dataclasses import dataclass, field

from flor_flows import pyast
from flor_flows.errors import Unparsable
from flor_flows.propagate.statements import Block, Module, Statement, normalise, tokens

_COMPOUND = {
    ast.For: "for", ast.AsyncFor: "for", ast.While: "while", ast.With: "with",
    ast.AsyncWith: "with", ast.If: "if", ast.FunctionDef: "def", ast.AsyncFunctionDef: "def",
    ast.ClassDef: "class", ast.Try: "try", ast.ExceptHandler: "except", ast.Match: "match",
}  # fmt: skip
if hasattr(ast, "TryStar"):
    _COMPOUND[ast.TryStar] = "try"
_FLOR = ("flor_flows", "flordb", "flor")


@dataclass(eq=False)
class AstClause:
    """An `else:` or `finally:` clause, which `ast` does not make a node of."""

    kind: str
    lineno: int
    body: list[ast.stmt]

    @property
    def end_lineno(self) -> int:
        """The clause's last line: that of its last statement."""
        return self.body[-1].end_lineno


@dataclass(eq=False)
class AstBlock:
    """Where a block's lines are: its first statement, and whether it shares its header's line."""

    header_end: int  # the line of the colon that opens it (0: the module)
    one_line: bool = False
    clause: bool = False  # the block that holds a clause (insertions never go there)
    end: int = 0  # its last line
    indent: str = ""


@dataclass(eq=False)
class FastModule(Module):
    """A module read by CPython's parser, with its lines kept to be written back (`splice`)."""

    lines: list[str] = field(default_factory=list)  # the source's lines, with their endings
    newline: str = "\n"
    indent_unit: str = "    "

    def line(self, stmt: Statement) -> int:
        """The 1-based line where `stmt` starts, as `ast` gives it."""
        return getattr(stmt.node, "lineno", 0)


def _aliases(tree: ast.Module) -> frozenset[str]:
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in _FLOR:
                    found.add(f"{alias.asname or alias.name}.log")
        elif isinstance(node, ast.ImportFrom) and node.module in _FLOR:
            found |= {a.asname or a.name for a in node.names if a.name == "log"}
    return frozenset(found or {"flor.log"})


class _Reader:
    def __init__(self, source: str, tree: ast.Module) -> None:
        self.lines = source.splitlines(keepends=True)
        self.aliases = _aliases(tree)
        self.statements: list[Statement] = []
        self.indent_unit = ""
        self.top = self.block(AstBlock(0, end=len(self.lines)), tree.body, None, grouped=True)

    def segment(self, start: tuple[int, int], end: tuple[int, int]) -> str:
        (l1, c1), (l2, c2) = start, end
        if l1 == l2:
            return self.lines[l1 - 1][c1:c2]
        return "".join([self.lines[l1 - 1][c1:], *self.lines[l1 : l2 - 1], self.lines[l2 - 1][:c2]])

    def header(self, start: tuple[int, int]) -> tuple[list[tokenize.TokenInfo], int]:
        """The tokens from `start` to the colon that opens the body, and that colon's line."""
        lines = iter([self.lines[start[0] - 1][start[1] :], *self.lines[start[0] :]])
        found, depth = [], 0
        try:
            for tok in tokenize.generate_tokens(lambda: next(lines, "")):
                if tok.type == tokenize.OP and tok.string in "([{":
                    depth += 1
                elif tok.type == tokenize.OP and tok.string in ")]}":
                    depth -= 1
                if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                    found.append(tok)
                if tok.type == tokenize.OP and tok.string == ":" and depth == 0:
                    return found, start[0] + tok.start[0] - 1
        except (tokenize.TokenError, SyntaxError):
            pass
        return found, start[0]

    def block(
        self, marker: AstBlock, body: list[ast.stmt], owner: Statement | None, grouped: bool
    ) -> Block:
        block = Block(marker, owner)
        if body and not marker.one_line and not marker.clause:
            first = body[0]
            start = min([first.lineno, *(d.lineno for d in getattr(first, "decorator_list", []))])
            text = self.lines[start - 1]
            marker.indent = text[: len(text) - len(text.lstrip())]
            if owner is not None and not self.indent_unit:
                outer = owner.block.node.indent if isinstance(owner.block.node, AstBlock) else ""
                self.indent_unit = marker.indent[len(outer) :] or "    "
        groups: list[list[ast.stmt]] = []
        for node in body:
            if grouped and groups and _one_line(groups[-1][-1], node):
                groups[-1].append(node)  # `a = 1; b = 2`: one statement line
            else:
                groups.append([node])
        for index, group in enumerate(groups):
            block.statements.append(self.statement(group, block, index))
        return block

    def statement(self, group: list[ast.stmt], block: Block, index: int) -> Statement:
        node = group[0]
        kind = _COMPOUND.get(type(node), "simple")
        if kind == "simple":
            last = group[-1]
            code = self.segment(
                (node.lineno, node.col_offset), (last.end_lineno, last.end_col_offset)
            )
            toks = tokens(code)
        else:
            toks, header_end = self.compound_header(node, kind)
            if kind == "if" and self.lines[node.lineno - 1][node.col_offset :].startswith("elif"):
                kind = "elif"  # read as `if ...:`, as libcst renders an elif on its own
                toks[0] = toks[0]._replace(string="if")
        text, shape, names = normalise(toks)
        stmt = Statement(node, kind, block, index, len(self.statements), text, shape, names)
        if len(group) > 1:
            stmt.group = group  # `a = 1; b = 2`: the small statements of the line
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        first = self.lines[start - 1][node.col_offset if start == node.lineno else 0 :]
        stmt.first_line = "if" + first[4:] if kind == "elif" else first
        if kind == "simple" and "log" in text.split():
            stmt.log_name = self.log_name(group)
        self.statements.append(stmt)
        if kind not in ("simple", "match"):
            self.bodies(stmt, node, header_end)
        return stmt

    def compound_header(self, node: ast.AST, kind: str) -> tuple[list, int]:
        if isinstance(node, ast.For | ast.AsyncFor) and _is_flor_loop(node.iter):
            # `for x in flor.loop("epoch", it):` reads as `for x in it:`, as in `statements`
            head = "async for" if isinstance(node, ast.AsyncFor) else "for"
            target = self.segment(_start(node.target), _end(node.target))
            it = node.iter.args[1]
            code = f"{head} {target} in {self.segment(_start(it), _end(it))}:"
            return tokens(code), self.header(_start(node))[1]
        if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            return tokens("try:"), self.header(_start(node))[1]
        if isinstance(node, ast.Match):
            subject = self.segment(_start(node.subject), _end(node.subject))
            return tokens(f"match {subject}:"), node.lineno
        decorators = getattr(node, "decorator_list", [])
        start = _start(node)
        if decorators:
            first = min(decorators, key=lambda d: d.lineno)
            start = (first.lineno, first.col_offset - 1)  # the `@`
        return self.header(start)

    def bodies(self, stmt: Statement, node: ast.AST, header_end: int) -> None:
        body = getattr(node, "body", [])
        one_line = bool(body) and body[0].lineno == header_end
        marker = AstBlock(header_end, one_line=one_line, end=node.end_lineno)
        stmt.blocks.append(self.block(marker, body, stmt, grouped=not one_line))
        for clause in _clauses(node, self.lines):
            marker = AstBlock(0, clause=True)
            holder = Block(marker, stmt)
            if not isinstance(clause, AstClause):
                holder.statements.append(self.statement([clause], holder, 0))
            else:
                header_end = self.header((clause.lineno, 0))[1]
                text, shape, names = normalise(tokens(f"{clause.kind}:"))
                inner = Statement(
                    clause, clause.kind, holder, 0, len(self.statements), text, shape, names
                )
                inner.first_line = self.lines[clause.lineno - 1]
                self.statements.append(inner)
                holder.statements.append(inner)
                self.bodies(inner, clause, header_end)
            stmt.blocks.append(holder)

    def log_name(self, group: list[ast.stmt]) -> str | None:
        for top in group:
            for call in _calls(top):
                if call.args and self.segment(_start(call.func), _end(call.func)) in self.aliases:
                    first = call.args[0]
                    if isinstance(first, ast.Constant) and isinstance(first.value, str):
                        return first.value
        return None


def _one_line(previous: ast.stmt, node: ast.stmt) -> bool:
    """Two small statements on one line, separated by `;`."""
    simple = type(node) not in _COMPOUND and type(previous) not in _COMPOUND
    return simple and previous.end_lineno == node.lineno


def _calls(node: ast.AST) -> list[ast.Call]:
    """The calls in `node`, outermost first (the order libcst's visitor meets them in)."""
    found = []
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, ast.Call):
            found.append(current)
        stack.extend(reversed(list(ast.iter_child_nodes(current))))
    return found


def _start(node: ast.AST) -> tuple[int, int]:
    return node.lineno, node.col_offset


def _end(node: ast.AST) -> tuple[int, int]:
    return node.end_lineno, node.end_col_offset


def _is_flor_loop(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call) or len(node.args) != 2 or node.keywords:
        return False
    func = node.func
    return (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) == "loop"


def _clause_line(lines: list[str], after: int, word: str) -> int:
    """The line of the `else:`/`finally:` that follows line `after`."""
    for number in range(after, len(lines)):
        if lines[number].lstrip().startswith(word):
            return number + 1
    return after


def _clauses(node: ast.AST, lines: list[str]) -> list[ast.AST | AstClause]:
    found: list[ast.AST | AstClause] = []
    if isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
        found += node.handlers
    orelse = getattr(node, "orelse", [])
    if isinstance(node, ast.If) and len(orelse) == 1 and isinstance(orelse[0], ast.If):
        line = lines[orelse[0].lineno - 1][orelse[0].col_offset :]
        if line.startswith("elif"):
            return [orelse[0]]
    if orelse and not isinstance(node, ast.ExceptHandler):
        previous = (found[-1] if found else node.body[-1]).end_lineno
        found.append(AstClause("else", _clause_line(lines, previous, "else"), orelse))
    final = getattr(node, "finalbody", [])
    if final:
        previous = max(n.end_lineno for n in [*node.body, *node.handlers, *orelse])
        found.append(AstClause("finally", _clause_line(lines, previous, "finally"), final))
    return found


def read_fast(source: str) -> FastModule:
    """`statements.read` for an old version, with CPython's parser. Raises `Unparsable`."""
    try:
        tree = pyast.parse(source)
    except SyntaxError as exc:
        raise Unparsable(exc.lineno or 0, exc.msg) from exc
    reader = _Reader(source, tree)
    first = source.find("\n")
    newline = "\r\n" if first > 0 and source[first - 1] == "\r" else "\n"
    module = FastModule(
        source, tree, reader.statements, reader.top, reader.aliases,
        lines=reader.lines, newline=newline, indent_unit=reader.indent_unit or "    ",
    )  # fmt: skip
    return module


__all__ = ["AstBlock", "AstClause", "FastModule", "read_fast", "io"]
