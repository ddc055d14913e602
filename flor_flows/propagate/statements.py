"""A module as a sequence of statements: what propagation matches, and where each one sits.

Every statement, simple lines and compound headers alike, in source order, with its text
normalised (tokens only: no comments, layout or quote style) and its shape (the text with
local names abstracted, so that a renamed variable still compares equal), the names in it,
its block and the compound statements around it.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import keyword
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass, field

import libcst as cst
import libcst.metadata

from flor_flows import pyast
from flor_flows.errors import Unparsable

BUILTINS = frozenset(dir(builtins))
LOOPS = ("for", "while")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT}
_SKIP |= {tokenize.ENDMARKER, tokenize.ENCODING}
_EMPTY = cst.Module(body=[])


@dataclass(eq=False)
class Block:
    """A list of statements: the module's body or one body of a compound statement."""

    node: cst.Module | cst.IndentedBlock | cst.SimpleStatementSuite
    owner: Statement | None  # None for the module
    statements: list[Statement] = field(default_factory=list)


@dataclass(eq=False)
class Statement:
    """One statement (or compound header) as propagation sees it: text, shape, block, names."""

    node: cst.CSTNode  # a statement, or an `else:`/`except:`/`finally:` clause
    kind: str  # "simple", "for", "while", "with", "if", "elif", "def", "class", "try", "else", ...
    block: Block  # the block holding it
    index: int  # its position there
    order: int  # source order over the whole module
    text: str  # normalised tokens of the statement (of its header, when compound)
    shape: str  # `text` with local names replaced by `_`
    names: tuple[str, ...]  # the local names `shape` abstracts, in order
    blocks: list[Block] = field(default_factory=list)  # its bodies, when compound
    log_name: str | None = None  # the name a `flor.log("name", ...)` statement logs
    bound: frozenset[str] | None = None  # the names it binds, once `scope.bound_by` asked
    first_line: str | None = None  # its first line as written, when read by `fastread`

    @property
    def display(self) -> str:
        """Its first line as written (the header of a compound statement), for messages."""
        if self.first_line is not None:
            return self.first_line.strip() or self.text
        code = _EMPTY.code_for_node(self.node.with_changes(leading_lines=()))
        return code.strip().splitlines()[0] if code.strip() else self.text

    @property
    def parent(self) -> Statement | None:
        """The compound statement whose body holds this one (None at module level)."""
        return self.block.owner

    def ancestors(self) -> Iterator[Statement]:
        """The compound statements around this one, innermost first."""
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    @property
    def function(self) -> Statement | None:
        """The `def` this statement is inside (None at module level)."""
        return next((a for a in self.ancestors() if a.kind == "def"), None)

    @property
    def scope(self) -> Statement | None:
        """The function whose names this statement sees: itself for a `def` (its parameters)."""
        return self if self.kind == "def" else self.function

    def encloses(self, other: Statement) -> bool:
        """Whether `other` is inside this statement's bodies, at any depth."""
        return any(a is self for a in other.ancestors())

    @property
    def is_loop(self) -> bool:
        """Whether this is a `for` or `while` loop."""
        return self.kind in LOOPS


@dataclass(eq=False)
class Module:
    """A source file read as statements: its tree, its statements in order, its top block."""

    source: str
    tree: cst.Module
    statements: list[Statement]
    top: Block
    log_aliases: frozenset[str]  # how this module calls flor.log: {"flor.log"}, {"log"}, ...
    _lines: dict[int, int] | None = None

    def line(self, stmt: Statement) -> int:
        """The 1-based line where `stmt` starts (after its leading comments)."""
        if self._lines is None:
            wrapper = cst.metadata.MetadataWrapper(self.tree, unsafe_skip_copy=True)
            positions = wrapper.resolve(cst.metadata.PositionProvider)
            self._lines = {id(node): pos.start.line for node, pos in positions.items()}
        return self._lines.get(id(stmt.node), 0)

    def logs(self) -> dict[str, Statement]:
        """The `flor.log` statements by logged name (the first of each name)."""
        found: dict[str, Statement] = {}
        for stmt in self.statements:
            if stmt.log_name is not None:
                found.setdefault(stmt.log_name, stmt)
        return found


