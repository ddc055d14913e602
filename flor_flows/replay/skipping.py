"""Which nested loops a replay may skip, read from the code it replays.

A replay stands in for a loop nested in the outer (checkpointed) loop by restoring the
checkpoint written at the end of that outer iteration. That is exact only when
- no requested statement is in the loop, or in a function it calls;
- no requested statement reads, directly or through assignments, a name the loop binds that
  no checkpoint holds (a running loss, say): such a loop re-executes, correctness first;
- nothing after the loop in its outer iteration changes a checkpointed object (an
  assignment into it, an in-place method, any `.step()` or `.load_state_dict()`), since the
  state restored is that of the iteration's end.
Names are followed as Python reads them, without types: where in doubt, the loop runs.

`shortcuts` applies the same reading to the outer loop's body itself (`record.replay`): the
statements after the last requested one (its tail) may be left out when nothing the body
reads is carried from it to the next iteration but through checkpointed objects; those
before the first requested one (its head) may be replaced by the iteration's end checkpoint
when, from the first requested statement on, nothing changes checkpointed state and the
requested statements read nothing the body sets but checkpointed objects.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from flor_flows import pyast

_MUTATORS = frozenset({"step", "load_state_dict", "add_param_group"})
_BUILTINS = frozenset(dir(builtins))


def skippable_loops(files: dict[str, str], names: Iterable[str]) -> frozenset[str]:
    """Names of the `flor.loop`s in `files` a replay computing `names` may skip."""
    try:
        code = _Code(files, frozenset(names))
    except SyntaxError:
        return frozenset()
    blocked = {name for name, loop in code.loops if not code.skippable(loop)}
    return frozenset(name for name, _ in code.loops) - blocked


@dataclass(frozen=True)
class Shortcut:
    """An outer loop whose replays may run only part of each iteration (`record.replay`)."""

    path: str
    loop: str
    alias: str  # how the module names flor_flows (`flor`)
    first_line: int  # where the first top-level statement holding a requested one starts
    last_line: int  # where the last one ends
    head: bool  # whether the statements before `first_line` may be left out too
    opens_body: bool  # whether a requested statement is the body's first

    @property
    def free(self) -> bool:
        """Whether an iteration replayed this way runs only its requested statements."""
        return self.head or self.opens_body


def shortcuts(files: dict[str, str], names: Iterable[str]) -> list[Shortcut]:
    """The outer `flor.loop`s of `files` whose replays computing `names` may cut their body
    short: one per loop name found once, at the top of a body no other `flor.loop` holds."""
    try:
        code = _Code(files, frozenset(names))
    except SyntaxError:
        return []
    counts: dict[str, int] = {}
    for name, _ in code.loops:
        counts[name] = counts.get(name, 0) + 1
    found = []
    for name, loop in code.loops:
        if counts[name] == 1 and code.outermost(loop):
            shortcut = code.shortcut(name, loop)
            if shortcut is not None:
                found.append(shortcut)
    return found


def carried_state(files: dict[str, str], names: Iterable[str]) -> frozenset[str]:
    """The names the requested values read that an outer loop carries from one iteration to
    the next outside its checkpoints (a patience counter, a best score so far, a list of
    past losses), or that the training reads (a learning rate annealed by hand), and
    "gradients" where no unconditional `zero_grad()` resets them, as in gradient
    accumulation: no checkpoint restores them, so a replay of such values runs every
    iteration from the first (`record.replay.from_start`)."""
    try:
        code = _Code(files, frozenset(names))
    except SyntaxError:
        return frozenset()
    carried = code.carried()
    accumulated = {"gradients"} if code.keeps_gradients() else set()
    return frozenset(code.read & carried | code.steering(carried) | accumulated)


@dataclass(frozen=True)
class Logged:
    """Where the `flor.log` statements of a request's names are in one code version."""

    found: frozenset[str]  # the names some statement logs
    looped: frozenset[str]  # those logged inside a `flor.loop` (or a function called there)

    @property
    def run_level_only(self) -> bool:
        """Every statement runs outside the loops, after the training: a replay runs no
        iteration."""
        return bool(self.found) and not self.looped


