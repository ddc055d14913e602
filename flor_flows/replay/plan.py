"""Which historical runs, and which of their outer iterations, a hindsight request replays.

`parse_where` reads a filter over the wide table without evaluating user text: the
expression is parsed with `ast`, and only comparisons of columns with literals, joined by
and/or/not, are compiled, into vectorised pandas operations. `parse_iter` reads
`--iter LOOP=all|last|none|I,J-K`. `plan` combines them with what the store holds: the
finished runs, the outer iterations each recorded, the values already logged (by default
only what is missing is replayed), and the durations and checkpoint sizes that estimate
what each replay costs.
"""

from __future__ import annotations

import ast
import functools
import itertools
import json
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from sqlalchemy import select

from flor_flows.errors import FlorError
from flor_flows.record.replay import Step, steps
from flor_flows.store import schema as s

if TYPE_CHECKING:
    from flor_flows.store.store import Store

# The fixed cost of one replay: a child interpreter, `import flor_flows`, and the writer
# process (its imports of SQLAlchemy and the store, opening and closing the replay) around
# the script. Measured as the median of 10 engine-style replays (iterations=()) of a script
# that only imports flor_flows and logs one value, on a 2-core Linux VM with Python 3.11:
# 0.46 s (`python -c pass` 0.02 s, `import flor_flows` 0.06 s, the writer's imports 0.34 s).
# Rounded up: the script's own imports (numpy, torch) come on top and are not known here.
STARTUP_SECONDS = 0.5
# Restoring a checkpoint reads it, checks its sha256 and copies it into the live objects.
# A 256 MB checkpoint restored at 740 MB/s from the page cache on that VM (sha256 alone:
# 1.8 GB/s), but replays read checkpoints cold, from a disk or an object store, where one
# stream gets 100-300 MB/s: 200 MB/s errs on the slow side.
READ_BYTES_PER_SECOND = 200e6

Predicate = Callable[[pd.DataFrame], pd.Series]  # a nullable boolean per row (NA: unknown)
Operand = Callable[[pd.DataFrame], Any]  # a column of the frame, or a literal


# -- where ------------------------------------------------------------------------------
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
            raise FlorError(f"--where {self.expression!r}: no column {', '.join(absent)}")
        try:
            result = self._predicate(frame)
        except TypeError as exc:  # e.g. a number column compared with a string
            raise FlorError(f"--where {self.expression!r}: {exc}") from exc
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
        tree = ast.parse(text, mode="eval")
        predicate = _Compiler(text).predicate(tree.body)
    except SyntaxError as exc:
        raise FlorError(
            f"--where {expression!r} is not an expression: {exc.msg} (column {exc.offset})"
        ) from exc
    except ValueError as exc:  # null bytes, integer literals past the digit limit
        raise FlorError(f"--where {expression!r}: {exc}") from exc
    except RecursionError as exc:  # the parser's, or ours
        raise FlorError(f"--where {expression[:40]!r}... is nested too deeply") from exc
    found = (node for node in ast.walk(tree) if isinstance(node, ast.Name))
    ordered = sorted(found, key=lambda node: (node.lineno, node.col_offset))
    return Where(text, tuple(dict.fromkeys(node.id for node in ordered)), predicate)


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
        if isinstance(node, ast.Name | ast.Constant):
            kind = "a column" if isinstance(node, ast.Name) else "a literal"
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
        if isinstance(node, ast.Name):
            name = node.id
            return lambda frame: frame[name]
        negated = isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
        if negated and isinstance(node.operand, ast.Name):
            name = node.operand.id
            return lambda frame: -frame[name]
        value = self.literal(node)
        return lambda frame: value

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