def tokens(code: str) -> list[tokenize.TokenInfo]:
    """The significant tokens of a code fragment (a header need not be complete Python)."""
    try:
        found = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        found = []  # an unfinished fragment: fall back to whitespace-separated words
        return [tokenize.TokenInfo(tokenize.OP, w, (0, 0), (0, 0), "") for w in code.split()]
    return [t for t in found if t.type not in _SKIP]


def _header(toks: list[tokenize.TokenInfo]) -> list[tokenize.TokenInfo]:
    """The tokens of a compound statement up to the colon that opens its body."""
    depth = 0
    for position, tok in enumerate(toks):
        if tok.string in "([{" and tok.type == tokenize.OP:
            depth += 1
        elif tok.string in ")]}" and tok.type == tokenize.OP:
            depth -= 1
        elif tok.string == ":" and depth == 0:
            return toks[: position + 1]
    return toks


def _one_quote_style(word: str) -> str:
    """A string literal as `repr` writes its value (an f-string stays as written)."""
    quote = word[:1]
    plain = len(word) >= 2 and quote in "'\"" and word[-1] == quote and "\\" not in word
    if plain and not word.startswith(quote * 3):
        return repr(word[1:-1])  # the common case, without the cost of literal_eval
    with contextlib.suppress(ValueError, SyntaxError):
        return repr(ast.literal_eval(word))
    return word


def normalise(toks: list[tokenize.TokenInfo]) -> tuple[str, str, tuple[str, ...]]:
    """(text, shape, names): strings in one quote style, local names abstracted in `shape`."""
    text, shape, names = [], [], []
    for position, tok in enumerate(toks):
        word = tok.string
        if tok.type == tokenize.STRING:
            word = _one_quote_style(word)
        text.append(word)
        after_dot = position > 0 and toks[position - 1].string == "."
        keyword_arg = position + 1 < len(toks) and toks[position + 1].string == "="
        keyword_arg &= position > 0 and toks[position - 1].string in "(,"
        local = tok.type == tokenize.NAME and not keyword.iskeyword(word) and word not in BUILTINS
        if local and not after_dot and not keyword_arg:
            shape.append("_")
            names.append(word)
        else:
            shape.append(word)
    return " ".join(text), " ".join(shape), tuple(names)


class _LogCalls(cst.CSTVisitor):
    def __init__(self, aliases: frozenset[str]) -> None:
        self.aliases, self.names = aliases, []

    def visit_Call(self, node: cst.Call) -> bool:
        if node.args and _EMPTY.code_for_node(node.func) in self.aliases:
            first = node.args[0].value
            if isinstance(first, cst.SimpleString) and isinstance(first.evaluated_value, str):
                self.names.append(first.evaluated_value)
        return True


def _log_name(node: cst.CSTNode, aliases: frozenset[str]) -> str | None:
    """The literal name of the `flor.log("name", value)` call in a statement line, if any."""
    if not isinstance(node, cst.SimpleStatementLine):
        return None
    visitor = _LogCalls(aliases)
    node.visit(visitor)
    return visitor.names[0] if visitor.names else None


def log_aliases(tree: cst.Module) -> frozenset[str]:
    """How the module spells `flor.log`: `import flor_flows as flor` gives {"flor.log"}."""
    aliases = set()
    for stmt in tree.body:
        if not isinstance(stmt, cst.SimpleStatementLine):
            continue
        for small in stmt.body:
            if isinstance(small, cst.Import):
                for name in small.names:
                    module = _EMPTY.code_for_node(name.name)
                    if module in ("flor_flows", "flordb", "flor"):
                        alias = name.asname.name.value if name.asname else module
                        aliases.add(f"{alias}.log")
            elif isinstance(small, cst.ImportFrom) and small.module is not None:
                module = _EMPTY.code_for_node(small.module)
                if module in ("flor_flows", "flordb", "flor") and not isinstance(
                    small.names, cst.ImportStar
                ):
                    for name in small.names:
                        if _EMPTY.code_for_node(name.name) == "log":
                            aliases.add(name.asname.name.value if name.asname else "log")
    return frozenset(aliases or {"flor.log"})


