"""Which historical runs, and which of their outer iterations, a hindsight request replays.

`plan` combines a `--where` filter (`replay.where`) and `--iter` selections
(`replay.selection`) with what the store holds (read by `store.history`; no SQL here): the
finished runs, the outer iterations each recorded (per run, `replay.history`), the values
already logged (by default only what is missing is replayed), and the durations and
checkpoint sizes the cost model (`replay.costs`) turns into an estimate of what each replay
costs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import pandas as pd

from flor_flows.errors import RequestError
from flor_flows.replay import costs
from flor_flows.replay.history import RunHistory, assemble
from flor_flows.replay.selection import Selection, check_loops, compact
from flor_flows.replay.where import Where, parse_where
from flor_flows.store import history as reads

if TYPE_CHECKING:
    from pathlib import Path

    from flor_flows.store.store import Store


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
    # Before it starts, the seconds it waits for the fork server of its script to import the
    # script's libraries (`replay.forkserver`): the first replay of a script whose server is
    # not running yet; once per command, shared by the replays that fork from it.
    server_seconds: float = 0.0
    server_guessed: bool = False  # no server of its script measured its imports here yet


@dataclass
class _Held:
    """The requested names a run holds already: anywhere, at run level, per iteration."""

    anywhere: set[str] = field(default_factory=set)
    run_level: set[str] = field(default_factory=set)
    by_iteration: dict[int, set[str]] = field(default_factory=dict)

    def missing(
        self, names: Sequence[str], iteration: int | None, looped: Collection[str] = ()
    ) -> list[str]:
        """The names without a value in `iteration` (None: in the run at all); a run-level
        value stands for every iteration's, but for the `looped` names (logged inside the
        loop too: `test()` called every few epochs and once after the training)."""
        if iteration is None:
            held = self.anywhere
        else:
            held = (self.run_level - set(looped)) | self.by_iteration.get(iteration, set())
        return [name for name in names if name not in held]


def plan(
    store: Store,
    names: Iterable[str],
    where: Where | str | None = None,
    iters: dict[str, Selection] | None = None,
    only_missing: bool = True,
    project: str | None = None,
    skip_nested: bool = False,
    workers: int = 1,
    shortcuts: dict[str, bool] | None = None,
    run_level: bool = False,
    from_start: bool = False,
    looped: Collection[str] = (),
    only: Collection[str] | None = None,
    root: Path | None = None,
) -> list[Item]:
    """The replays that compute `names` over history, in run order, with estimated costs.

    Candidates are finished runs (completed, failed or incomplete) with a code version and a
    script.
    `where` keeps the runs with a row that satisfies it; where those rows lie in outer
    iterations, only those iterations. `iters` narrows per outer loop name. With
    `only_missing`, iterations holding a value of every name already are left out.
    `skip_nested`: the replays skip the loops nested in the outer one; `shortcuts`: outer
    loop name -> whether they run only the requested statements of its body (True) or up
    to them (False) (`skipping.shortcuts`; both for the estimates only). `run_level`: the
    names are logged only after the training (`skipping.Logged.run_level_only`), so the
    replays run no iteration unless `iters` asks for some. `from_start`: the values read
    what the outer loop carries outside its checkpoints (`skipping.carried_state`), so the
    replays run every iteration from the first, each run in one piece. `looped`: the names
    logged inside the loop (`skipping.Logged.looped`), whose run-level values stand for no
    iteration's.
    `only`: the uids of the runs to plan (None: every candidate). `root`: the project's
    working tree, whose entry scripts name the libraries their fork servers import.
    With fewer replays than `workers`, the longest are split into segments at checkpoints.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise RequestError("a hindsight request needs at least one name to log")
    if isinstance(where, str):
        where = parse_where(where)
    iters = iters or {}
    runs = reads.candidates(store, project)
    if only is not None:
        runs = runs[runs["run_uid"].isin(list(only))].reset_index(drop=True)
    if runs.empty:
        return []
    contexts = reads.outer_iterations(store, project)
    checkpoints = reads.checkpoints(store, project)
    loops = reads.loops(store, contexts)
    where_rows = _where_rows(store, where, runs, loops, project) if where else None
    existing = reads.existing(store, names, runs, project) if only_missing else None
    untimed = sorted(set(runs["run_uid"]) - set(contexts["run_uid"]))
    probe = reads.probe(store, untimed, project)
    logged = [probe, where_rows, existing]
    rates, spans = reads.read_rates(store, project), reads.replay_spans(store, project)
    history = assemble(
        runs, contexts, checkpoints, logged, loops, skip_nested, shortcuts or {}, rates, spans
    )
    if from_start:
        history = {uid: replace(run, from_start=True, shortcut=None) for uid, run in history.items()}  # fmt: skip
    check_loops(iters, (run.loop for run in history.values() if run.loop))
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
        item = _item(run, iterations, selection, have, names, where, run_level, looped)
        if item is not None:
            items.append(item)
    return costs.split(items, history, workers, root=root)