def logged(files: dict[str, str], names: Iterable[str]) -> Logged:
    """Where `files` log `names`; code that does not parse is taken as logging them all in
    loops (no shortcut is taken on a guess)."""
    try:
        code = _Code(files, frozenset(names))
    except SyntaxError:
        return Logged(frozenset(), frozenset(names))
    name = {call: str(_flor_call(call, "log")) for call in code.requested}
    return Logged(
        frozenset(name.values()),
        frozenset(logged for call, logged in name.items() if code.in_loop(call)),
    )


class _Code:
    """The modules of one code version, with what the checks need to look up."""

    def __init__(self, files: dict[str, str], names: frozenset[str]) -> None:
        self.parent: dict[ast.AST, ast.AST] = {}
        self.loops: list[tuple[str, ast.For]] = []
        self.requested: set[ast.Call] = set()
        self.checkpointed: set[str] = set()
        self.functions: dict[str, list[ast.AST]] = {}
        self.classes: set[str] = set()
        self.assignments: list[ast.stmt] = []
        calls: list[ast.Call] = []
        self.path_of: dict[ast.For, str] = {}
        self.modules: set[str] = set()  # names imports bind: modules and library objects
        for path, source in files.items():
            module = pyast.parse(source)
            for node in ast.walk(module):
                for child in ast.iter_child_nodes(node):
                    self.parent[child] = node
                if isinstance(node, ast.For) and (loop := _flor_call(node.iter, "loop")):
                    self.loops.append((loop, node))
                    self.path_of[node] = path
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    self.functions.setdefault(node.name, []).append(node)
                elif isinstance(node, ast.ClassDef):
                    self.classes.add(node.name)
                elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign | ast.NamedExpr):
                    self.assignments.append(node)
                elif isinstance(node, ast.Call):
                    calls.append(node)
                elif isinstance(node, ast.Import | ast.ImportFrom):
                    self.modules |= {(a.asname or a.name).partition(".")[0] for a in node.names}
        for call in calls:
            if _flor_call(call, "log") in names:
                self.requested.add(call)
            elif _method(call) == "checkpointing":
                self.checkpointed |= {n for kw in call.keywords for n in _loaded(kw.value)}
        self.holding = self._functions_holding_requests()
        self.read = self._names_read_by_requests()

    def skippable(self, loop: ast.For) -> bool:
        if self._holds_request(loop):
            return False
        if self.read & (self._bound_by(loop) - self.checkpointed):
            return False
        return not any(self._mutates(stmt) for stmt in self._after(loop))

    def carried(self) -> set[str]:
        """Names an outer loop's iteration may read as the iteration before left them, that
        it may also set, and that no checkpoint holds; the globals of the functions it calls
        count as read and set, an object it calls as set, and what it sets that the code
        after the loop reads as carried too (where in doubt, carried)."""
        found: set[str] = set()
        for _, loop in self.loops:
            if not self.outermost(loop):
                continue
            called = [f for stmt in loop.body for f in self._called(stmt)]
            shared = {n for f in called for g in ast.walk(f) if isinstance(g, ast.Global) for n in g.names}  # fmt: skip
            touched = self._touched(loop.body) | self._objects_called(loop.body)
            after = _exposed(list(self._after(loop)), set())  # read before bound again
            exposed = _exposed(loop.body, set()) | shared | after
            found |= (exposed & touched) - self.checkpointed - _targets(loop) - self.modules
        return found

    def steering(self, names: set[str]) -> set[str]:
        """Of `names`, those the training itself reads: in a loop nested in the outer one, in
        a function the script calls (as a global), or in a statement that changes
        checkpointed state (`model.load_state_dict(best_weights)`)."""
        free: set[str] = set()
        for functions in self.functions.values():
            for function in functions:
                own = {a.arg for a in ast.walk(function.args) if isinstance(a, ast.arg)}  # type: ignore[attr-defined]
                own |= {n.id for n in ast.walk(function) if isinstance(n, ast.Name) and _stores(n)}
                free |= self._used(function) - own
        nested = {
            n
            for _, loop in self.loops
            for stmt in ast.walk(loop)
            if stmt is not loop and isinstance(stmt, ast.For | ast.While)
            for n in self._used(stmt)
        }
        mutating = {n for stmt in self.parent if isinstance(stmt, ast.stmt) and not isinstance(stmt, ast.For | ast.While | ast.With | ast.If | ast.Try | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module) and self._mutates(stmt) for n in _reads(stmt)}  # fmt: skip
        return names & (free | nested | mutating)

    def _used(self, node: ast.AST) -> set[str]:
        """The names `node` reads, less those it only reports on: an expression statement
        calling a method that changes no checkpointed state (`logger.info(...)`,
        `writer.add_scalar(...)`, `bar.update()`)."""
        told = {
            id(n)
            for stmt in ast.walk(node)
            if isinstance(stmt, ast.Expr)
            and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Attribute)
            and not self._mutates(stmt)
            for n in ast.walk(stmt)
        }
        loads = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not _stores(n) and id(n) not in told}  # fmt: skip
        return _reads(node) & loads

    def _objects_called(self, stmts: list[ast.stmt]) -> set[str]:
        """Objects `stmts` call whose attributes the script reads (not the script's
        functions, imports or builtins): an early-stopping helper whose call changes the
        counter the script reads, not a loss function."""
        known = set(self.functions) | self.modules | self.classes | _BUILTINS
        called = {
            node.func.id
            for stmt in stmts
            for node in ast.walk(stmt)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        }
        methods = {id(n.func) for n in self.parent if isinstance(n, ast.Call)}
        read = {
            n.value.id
            for n in self.parent
            if isinstance(n, ast.Attribute)
            and isinstance(n.value, ast.Name)
            and id(n) not in methods
        }
        return (called & read) - known

    def keeps_gradients(self) -> bool:
        """Whether gradients may outlive a step, and so an iteration (a checkpoint holds
        none): the script calls `.backward()`, and no `zero_grad()` runs on every pass, only
        on a condition, if at all."""
        calls = [n for n in self.parent if isinstance(n, ast.Call)]
        zeroing = [call for call in calls if _method(call) == "zero_grad"]
        backward = any(_method(call) == "backward" for call in calls)
        return backward and all(self._conditional(call) for call in zeroing)

    def _conditional(self, node: ast.AST) -> bool:
        """Whether `node` runs only on a condition within its loop or function body."""
        while (node := self.parent.get(node)) is not None:
            if isinstance(node, ast.If | ast.IfExp | ast.Try | ast.Match):
                return True
            if isinstance(node, ast.For | ast.While | ast.FunctionDef | ast.AsyncFunctionDef):
                return False
        return False

    def in_loop(self, node: ast.AST, seen: frozenset[ast.AST] = frozenset()) -> bool:
        """Whether `node` runs inside a `flor.loop`, directly or through the functions that
        hold it and their call sites (by name: where in doubt, it does)."""
        while (node := self.parent.get(node)) is not None:
            if isinstance(node, ast.For) and _flor_call(node.iter, "loop"):
                return True
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                # a function passed by name (a closure to `optimizer.step`) runs where it goes
                sites = self._call_sites_of(node) or self._references_of(node)
                sites = [site for site in sites if site not in seen]
                return any(self.in_loop(site, seen | {site}) for site in sites)
        return False

    def outermost(self, loop: ast.For) -> bool:
        """Whether no other `flor.loop` encloses `loop` in its module."""
        node: ast.AST = loop
        while (node := self.parent.get(node)) is not None:
            if isinstance(node, ast.For) and _flor_call(node.iter, "loop"):
                return False
        return True

    def shortcut(self, name: str, loop: ast.For) -> Shortcut | None:
        """How much of `loop`'s body its replays need (see the module doc); None: all of it."""
        body = loop.body
        holding = [k for k, stmt in enumerate(body) if self._holds_request(stmt)]
        if not holding or isinstance(loop.iter.func, ast.Name):  # type: ignore[attr-defined]
            return None
        first, last = holding[0], holding[-1]
        head, needed, tail = body[:first], body[first : last + 1], body[last + 1 :]
        carried = self.checkpointed | _targets(loop)
        read = set().union(*(_loaded(stmt) for stmt in head + needed)) - carried
        if tail and read & self._touched(tail):
            return None  # the tail sets what the next iteration reads: it must run
        skip_head = bool(head) and not any(self._mutates_deep(stmt) for stmt in needed + tail)
        skip_head = skip_head and not (
            set().union(*(_loaded(stmt) for stmt in needed)) - carried
        ) & self._touched(body)
        if not tail and not skip_head:
            return None
        return Shortcut(
            self.path_of[loop],
            name,
            ast.unparse(loop.iter.func.value),  # type: ignore[attr-defined]
            body[first].lineno,
            body[last].end_lineno or body[last].lineno,
            skip_head,
            first == 0,
        )

    def _touched(self, stmts: list[ast.stmt]) -> set[str]:
        """Names `stmts` may set: bind, store into, call a method of, pass to a function of
        the script that does, or declare global in a function they call."""
        touched: set[str] = set()
        for stmt in stmts:
            for node in ast.walk(stmt):
                if isinstance(node, ast.Name) and _stores(node):
                    touched.add(node.id)
                elif isinstance(node, ast.alias):
                    touched.add((node.asname or node.name).partition(".")[0])
                elif isinstance(node, ast.Global | ast.Nonlocal):
                    touched.update(node.names)
                else:
                    touched |= self._in_place(node)
            touched |= self._changed_arguments(stmt, frozenset())
            for function in self._called(stmt):
                touched |= {
                    n for g in ast.walk(function) if isinstance(g, ast.Global) for n in g.names
                }
        return touched

    def _in_place(self, node: ast.AST) -> set[str]:
        """The name `node` changes in place: one it stores into (`state["n"] = 1`) or calls a
        method of (not a module's: `np.mean(x)` changes no name)."""
        if isinstance(node, ast.Attribute | ast.Subscript) and _stores(node):
            return {_root(node) or ""}
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            return {_root(node.func.value) or ""} - self.modules
        return set()

    def _changed_arguments(self, stmt: ast.AST, seen: frozenset[ast.AST]) -> set[str]:
        """Names `stmt` passes to a function of the script that changes that argument in
        place, itself or through the functions it passes it to (`state["bad"] += 1` in
        `train(model, state)`)."""
        found: set[str] = set()
        for call in ast.walk(stmt):
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
                continue
            for function in self.functions.get(call.func.id, []):
                if function in seen:
                    continue
                given = function.args.posonlyargs + function.args.args  # type: ignore[attr-defined]
                passed = dict(zip((a.arg for a in given), call.args, strict=False))
                passed |= {kw.arg: kw.value for kw in call.keywords if kw.arg}
                changed = set().union(*(self._in_place(n) for n in ast.walk(function)))
                for inner in function.body:  # type: ignore[attr-defined]
                    changed |= self._changed_arguments(inner, seen | {function})
                found |= {_root(passed[name]) or "" for name in changed & passed.keys()}
        return found - {""}

    def _mutates_deep(self, stmt: ast.stmt) -> bool:
        """Whether `stmt`, or a function of the script it calls, may change checkpointed
        state (a nested `flor.loop` counts as doing so)."""
        nodes = [stmt, *self._called(stmt)]
        return any(
            self._mutates(node)
            or any(isinstance(n, ast.For) and _flor_call(n.iter, "loop") for n in ast.walk(node))
            for node in nodes
        )

    def _called(self, stmt: ast.AST) -> list[ast.AST]:
        """The script's functions `stmt` calls, directly or through each other."""
        found: list[ast.AST] = []
        pending = [stmt]
        while pending:
            for node in ast.walk(pending.pop()):
                if isinstance(node, ast.Call):
                    for function in self.functions.get(_callee(node) or "", []):
                        if function not in found:
                            found.append(function)
                            pending.append(function)
        return found

    # -- the checks ---------------------------------------------------------------------
    def _holds_request(self, node: ast.AST, holding: set[str] | None = None) -> bool:
        """Whether `node` has a requested statement, or calls a function (in `holding`) that has."""
        holding = self.holding if holding is None else holding
        return any(
            n in self.requested or (isinstance(n, ast.Call) and _callee(n) in holding)
            for n in ast.walk(node)
        )

    def _functions_holding_requests(self) -> set[str]:
        """Functions with a requested statement, directly or through the functions they call."""
        holding: set[str] = set()
        while True:
            more = {
                name
                for name, defs in self.functions.items()
                if name not in holding and any(self._holds_request(d, holding) for d in defs)
            }
            if not more:
                return holding
            holding |= more

    def _names_read_by_requests(self) -> set[str]:
        """Names the requested values depend on, through assignments anywhere."""
        read = {n for call in self.requested for arg in call.args[1:] for n in _loaded(arg)}
        while True:
            more = {
                n
                for stmt in self.assignments
                if _bound(stmt) & read
                for n in _loaded(stmt.value)  # type: ignore[attr-defined]
                if stmt.value is not None  # type: ignore[attr-defined]
            } - read
            if not more:
                return read
            read |= more

    def _bound_by(self, loop: ast.For) -> set[str]:
        """Names the loop binds, and those its function's callers bind from its result."""
        own_scope = {  # a comprehension's variables are its own, not the loop's
            id(n)
            for c in ast.walk(loop)
            if isinstance(c, ast.comprehension)
            for n in ast.walk(c.target)
        }
        bound = {
            n.id
            for n in ast.walk(loop)
            if isinstance(n, ast.Name) and _stores(n) and id(n) not in own_scope
        }
        for site in self._call_sites_of(self._function_of(loop)):
            bound |= _bound(site)
        return bound

    def _after(self, node: ast.AST, seen: frozenset[ast.AST] = frozenset()) -> Iterator[ast.stmt]:
        """The statements that run after `node` within the same outer iteration."""
        while (parent := self.parent.get(node)) is not None:
            if isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef):
                for site in self._call_sites_of(parent):
                    if site not in seen:
                        yield from self._after(site, seen | {site})
                return
            for field in ("body", "orelse", "finalbody"):
                block = getattr(parent, field, None)
                if isinstance(block, list) and node in block:
                    yield from block[block.index(node) + 1 :]
            if isinstance(parent, ast.For | ast.While) and node in parent.body:
                if isinstance(parent, ast.For) and _flor_call(parent.iter, "loop"):
                    return  # the end of the enclosing loop's iteration
                yield from parent.body  # a plain loop runs its whole body again
            node = parent

    def _mutates(self, stmt: ast.stmt) -> bool:
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                method = node.func.attr
                if method in _MUTATORS:
                    return True
                if method.endswith("_") and not method.startswith("_"):
                    return True  # in place: on checkpointed state, or on a part of it (`p.data`)
            elif _stores(node) and _root(node) in self.checkpointed:
                return True
        return False

    # -- lookups ------------------------------------------------------------------------
    def _function_of(self, node: ast.AST) -> ast.AST | None:
        while (node := self.parent.get(node)) is not None:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def _references_of(self, function: ast.AST) -> list[ast.stmt]:
        """The statements naming `function` without calling it (passing it on)."""
        name = function.name  # type: ignore[attr-defined]
        named = (
            n for n in self.parent if isinstance(n, ast.Name) and n.id == name and not _stores(n)
        )
        return [self._statement_of(node) for node in named]

    def _call_sites_of(self, function: ast.AST | None) -> list[ast.stmt]:
        """The statements calling `function` (by name: the checks do not resolve types)."""
        if function is None:
            return []
        name = function.name  # type: ignore[attr-defined]
        calls = (n for n in self.parent if isinstance(n, ast.Call) and _callee(n) == name)
        return [self._statement_of(node) for node in calls]

    def _statement_of(self, node: ast.AST) -> ast.stmt:
        """The statement `node` is part of."""
        while not isinstance(node, ast.stmt):
            node = self.parent[node]
        return node