# -- iter -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """The outer iterations `--iter LOOP=...` keeps: all, the last, none, or listed ranges."""

    kind: Literal["all", "last", "none", "list"]
    ranges: tuple[tuple[int, int], ...] = ()  # inclusive bounds, for "list"

    def narrow(self, recorded: Sequence[int]) -> tuple[int, ...]:
        """The kept iterations among `recorded` (ascending); "none" keeps none."""
        if self.kind == "all":
            return tuple(recorded)
        if self.kind == "last":
            return tuple(recorded[-1:])
        return tuple(i for i in recorded if any(lo <= i <= hi for lo, hi in self.ranges))

    def __str__(self) -> str:
        if self.kind != "list":
            return self.kind
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


_ITERATIONS = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?", re.ASCII)
_ITER_FORM = "LOOP=all|last|none|I,J-K (e.g. epoch=last or epoch=0,3-5)"


def parse_iter(specs: Iterable[str]) -> dict[str, Selection]:
    """`--iter` options, e.g. ["epoch=0,3-5"], as one selection per outer loop name."""
    selections: dict[str, Selection] = {}
    for spec in specs:
        loop, sep, text = (part.strip() for part in spec.partition("="))
        if not sep or not loop.isidentifier() or not text:
            raise FlorError(f"--iter {spec!r}: expected {_ITER_FORM}")
        if loop in selections:
            raise FlorError(f"--iter: loop {loop!r} is selected twice")
        selections[loop] = _selection(spec, text)
    return selections


def _selection(spec: str, text: str) -> Selection:
    if text in ("all", "last", "none"):
        return Selection(text)
    ranges = set()
    for part in (p.strip() for p in text.split(",")):
        match = _ITERATIONS.fullmatch(part)
        if match is None:
            raise FlorError(
                f"--iter {spec!r}: {part!r} is not an iteration (0, 1, ...) or a range "
                f"(2-5); expected {_ITER_FORM}"
            )
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise FlorError(f"--iter {spec!r}: the range {part} is empty")
        ranges.add((lo, hi))
    return Selection("list", tuple(sorted(ranges)))


# -- plan -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One replay: a run, its code version and script, and the outer iterations to record."""

    run_uid: str
    code_version: str
    entry_script: str
    loop: str | None  # the run's outer loop, when it recorded one
    iterations: tuple[int, ...] | None  # None: every iteration; (): run level only
    estimated_seconds: float
    reason: str
    run_level: bool = True  # records the statements outside the loop (one segment of a run)


@dataclass(frozen=True)
class _Run:
    """What planning knows of one candidate run."""

    uid: str
    code_version: str
    entry_script: str
    loop: str | None
    seconds: dict[int, float]  # each recorded outer iteration: its duration
    inner: dict[int, float]  # each recorded outer iteration: the time in its nested loops
    checkpoints: dict[int, int]  # iteration -> bytes of the checkpoint written at its end
    outside: float  # run time outside the outer loop (set-up, final evaluation)
    skip_nested: bool  # a replay may skip the nested loops (`skipping.skippable_loops`)

    @property
    def iterations(self) -> list[int]:
        return sorted(self.seconds)


@dataclass
class _Held:
    """The requested names a run holds already: anywhere, at run level, per iteration."""

    anywhere: set[str] = field(default_factory=set)
    run_level: set[str] = field(default_factory=set)
    by_iteration: dict[int, set[str]] = field(default_factory=dict)

    def missing(self, names: Sequence[str], iteration: int | None) -> list[str]:
        """The names without a value in `iteration` (None: in the run at all)."""
        if iteration is None:
            held = self.anywhere
        else:
            held = self.run_level | self.by_iteration.get(iteration, set())
        return [name for name in names if name not in held]


@dataclass(frozen=True)
class _Loops:
    """Loop names as recorded: all of them, and those seen as the outermost of a run."""

    names: frozenset[str]
    outer: tuple[str, ...]  # outermost loops, those never nested in another first