def _where_rows(
    store: Store, where: Where, runs: pd.DataFrame, loops: reads.Loops, project: str | None
) -> pd.DataFrame:
    """The rows `where` is evaluated on: the wide table of the logged names it reads (one
    row per run when it reads none), with the run columns it reads."""
    logged = reads.logged(store, where.names)
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
        raise RequestError(f"--where {where.expression!r}: " + "; ".join(problems))
    return frame


def _outer_iterations(frame: pd.DataFrame, history: dict[str, RunHistory]) -> pd.Series:
    """Each row's iteration of its run's outer loop; NA for rows outside that loop."""
    result = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    loop_of = frame["run_uid"].map({uid: run.loop for uid, run in history.items()})
    for loop in loop_of.dropna().unique():
        if loop in frame.columns:
            rows = loop_of == loop
            result[rows] = frame.loc[rows, loop].astype("Int64")
    return result


def _where_matches(
    where: Where, frame: pd.DataFrame, history: dict[str, RunHistory]
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
    frame: pd.DataFrame, names: Sequence[str], history: dict[str, RunHistory], loops: reads.Loops
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
    run: RunHistory,
    matched: set[int] | None,
    selection: Selection | None,
    held: _Held | None,
    names: Sequence[str],
    where: Where | None,
    run_level_names: bool = False,
    looped: Collection[str] = (),
) -> Item | None:
    """The replay of `run` the request needs, or None when it needs none.

    `matched`: the iterations `where` selected (None: all); `held`: the values the run has
    already, when only missing ones are wanted; `run_level_names`: the names are logged
    after the training only, so no iteration is replayed unless `selection` asks for some;
    `looped`: the names logged inside the loop (see `_Held.missing`).
    """
    reasons = []
    if where is not None:
        reasons.append("where matched" + ("" if matched is None else f" {compact(matched)}"))
    if selection is not None:
        reasons.append(f"--iter {run.loop}={selection}")
    run_level = (selection is None and run_level_names) or (
        selection is not None and selection.kind == "none"
    )
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
        lacking = {i: held.missing(names, i, looped) for i in (pool or [None])}
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
        estimated_seconds=costs.estimate(run, iterations),
        reason="; ".join(reasons),
    )


def _describe(iterations: tuple[int, ...] | None) -> str:
    if iterations is None:
        return "all"
    return compact(iterations) if iterations else "none (run level)"


def format_plan(
    items: Sequence[Item], checks: dict[str, str] | None = None, workers: int = 1
) -> str:
    """The plan as a table for `--dry-run`: one replay a line, then the count and total, and
    with `workers` replays at a time, how long the plan takes so.

    `checks`: per run, what propagating into its code version found (ok, refused: why,
    not applicable: why), shown after the reason; a replay that will not run is not counted,
    nor is the wait for a fork server only such replays would fork from.
    """
    if not items:
        return "nothing to replay"
    header = ("run", "version", "loop", "iterations", "est. s", "reason")
    header += ("propagation",) if checks is not None else ()
    rows = [
        (
            item.run_uid,
            item.code_version[:10],
            item.loop or "-",
            _describe(item.iterations),
            _seconds(item.estimated_seconds),
            item.reason,
            *((checks.get(item.run_uid, "-"),) if checks is not None else ()),
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
    runnable = [i for i in items if checks is None or checks.get(i.run_uid, "ok") == "ok"]
    scripts = {item.entry_script for item in runnable}
    waits = {i.entry_script: i for i in items if i.server_seconds and i.entry_script in scripts}
    lines += [
        f"+ {_seconds(item.server_seconds)} s before the first replay of {script}: its fork "
        "server imports the script's libraries, once"
        + " (a guess from the run's set-up: no fork server of it ran here yet)"
        * item.server_guessed
        for script, item in waits.items()
    ]
    total = sum(i.estimated_seconds for i in runnable) + sum(
        i.server_seconds for i in waits.values()
    )
    lines.append(f"{len(runnable)} replay(s), about {total:.1f} s one after another")
    if workers > 1 and len(runnable) > 1:
        lines[-1] += f", {_wall(runnable, waits, workers):.1f} s {workers} at a time"
    if len(runnable) < len(items):  # the others will not run: their check says why
        lines[-1] += f"; {len(items) - len(runnable)} will not (refused or not applicable)"
    return "\n".join(lines)


def _wall(items: Sequence[Item], waits: dict[str, Item], workers: int) -> float:
    """Seconds `items` take `workers` at a time, in order, each as soon as a worker is free
    and its script's fork server (`waits`, started with the command) is ready."""
    free = [0.0] * workers
    for item in items:
        at = free.index(min(free))
        ready = waits[item.entry_script].server_seconds if item.entry_script in waits else 0.0
        free[at] = max(free[at], ready) + item.estimated_seconds
    return max(free)


def _seconds(seconds: float) -> str:
    """Seconds as the plan shows them: to the hundredth below one, else to the tenth."""
    return f"{seconds:.2f}" if seconds < 1 else f"{seconds:.1f}"