def _exposed(stmts: list[ast.stmt], bound: set[str]) -> set[str]:
    """Names `stmts` may read before binding them themselves, `bound` being bound already
    (and growing with what they bind on every path)."""
    exposed: set[str] = set()
    for stmt in stmts:
        if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            reads = _reads(stmt.value) | {n for t in targets for n in _reads(t)}
            if isinstance(stmt, ast.AugAssign):
                reads |= _bound(stmt)  # `x += 1` reads x
            exposed |= reads - bound
            bound |= _bound(stmt)
        elif isinstance(stmt, ast.If | ast.For | ast.AsyncFor | ast.While):
            head = stmt.test if isinstance(stmt, ast.If | ast.While) else stmt.iter
            exposed |= _reads(head) - bound
            inner = set(bound) | (_bound(stmt) if isinstance(stmt, ast.For | ast.AsyncFor) else set())  # fmt: skip
            other = set(bound)
            exposed |= _exposed(stmt.body, inner) | _exposed(stmt.orelse, other)
            if isinstance(stmt, ast.If):  # bound after it only where both branches bind
                bound |= inner & other
        elif isinstance(stmt, ast.With | ast.AsyncWith):
            for item in stmt.items:
                exposed |= _reads(item.context_expr) - bound
                bound |= {n.id for n in ast.walk(item.optional_vars or ast.Pass()) if isinstance(n, ast.Name)}  # fmt: skip
            exposed |= _exposed(stmt.body, bound)
        elif isinstance(stmt, ast.Try):
            exposed |= _exposed(stmt.body, set(bound))
            for handler in stmt.handlers:
                exposed |= _exposed(handler.body, set(bound))
            exposed |= _exposed(stmt.orelse, set(bound)) | _exposed(stmt.finalbody, bound)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(stmt.name)
        else:
            exposed |= _reads(stmt) - bound
    return exposed