def plan(
    store: Store,
    names: Iterable[str],
    where: Where | str | None = None,
    iters: dict[str, Selection] | None = None,
    only_missing: bool = True,
    project: str | None = None,
    skip_nested: bool = False,
    workers: int = 1,
) -> list[Item]:
    """The replays that compute `names` over history, in run order, with estimated costs.

    Candidates are finished runs (completed or failed) with a code version and a script.
    `where` keeps the runs with a row that satisfies it; where those rows lie in outer
    iterations, only those iterations. `iters` narrows per outer loop name. With
    `only_missing`, iterations holding a value of every name already are left out.
    `skip_nested`: the replays skip the loops nested in the outer one (estimates only).
    With fewer replays than `workers`, the longest are split into segments at checkpoints.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise FlorError("a hindsight request needs at least one name to log")
    if isinstance(where, str):
        where = parse_where(where)
    iters = iters or {}
    runs = _candidates(store, project)
    if runs.empty:
        return []
    contexts, checkpoints, loops = _loop_records(store, project)
    where_rows = _where_rows(store, where, runs, loops, project) if where else None
    existing = _existing(store, names, runs, project) if only_missing else None
    untimed = sorted(set(runs["run_uid"]) - set(contexts["run_uid"]))
    probe = _probe(store, untimed, project)
    seen = _loops_seen([f for f in (probe, where_rows, existing) if f is not None], loops)
    history = _history(runs, contexts, checkpoints, seen, skip_nested)
    _check_iters(iters, history)
    if where_rows is not None:
        matched = _where_matches(where, where_rows, history)
    else:
        matched = dict.fromkeys(history)
    held = _held(existing, names, history, loops) if existing is not None else {}
    items = []
    for uid, iterations in matched.items():
        run = history[uid]
        have = held.get(uid, _Held()) if only_missing else None
        selection = iters.get(run.loop) if run.loop else None
        item = _item(run, iterations, selection, have, names, where)
        if item is not None:
            items.append(item)
    return _split(items, history, workers)


def _candidates(store: Store, project: str | None) -> pd.DataFrame:
    """Finished runs that can be replayed: a code version and an entry script recorded."""
    runs = store.runs(project)
    if runs.empty:
        return runs
    keep = runs["status"].isin(["completed", "failed"]) & runs["code_version"].notna()
    return runs[keep & runs["entry_script"].notna()].reset_index(drop=True)


def _frame(store: Store, query: Any, columns: list[str]) -> pd.DataFrame:
    with store.engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).all(), columns=columns)


def _in_project(query: Any, project: str | None) -> Any:
    if project is None:
        return query
    return query.join(s.Project, s.Project.id == s.Run.project_id).where(s.Project.name == project)


def _loop_records(store: Store, project: str | None) -> tuple[pd.DataFrame, pd.DataFrame, _Loops]:
    """Outermost loop iterations with their durations, checkpoints, and the loop names.

    A forward run records a context row, with its duration, for every iteration of a
    checkpointed loop, so these rows are where the cost of replaying an iteration is found.
    """
    contexts = select(
        s.Run.uid, s.Context.loop_name, s.Context.iteration, s.Context.seconds,
        s.Context.started_at, s.Context.inner_seconds,
    ).join(s.Run, s.Run.id == s.Context.run_id)  # fmt: skip
    contexts = contexts.where(s.Context.depth == 1, s.Context.iteration.is_not(None))
    checkpoints = select(
        s.Run.uid, s.Checkpoint.loop_name, s.Checkpoint.iteration, s.Checkpoint.bytes
    ).join(s.Run, s.Run.id == s.Checkpoint.run_id)
    columns = ["run_uid", "loop_name", "iteration"]
    contexts = _frame(
        store, _in_project(contexts, project), [*columns, "seconds", "started_at", "inner"]
    )
    checkpoints = _frame(store, _in_project(checkpoints, project), [*columns, "bytes"])
    signatures = [json.loads(n) for n in _frame(store, select(s.LoopSignature.names), ["n"])["n"]]
    nested = {name for names in signatures for name in names[1:]}
    outer = {names[0] for names in signatures if names} | set(contexts["loop_name"])
    loops = _Loops(
        frozenset(outer.union(*signatures)),
        tuple(sorted(outer, key=lambda name: (name in nested, name))),
    )
    return contexts, checkpoints, loops


def _logged(store: Store, names: Iterable[str]) -> list[str]:
    """Those of `names` that some run logged (the log_names catalog)."""
    names = list(names)
    query = select(s.LogName.name).where(s.LogName.name.in_(names)).distinct()
    found = set(_frame(store, query, ["name"])["name"])
    return [name for name in names if name in found]


def _where_rows(
    store: Store, where: Where, runs: pd.DataFrame, loops: _Loops, project: str | None
) -> pd.DataFrame:
    """The rows `where` is evaluated on: the wide table of the logged names it reads (one
    row per run when it reads none), with the run columns it reads."""
    logged = _logged(store, where.names)
    frame = runs.drop(columns=loops.names.intersection(runs.columns))  # as the wide table does
    if logged:
        frame = store.dataframe(logged, project)
        frame = frame[frame["run_uid"].isin(runs["run_uid"])]
        extra = [n for n in where.names if n not in frame.columns and n in runs.columns]
        frame = frame.merge(runs[["run_uid", *extra]], on="run_uid", how="left")
    problems = [
        f"{name} is a loop: read a value logged inside it too (e.g. `acc > 0.5 and {name} >= 3`)"
        f" or use --iter {name}=..."
        if name in loops.names
        else f"{name} is neither a logged name nor a run column (an arg, status, ...)"
        for name in where.names
        if name not in frame.columns
    ]
    if problems:
        raise FlorError(f"--where {where.expression!r}: " + "; ".join(problems))
    return frame


def _existing(
    store: Store, names: Sequence[str], runs: pd.DataFrame, project: str | None
) -> pd.DataFrame | None:
    """The wide table of the requested names some run holds already (None: no run does)."""
    logged = _logged(store, names)
    if not logged:
        return None
    frame = store.dataframe(logged, project)
    return frame[frame["run_uid"].isin(runs["run_uid"])]


def _probe(store: Store, uids: list[str], project: str | None) -> pd.DataFrame | None:
    """The wide table, for runs `uids`, of every name logged inside a loop.

    A loop outside `flor.checkpointing` records no context rows: the values logged in its
    iterations are all that tells which there were (any one name may skip some).
    """
    if not uids:
        return None
    query = select(s.LogName.name).where(s.LogName.sig_id != 0).distinct()  # 0: run level
    names = sorted(_frame(store, query, ["name"])["name"])
    return store.dataframe(names, project, uids) if names else None


def _loops_seen(frames: Sequence[pd.DataFrame], loops: _Loops) -> dict[str, tuple[str, set[int]]]:
    """Per run, the outermost loop its rows in `frames` lie in, and their iterations there.

    The loop of a run whose outer loop recorded no context rows (one outside
    `flor.checkpointing`) is known only from the values logged inside it.
    """
    seen: dict[str, tuple[str, set[int]]] = {}
    for frame in frames:
        for loop in (name for name in loops.outer if name in frame.columns):
            pairs = frame.loc[frame[loop].notna(), ["run_uid", loop]].drop_duplicates()
            for uid, iteration in pairs.itertuples(index=False):
                found = seen.setdefault(uid, (loop, set()))
                if found[0] == loop:
                    found[1].add(int(iteration))
    return seen


def _history(
    runs: pd.DataFrame,
    contexts: pd.DataFrame,
    checkpoints: pd.DataFrame,
    seen: dict[str, tuple[str, set[int]]],
    skip_nested: bool,
) -> dict[str, _Run]:
    """What planning knows of each candidate run, by uid, in run order."""
    contexts_of = dict(tuple(contexts.groupby("run_uid")))
    checkpoints_of = dict(tuple(checkpoints.groupby("run_uid")))
    columns = ["run_uid", "code_version", "entry_script", "started_at", "ended_at"]
    return {
        run.run_uid: _run(
            run,
            contexts_of.get(run.run_uid, contexts.iloc[:0]),
            checkpoints_of.get(run.run_uid, checkpoints.iloc[:0]),
            seen.get(run.run_uid),
            skip_nested,
        )
        for run in runs[columns].itertuples(index=False)
    }


def _run(
    run: Any,
    contexts: pd.DataFrame,
    checkpoints: pd.DataFrame,
    seen: tuple[str, set[int]] | None,
    skip_nested: bool,
) -> _Run:
    """One run's outer loop, its iterations with their durations, and its checkpoints."""
    loop = _outer_loop(contexts, checkpoints) or (seen[0] if seen else None)
    contexts = contexts[contexts["loop_name"] == loop]
    checkpoints = checkpoints[checkpoints["loop_name"] == loop]
    timed = contexts[contexts["seconds"].notna()]
    recorded = dict(
        zip(timed["iteration"].astype(int), timed["seconds"].astype(float), strict=True)
    )
    inner = timed[timed["inner"].notna()]
    inner = dict(zip(inner["iteration"].astype(int), inner["inner"].astype(float), strict=True))
    known = set(contexts["iteration"].astype(int)) | (
        seen[1] if seen and seen[0] == loop else set()
    )
    unmeasured = known - recorded.keys()  # e.g. a loop outside `flor.checkpointing`
    # The run's span: from its first iteration when that came first (a run's started_at is
    # stamped by its writer process once started, after training began) to the end its
    # writer stamped once it had written everything. Less the start-up: the whole span of a
    # run shorter than the writer's start is that, and it is counted for every replay.
    start = min([run.started_at.timestamp(), *contexts["started_at"]])
    end = run.ended_at.timestamp() if pd.notna(run.ended_at) else start
    rest = max(0.0, end - start - sum(recorded.values()) - STARTUP_SECONDS)
    return _Run(
        uid=run.run_uid,
        code_version=run.code_version,
        entry_script=run.entry_script,
        loop=loop,
        seconds=recorded | {i: rest / len(unmeasured) for i in unmeasured},
        inner=inner,
        checkpoints=dict(
            zip(checkpoints["iteration"].astype(int), checkpoints["bytes"].astype(int), strict=True)
        ),
        outside=0.0 if unmeasured else rest,
        skip_nested=skip_nested,
    )


