"""Replay semantics, in one place: which outer iterations a replay runs, skips or restores.

Iteration i of the outer loop starts from the state at the end of iteration i-1, which is
the checkpoint written at that boundary. A replay of selected iterations therefore skips
(without executing) every iteration up to the nearest checkpoint before a target, restores
that checkpoint, re-executes silently up to the target, records the target, and stops after
the last target.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

Action = Literal["skip", "silent", "record"]


@dataclass(frozen=True)
class Step:
    iteration: int
    action: Action
    restore: int | None = None  # restore the checkpoint written at the end of this iteration first


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