def _reads(node: ast.AST | None) -> set[str]:
    """The names `node` loads, less those its comprehensions and lambdas bind themselves."""
    own: set[str] = set()
    for child in ast.walk(node or ast.Pass()):
        if isinstance(child, ast.comprehension):
            own |= {n.id for n in ast.walk(child.target) if isinstance(n, ast.Name)}
        elif isinstance(child, ast.Lambda):
            own |= {a.arg for a in ast.walk(child.args) if isinstance(a, ast.arg)}
    return _loaded(node) - own


def _flor_call(node: ast.AST, method: str) -> str | None:
    """The name argument of a `<x>.<method>("name", ...)` call, such as `flor.loop("epoch", ...)`."""
    if isinstance(node, ast.Call) and _method(node) == method and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


def _method(call: ast.Call) -> str | None:
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _callee(call: ast.Call) -> str | None:
    func = call.func
    return func.id if isinstance(func, ast.Name) else _method(call)


def _root(node: ast.AST) -> str | None:
    while isinstance(node, ast.Attribute | ast.Subscript):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _targets(loop: ast.For) -> set[str]:
    return {n.id for n in ast.walk(loop.target) if isinstance(n, ast.Name)}


def _stores(node: ast.AST) -> bool:
    return isinstance(getattr(node, "ctx", None), ast.Store)


def _loaded(node: ast.AST | None) -> set[str]:
    if node is None:
        return set()
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not _stores(n)}


def _bound(stmt: ast.AST) -> set[str]:
    targets = getattr(stmt, "targets", None) or [getattr(stmt, "target", None)]
    return {n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name)}