def _outer_loop(contexts: pd.DataFrame, checkpoints: pd.DataFrame) -> str | None:
    """The outer loop a replay selects iterations of: the checkpointed one, else the first."""
    names = list(contexts.sort_values("started_at")["loop_name"].unique())
    checkpointed = set(checkpoints["loop_name"])
    return next((name for name in names if name in checkpointed), names[0] if names else None)


def _check_iters(iters: dict[str, Selection], history: dict[str, _Run]) -> None:
    outer = sorted({run.loop for run in history.values() if run.loop})
    unknown = sorted(set(iters) - set(outer))
    if unknown:
        raise FlorError(
            f"--iter {', '.join(unknown)}: not the outer loop of any run to replay; replay "
            f"selects iterations of the outer loop ({', '.join(outer) or 'none recorded'})"
        )


def _outer_iterations(frame: pd.DataFrame, history: dict[str, _Run]) -> pd.Series:
    """Each row's iteration of its run's outer loop; NA for rows outside that loop."""
    result = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    loop_of = frame["run_uid"].map({uid: run.loop for uid, run in history.items()})
    for loop in loop_of.dropna().unique():
        if loop in frame.columns:
            rows = loop_of == loop
            result[rows] = frame.loc[rows, loop].astype("Int64")
    return result


def _where_matches(
    where: Where, frame: pd.DataFrame, history: dict[str, _Run]
) -> dict[str, set[int] | None]:
    """The runs with a satisfying row, in run order: the outer iterations of those rows,
    or None (every iteration) when a satisfying row lies outside the outer loop."""
    hits = frame[where.mask(frame)]
    pairs = pd.DataFrame(
        {"run_uid": hits["run_uid"], "iteration": _outer_iterations(hits, history)}
    )
    found: dict[str, set[int] | None] = {}
    for uid, iteration in pairs.drop_duplicates().itertuples(index=False):
        if pd.isna(iteration):
            found[uid] = None
        elif found.get(uid, set()) is not None:
            found.setdefault(uid, set()).add(int(iteration))
    return {uid: found[uid] for uid in history if uid in found}


