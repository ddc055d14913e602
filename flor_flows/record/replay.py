"""Replay semantics, in one place: which outer iterations a replay runs, skips or restores.

Iteration i of the outer loop starts from the state at the end of iteration i-1, which is
the checkpoint written at that boundary. A replay of selected iterations therefore skips
(without executing) every iteration up to the nearest checkpoint before a target, restores
that checkpoint, re-executes silently up to the target, records the target, and stops after
the last target. Where the requested values read what the loop carries outside its
checkpoints, no checkpoint can stand in: every iteration runs from the first (`from_start`).

Where the replayed code marks its iteration body (see `flor_flows.replay.shortcuts`), a
target runs only the part its requested statements need: its tail (what follows the last
requested statement) is cut when the next target starts from a checkpoint anyway, and its
head (what precedes the first one) is replaced by the iteration's own end checkpoint when
nothing from the requests on changes the checkpointed state.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

Action = Literal["skip", "silent", "record"]


@dataclass(frozen=True)
class Step:
    """What a replay does with one outer iteration, and what it restores first."""

    iteration: int
    action: Action
    restore: int | None = None  # restore the checkpoint written at the end of this iteration first
    head: bool = False  # restore this iteration's own end checkpoint in place of its head
    cut: bool = False  # leave out the iteration's tail, after its last requested statement


def steps(
    selected: Iterable[int] | None, checkpointed: Collection[int], last: int | None = None
) -> Iterator[Step]:
    """The plan for an outer loop given the selected iterations (None: all of them).

    `checkpointed` holds the iterations whose end-of-iteration checkpoint exists; `last` is
    the last iteration the run recorded: a replay never goes past it (None: not known, for
    runs recorded before flor-flows kept it). With every iteration selected the loop simply
    runs, up to `last`.
    """
    if selected is None:
        position = 0
        while last is None or position <= last:
            yield Step(position, "record")
            position += 1
        return
    ordered = sorted(checkpointed)
    position = 0  # the live state is valid at the start of this iteration
    for target in sorted(set(selected)):
        if target < position or (last is not None and target > last):
            continue
        before = bisect.bisect_left(ordered, target)  # the latest checkpoint before the target
        restore = ordered[before - 1] if before and ordered[before - 1] >= position else None
        if restore is not None:
            for i in range(position, restore + 1):
                yield Step(i, "skip")
            position = restore + 1
        for i in range(position, target):
            yield Step(i, "silent", restore if i == position and restore is not None else None)
            restore = None
        yield Step(target, "record", restore)
        position = target + 1


def from_start(selected: Iterable[int] | None, last: int, run_level: bool) -> Iterator[Step]:
    """The plan where the requested values read what the loop carries from one iteration to
    the next outside its checkpoints (`replay.skipping.carried_state`): no checkpoint stands
    in for an iteration, so every one runs from the first, recording the selected ones (None:
    all), up to the last selected one, or to `last` for the statements after the loop
    (`run_level`)."""
    targets = set(range(last + 1)) if selected is None else {t for t in selected if t <= last}
    end = last if run_level else max(targets, default=-1)
    for iteration in range(end + 1):
        yield Step(iteration, "record" if iteration in targets else "silent")


def shortcut_steps(
    targets: Iterable[int] | None,
    checkpointed: Collection[int],
    last: int,
    head: bool,
    final_restore: bool,
) -> Iterator[Step]:
    """The plan for an outer loop whose body is marked for shortcuts (see the module doc).

    `targets` are the iterations to record (None: all, up to `last`); `head` says the
    body's head may be replaced by the iteration's end checkpoint; `final_restore` that the
    statements after the loop need its end state, so the last target keeps its tail unless
    a checkpoint at or after it can stand in for it.
    """
    ordered = sorted(checkpointed)
    wanted = sorted({t for t in (range(last + 1) if targets is None else targets) if t <= last})
    live: int | None = 0  # the live state is that at the start of this iteration (None: none)
    for k, target in enumerate(wanted):
        if head and target in checkpointed:
            yield Step(target, "record", head=True, cut=True)
            live = None
            continue
        before = bisect.bisect_left(ordered, target)
        latest = ordered[before - 1] if before else None  # the latest checkpoint before it
        restore = None
        if live != target:
            if latest is not None and (live is None or latest >= live):
                restore, start = latest, latest + 1
            else:  # from the live state (a cut always leaves a checkpoint to go on from)
                start = live if live is not None else 0
            for i in range(start, target):
                yield Step(i, "silent", restore if i == start else None)
                restore = None
        # The tail may go when whatever comes next restores a checkpoint at or after it.
        upto = wanted[k + 1] - 1 if k + 1 < len(wanted) else (last if final_restore else None)
        following = ordered[bisect.bisect_left(ordered, target) :]
        cut = upto is None or bool(following and following[0] <= upto)
        yield Step(target, "record", restore, cut=cut)
        live = None if cut else target + 1
