"""The history a replay plan is made from: the reads of runs, loops and logged values it needs.

The only place that builds SQL for planning: the finished runs, the outer iterations each
recorded with their durations, the checkpoints, the loop signatures, and the wide table of
the values already logged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import func, select

from flor_flows.store import schema as s
from flor_flows.store.names import ARG, arg_names

if TYPE_CHECKING:
    from flor_flows.store.store import Store


def candidates(store: Store, project: str | None) -> pd.DataFrame:
    """Finished runs that can be replayed: a code version and an entry script recorded."""
    runs = store.runs(project)
    if runs.empty:
        return runs
    keep = runs["status"].isin(["completed", "failed", "incomplete"]) & runs["code_version"].notna()
    return runs[keep & runs["entry_script"].notna()].reset_index(drop=True)


def _frame(store: Store, query: Any, columns: list[str]) -> pd.DataFrame:
    with store.engine.connect() as conn:
        return pd.DataFrame(conn.execute(query).all(), columns=columns)


def _in_project(query: Any, project: str | None) -> Any:
    if project is None:
        return query
    return query.join(s.Project, s.Project.id == s.Run.project_id).where(s.Project.name == project)


def outer_iterations(store: Store, project: str | None) -> pd.DataFrame:
    """Outermost loop iterations with their durations: run_uid, loop_name, iteration,
    seconds, started_at, inner (the seconds spent in its nested loops).

    A forward run records a context row, with its duration, for every iteration of a
    checkpointed loop, so these rows are where the cost of replaying an iteration is found.
    """
    query = select(
        s.Run.uid, s.Context.loop_name, s.Context.iteration, s.Context.seconds,
        s.Context.started_at, s.Context.inner_seconds,
    ).join(s.Run, s.Run.id == s.Context.run_id)  # fmt: skip
    query = query.where(s.Context.depth == 1, s.Context.iteration.is_not(None))
    columns = ["run_uid", "loop_name", "iteration", "seconds", "started_at", "inner"]
    return _frame(store, _in_project(query, project), columns)


def checkpoints(store: Store, project: str | None) -> pd.DataFrame:
    """The checkpoints written: run_uid, loop_name, iteration, bytes, seconds (to write)."""
    query = select(
        s.Run.uid, s.Checkpoint.loop_name, s.Checkpoint.iteration, s.Checkpoint.bytes,
        s.Checkpoint.seconds,
    ).join(s.Run, s.Run.id == s.Checkpoint.run_id)  # fmt: skip
    columns = ["run_uid", "loop_name", "iteration", "bytes", "seconds"]
    return _frame(store, _in_project(query, project), columns)


def read_rates(store: Store, project: str | None) -> dict[str, float]:
    """Per run, the bytes/s at which its replays read and restored its checkpoints, over
    those that measured it."""
    query = (
        select(s.Run.uid, func.sum(s.Replay.read_bytes), func.sum(s.Replay.read_seconds))
        .join(s.Run, s.Run.id == s.Replay.run_id)
        .where(s.Replay.read_bytes > 0, s.Replay.read_seconds > 0)
        .group_by(s.Run.uid)
    )
    rates = _frame(store, _in_project(query, project), ["run_uid", "bytes", "seconds"])
    speed = rates["bytes"].astype(float) / rates["seconds"].astype(float)  # PostgreSQL: Decimal
    return dict(zip(rates["run_uid"], speed, strict=True))


# The latest completed replays a plan reads the spans of (`replay_spans`): enough for the
# latest few of each run and script, as the host is now.
SPANS_READ = 200


def replay_spans(store: Store, project: str | None) -> pd.DataFrame:
    """The latest SPANS_READ completed replays that measured their outer loop, oldest first:
    run_uid, entry_script, forked, outside (the seconds of their span, started_at to
    ended_at, that were not in the loop) and concurrent (how many of them ran at once, each
    one's span overlapping its own, itself included)."""
    query = (
        select(
            s.Run.uid,
            s.Run.entry_script,
            s.Replay.forked,
            s.Replay.started_at,
            s.Replay.ended_at,
            s.Replay.loop_seconds,
        )  # fmt: skip
        .join(s.Run, s.Run.id == s.Replay.run_id)
        .where(s.Replay.status == "completed", s.Replay.loop_seconds.is_not(None))
        .where(s.Replay.ended_at.is_not(None))
        .order_by(s.Replay.id.desc())
        .limit(SPANS_READ)
    )
    columns = ["run_uid", "entry_script", "forked", "started_at", "ended_at", "loop_seconds"]
    spans = _frame(store, _in_project(query, project), columns).iloc[::-1]
    start = spans["started_at"].map(lambda t: t.timestamp()).to_numpy(dtype=float)
    end = spans["ended_at"].map(lambda t: t.timestamp()).to_numpy(dtype=float)
    spans["outside"] = end - start - spans["loop_seconds"].to_numpy(dtype=float)
    overlapping = (start[:, None] < end[None, :]) & (end[:, None] > start[None, :])
    spans["concurrent"] = overlapping.sum(axis=1)
    return spans[["run_uid", "entry_script", "forked", "outside", "concurrent"]].reset_index(
        drop=True
    )


@dataclass(frozen=True)
class Loops:
    """Loop names as recorded: all of them, and those seen as the outermost of a run."""

    names: frozenset[str]
    outer: tuple[str, ...]  # outermost loops, those never nested in another first


def loops(store: Store, contexts: pd.DataFrame) -> Loops:
    """The loop names recorded, from the loop signatures and `contexts` (`outer_iterations`)."""
    signatures = [json.loads(n) for n in _frame(store, select(s.LoopSignature.names), ["n"])["n"]]
    nested = {name for names in signatures for name in names[1:]}
    outer = {names[0] for names in signatures if names} | set(contexts["loop_name"])
    return Loops(
        frozenset(outer.union(*signatures)),
        tuple(sorted(outer, key=lambda name: (name in nested, name))),
    )


def logged(store: Store, names: Iterable[str]) -> list[str]:
    """Those of `names` the wide table has values of: names some run logged (the log_names
    catalog), and `arg.<name>` where some run recorded the arg <name>."""
    names = list(names)
    query = select(s.LogName.name).where(s.LogName.name.in_(names)).distinct()
    found = set(_frame(store, query, ["name"])["name"])
    if any(name.startswith(ARG) for name in names):
        found |= {f"{ARG}{name}" for name in arg_names(store.engine)}
    return [name for name in names if name in found]


def existing(
    store: Store, names: Sequence[str], runs: pd.DataFrame, project: str | None
) -> pd.DataFrame | None:
    """The wide table of the requested names some run holds already (None: no run does)."""
    found = logged(store, names)
    if not found:
        return None
    frame = store.dataframe(found, project)
    return frame[frame["run_uid"].isin(runs["run_uid"])]


def probe(store: Store, uids: list[str], project: str | None) -> pd.DataFrame | None:
    """The wide table, for runs `uids`, of every name logged inside a loop.

    A loop outside `flor.checkpointing` records no context rows: the values logged in its
    iterations are all that tells which there were (any one name may skip some).
    """
    if not uids:
        return None
    query = select(s.LogName.name).where(s.LogName.sig_id != 0).distinct()  # 0: run level
    names = sorted(_frame(store, query, ["name"])["name"])
    return store.dataframe(names, project, uids) if names else None