def _held(
    frame: pd.DataFrame, names: Sequence[str], history: dict[str, _Run], loops: _Loops
) -> dict[str, _Held]:
    """Per run, where each requested name has a value already (forward or replayed).

    A value counts for an iteration when it lies in it, or at run level (outside every
    loop); the wide table broadcasts run-level values onto loop rows, which counts the same.
    """
    outer = _outer_iterations(frame, history)
    loop_columns = [c for c in frame.columns if c in loops.names]
    run_level = frame[loop_columns].isna().all(axis=1)
    held = {uid: _Held() for uid in history}
    for name in (n for n in names if n in frame.columns):
        present = frame[name].notna()
        cells = pd.DataFrame(
            {"run_uid": frame["run_uid"], "iteration": outer, "run_level": run_level}
        )[present].drop_duplicates()
        for uid, iteration, at_run_level in cells.itertuples(index=False):
            have = held[uid]
            have.anywhere.add(name)
            if at_run_level:
                have.run_level.add(name)
            elif pd.notna(iteration):
                have.by_iteration.setdefault(int(iteration), set()).add(name)
    return held


def _item(
    run: _Run,
    matched: set[int] | None,
    selection: Selection | None,
    held: _Held | None,
    names: Sequence[str],
    where: Where | None,
) -> Item | None:
    """The replay of `run` the request needs, or None when it needs none.

    `matched`: the iterations `where` selected (None: all); `held`: the values the run has
    already, when only missing ones are wanted.
    """
    reasons = []
    if where is not None:
        reasons.append("where matched" + ("" if matched is None else f" {compact(matched)}"))
    if selection is not None:
        reasons.append(f"--iter {run.loop}={selection}")
    run_level = selection is not None and selection.kind == "none"
    pool: list[int] | None = None  # None: the run as a whole, no iteration of its own
    if run.iterations and not run_level:
        pool = run.iterations if matched is None else sorted(matched)
        if selection is not None:
            kept = set(selection.narrow(run.iterations))
            pool = [i for i in pool if i in kept]
        if not pool:
            return None
    if held is None:
        reasons.append("replayed even where values exist")
    else:
        lacking = {i: held.missing(names, i) for i in (pool or [None])}
        units = [i for i, missing in lacking.items() if missing]
        if not units:
            return None
        missing = {name for i in units for name in lacking[i]}
        reasons.append("missing " + ", ".join(n for n in names if n in missing))
        pool = units if pool else None
    if pool is None:
        iterations = () if run_level else None
    else:
        iterations = None if pool == run.iterations else tuple(pool)
    return Item(
        run_uid=run.uid,
        code_version=run.code_version,
        entry_script=run.entry_script,
        loop=run.loop,
        iterations=iterations,
        estimated_seconds=_estimate(run, iterations),
        reason="; ".join(reasons),
    )


