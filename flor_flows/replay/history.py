"""What planning knows of each candidate run: its outer loop, the iterations it recorded with
their durations, its checkpoints, and how fast it wrote them.

`assemble` puts it together from the frames the store reads (`store.history`): the runs,
their outer-loop context rows and checkpoints, and the wide tables already read for the
request (a loop outside `flor.checkpointing` records no context rows: its iterations are
known only from the values logged in them). The cost model (`replay.costs`) estimates a
replay from a `RunHistory`; `replay.plan` selects iterations from it.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from flor_flows.replay import costs
from flor_flows.store.history import Loops


@dataclass(frozen=True)
class RunHistory:
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
    # A replay cuts the loop's body short (`skipping.shortcuts`): True when an iteration
    # runs only its requested statements, False when it runs up to them; None: all of it.
    shortcut: bool | None = None
    write_rate: float | None = None  # bytes/s its checkpoints were written at (median)
    read_rate: float | None = None  # bytes/s its replays read and restored them at
    # Its replays run every iteration from the first (`skipping.carried_state`).
    from_start: bool = False
    # What earlier replays of it (else of its entry script) took outside their outer loop,
    # forked from a fork server (True) or not: the median of the latest MEASURED_SPANS.
    replay_outside: dict[bool, float] = field(default_factory=dict)

    @property
    def iterations(self) -> list[int]:
        """The recorded outer iterations, ascending."""
        return sorted(self.seconds)


def assemble(
    runs: pd.DataFrame,
    contexts: pd.DataFrame,
    checkpoints: pd.DataFrame,
    logged: Sequence[pd.DataFrame | None],
    loops: Loops,
    skip_nested: bool,
    shortcuts: dict[str, bool],
    read_rates: dict[str, float] | None = None,
    spans: pd.DataFrame | None = None,
) -> dict[str, RunHistory]:
    """What planning knows of each candidate run, by uid, in run order.

    `runs` (`store.history.candidates`), `contexts` (`outer_iterations`), `checkpoints`,
    `read_rates` (`read_rates`), `spans` (`replay_spans`): as the store reads them;
    `logged`: wide tables of the runs (None: not read), where the loops and iterations the
    context rows miss are found. A run whose replays never measured their reads takes the
    median of the others' rates.
    """
    read_rates = read_rates or {}
    outside = _outside(spans)
    usual = statistics.median(read_rates.values()) if read_rates else None
    seen = _loops_seen([frame for frame in logged if frame is not None], loops)
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
            shortcuts,
            read_rates.get(run.run_uid, usual),
            _measured(outside, run.run_uid, run.entry_script),
        )
        for run in runs[columns].itertuples(index=False)
    }


# Replays whose spans a run's estimates take the median of: the latest few, as the host is now.
MEASURED_SPANS = 5


def _outside(spans: pd.DataFrame | None) -> dict[tuple[str, str, bool], float]:
    """From the replay spans: ("run", uid | "script", entry script, forked) -> the median of
    the seconds outside the outer loop of its latest MEASURED_SPANS replays, each as it would
    have taken alone (a replay that ran beside others took `costs.slowdown` longer)."""
    if spans is None or spans.empty:
        return {}
    alone = [costs.slowdown(int(k), contention=costs.SETUP_CONTENTION) for k in spans["concurrent"]]
    spans = spans.assign(outside=spans["outside"] / alone)
    found = {}
    for kind, key in (("run", "run_uid"), ("script", "entry_script")):
        for (name, forked), group in spans.groupby([key, "forked"]):
            found[kind, name, bool(forked)] = float(group["outside"].tail(MEASURED_SPANS).median())
    return found


def _measured(
    outside: dict[tuple[str, str, bool], float], uid: str, script: str
) -> dict[bool, float]:
    """Per forked or not: what the run's own replays took outside their loop, else those of
    its entry script."""
    found = {}
    for forked in (True, False):
        seconds = outside.get(("run", uid, forked), outside.get(("script", script, forked)))
        if seconds is not None:
            found[forked] = seconds
    return found


def _run(
    run: Any,
    contexts: pd.DataFrame,
    checkpoints: pd.DataFrame,
    seen: tuple[str, set[int]] | None,
    skip_nested: bool,
    shortcuts: dict[str, bool],
    read_rate: float | None,
    replay_outside: dict[bool, float],
) -> RunHistory:
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
    rest = max(0.0, end - start - sum(recorded.values()) - costs.STARTUP_SECONDS)
    return RunHistory(
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
        shortcut=shortcuts.get(loop) if loop else None,
        write_rate=_write_rate(checkpoints),
        read_rate=read_rate,
        replay_outside=replay_outside,
    )


def _write_rate(checkpoints: pd.DataFrame) -> float | None:
    """The median speed, in bytes/s, at which a run wrote its checkpoints (None: untimed)."""
    timed = checkpoints[checkpoints["seconds"] > 0]
    return float((timed["bytes"] / timed["seconds"]).median()) if len(timed) else None


def _outer_loop(contexts: pd.DataFrame, checkpoints: pd.DataFrame) -> str | None:
    """The outer loop a replay selects iterations of: the checkpointed one, else the first."""
    names = list(contexts.sort_values("started_at")["loop_name"].unique())
    checkpointed = set(checkpoints["loop_name"])
    return next((name for name in names if name in checkpointed), names[0] if names else None)


def _loops_seen(frames: Sequence[pd.DataFrame], loops: Loops) -> dict[str, tuple[str, set[int]]]:
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