_KINDS = {
    cst.For: "for", cst.While: "while", cst.With: "with", cst.If: "if",
    cst.FunctionDef: "def", cst.ClassDef: "class", cst.Try: "try", cst.TryStar: "try",
    cst.Else: "else", cst.ExceptHandler: "except", cst.ExceptStarHandler: "except",
    cst.Finally: "finally", cst.Match: "match",
}  # fmt: skip


def _clauses(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The clauses after a compound statement's first body: elif/else, except, finally."""
    if isinstance(node, cst.If | cst.For | cst.While):
        return [node.orelse] if node.orelse is not None else []
    if isinstance(node, cst.Try | cst.TryStar):
        found = [*node.handlers]
        found += [node.orelse] if node.orelse is not None else []
        found += [node.finalbody] if node.finalbody is not None else []
        return found
    return []


_NO_BODY = cst.IndentedBlock(body=[])


def _code(node: cst.CSTNode) -> str:
    return _EMPTY.code_for_node(node)


def _is_flor_loop(node: cst.BaseExpression) -> bool:
    if not isinstance(node, cst.Call) or len(node.args) != 2:
        return False
    return _code(node.func).split(".")[-1] == "loop"


def _header_code(node: cst.CSTNode) -> str:
    """A compound statement's code without its bodies (rendering those would cost O(depth))."""
    changes: dict[str, object] = {"body": _NO_BODY}
    if isinstance(node, cst.If | cst.For | cst.While):
        changes["orelse"] = None
    if isinstance(node, cst.For) and _is_flor_loop(node.iter):
        changes["iter"] = node.iter.args[1].value  # `flor.loop("epoch", it)` iterates `it`
    if isinstance(node, cst.Try | cst.TryStar | cst.Else | cst.Finally):
        return {cst.Else: "else:", cst.Finally: "finally:"}.get(type(node), "try:")
    if hasattr(node, "leading_lines"):
        changes["leading_lines"] = ()
    if isinstance(node, cst.Match):
        return "match " + _code(node.subject) + ":"
    return _code(node.with_changes(**changes))


class _Reader:
    def __init__(self, tree: cst.Module, aliases: frozenset[str]) -> None:
        self.aliases = aliases
        self.statements: list[Statement] = []
        self.top = self.block(tree, tree.body, None)

    def block(
        self, node: cst.CSTNode, body: tuple[cst.CSTNode, ...], owner: Statement | None
    ) -> Block:
        block = Block(node, owner)
        for index, child in enumerate(body):
            block.statements.append(self.statement(child, block, index))
        return block

    def statement(self, node: cst.CSTNode, block: Block, index: int) -> Statement:
        kind = _KINDS.get(type(node), "simple")
        if kind == "if" and block.owner is not None and block.owner.node is not None:
            kind = "elif" if getattr(block.owner.node, "orelse", None) is node else kind
        toks = _header(tokens(_header_code(node))) if kind != "simple" else tokens(_code(node))
        text, shape, names = normalise(toks)
        stmt = Statement(node, kind, block, index, len(self.statements), text, shape, names)
        if kind == "simple" and "log" in text.split():  # cheap pre-check before a visit
            stmt.log_name = _log_name(node, self.aliases)
        self.statements.append(stmt)
        body = getattr(node, "body", None)
        if kind not in ("simple", "match") and body is not None:
            inner = (
                body.body if isinstance(body, cst.IndentedBlock | cst.SimpleStatementSuite) else ()
            )
            stmt.blocks.append(self.block(body, inner, stmt))
            for clause in _clauses(node):
                stmt.blocks.append(self.block(clause, (clause,), stmt))
        return stmt


def read(source: str) -> Module:
    """Parse `source` (libcst, so it can be written back byte for byte) into statements.

    Raises `Unparsable` when it is not valid Python 3. CPython's own parser decides that:
    libcst accepts some Python 2 (`except IOError, e:`) that Python 3 cannot run.
    """
    try:
        pyast.parse(source)
    except SyntaxError as exc:
        raise Unparsable(exc.lineno or 0, exc.msg) from exc
    try:
        tree = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise Unparsable(exc.raw_line, exc.message) from exc
    aliases = log_aliases(tree)
    reader = _Reader(tree, aliases)
    return Module(source, tree, reader.statements, reader.top, aliases)