def _estimate(run: _Run, iterations: tuple[int, ...] | None, run_level: bool = True) -> float:
    """Seconds a replay of `iterations` of `run` takes, from what its forward run recorded.

    The start-up cost, the run's time outside its outer loop, the recorded time of every
    iteration the replay executes (the selected ones and those re-executed silently from
    the nearest earlier checkpoint, per `replay.steps`; less their nested loops where the
    replay skips those) and the reading of the checkpoints it restores.
    """
    if iterations is None:
        executed = [Step(i, "record") for i in run.iterations]
    else:
        executed = [s for s in steps(iterations, run.checkpoints) if s.action != "skip"]
    restored = [step.restore for step in executed if step.restore is not None]
    compute = 0.0
    for step in executed:
        compute += run.seconds.get(step.iteration, 0.0)
        if run.skip_nested and step.iteration in run.checkpoints:
            compute -= run.inner.get(step.iteration, 0.0)
            restored.append(step.iteration)
    final = max(run.checkpoints, default=None)
    if run_level and iterations is not None and final is not None and final not in iterations:
        restored.append(final)  # a loop cut short ends in the state of the last checkpoint
    read = sum(run.checkpoints[i] for i in restored) / READ_BYTES_PER_SECOND
    return STARTUP_SECONDS + run.outside + compute + read


def _split(items: list[Item], history: dict[str, _Run], workers: int) -> list[Item]:
    """Split the longest replays into segments of their iterations until each worker has one.

    A segment starts from the checkpoint before its first iteration; a split pays off only
    where each half's compute exceeds the fixed cost of one more replay process.
    """
    items = list(items)
    while len(items) < workers:
        longest = max(items, key=lambda item: item.estimated_seconds, default=None)
        halves = _halves(longest, history[longest.run_uid]) if longest else None
        if halves is None:
            return items
        at = items.index(longest)
        items[at : at + 1] = halves
    return items


def _halves(item: Item, run: _Run) -> tuple[Item, Item] | None:
    """The item cut in two at the checkpoint that balances the halves' estimates, or None
    where no cut gives each half more compute than one more replay process costs.

    The first half's estimate grows with the cut and the second's shrinks, so the balanced
    cut is found by bisection: O(n log n) estimates of n iterations, not O(n^2).
    """
    pool = list(run.iterations if item.iterations is None else item.iterations)
    cuts = [
        c for c in range(1, len(pool)) if pool[c - 1] in run.checkpoints
    ]  # 2nd half starts there

    def costs(cut: int) -> tuple[float, float]:
        return (
            _estimate(run, tuple(pool[:cut]), run_level=False),
            _estimate(run, tuple(pool[cut:])),
        )

    low, high = 0, len(cuts)
    while low < high:
        middle = (low + high) // 2
        first, second = costs(cuts[middle])
        if first < second:
            low = middle + 1
        else:
            high = middle
    fixed = STARTUP_SECONDS + run.outside
    best = None
    for cut in (cuts[i] for i in (low - 1, low) if 0 <= i < len(cuts)):
        estimates = costs(cut)
        if min(estimates) - fixed > fixed and (best is None or max(estimates) < max(best[1])):
            best = (cut, estimates)
    if best is None:
        return None
    cut, estimates = best
    return (
        replace(
            item, iterations=tuple(pool[:cut]), estimated_seconds=estimates[0], run_level=False
        ),
        replace(
            item,
            iterations=tuple(pool[cut:]),
            estimated_seconds=estimates[1],
            run_level=item.run_level,
        ),
    )


def compact(iterations: Iterable[int]) -> str:
    """Iterations as ranges: 0, 1, 2, 3, 4, 7 -> "0-4,7"."""
    parts = []
    ordered = sorted(set(iterations))
    for _, group in itertools.groupby(enumerate(ordered), key=lambda p: p[1] - p[0]):
        run = [i for _, i in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def _describe(iterations: tuple[int, ...] | None) -> str:
    if iterations is None:
        return "all"
    return compact(iterations) if iterations else "none (run level)"


def format_plan(items: Sequence[Item]) -> str:
    """The plan as a table for `--dry-run`: one replay a line, then the count and total."""
    if not items:
        return "nothing to replay"
    header = ("run", "version", "loop", "iterations", "est. s", "reason")
    rows = [
        (
            item.run_uid,
            item.code_version[:10],
            item.loop or "-",
            _describe(item.iterations),
            f"{item.estimated_seconds:.1f}",
            item.reason,
        )
        for item in items
    ]
    widths = [max(len(row[k]) for row in (header, *rows)) for k in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(width) if k == 4 else cell.ljust(width)
            for k, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    ]
    total = sum(item.estimated_seconds for item in items)
    lines.append(f"{len(items)} replay(s), about {total:.1f} s one after another")
    return "\n".join(lines)
