"""The outer loop of a run in replay mode: which iterations run, and from which state.

`Run` follows the plan of `replay.steps` (or `replay.shortcut_steps` for a body marked for
shortcuts) here: it skips iterations without executing them, restores the checkpoint an
iteration starts from, runs the others silently or recorded, and stands in for the parts of
an iteration a replay leaves out (`runs_head`, `runs_tail`, a skipped nested loop) with the
iteration's end checkpoint. Kept apart from `run.py`, which records; this only replays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any, NamedTuple

from flor_flows.record import replay
from flor_flows.record.frames import ROOT, Frame

if TYPE_CHECKING:
    from flor_flows.config import Settings
    from flor_flows.record.buffer import Buffer
    from flor_flows.record.checkpointer import Checkpointer


class Measures(NamedTuple):
    """What a replay measured, for the estimates of later plans (`replay.costs`)."""

    read_bytes: int  # the checkpoints it restored
    read_seconds: float  # reading and restoring them
    loop_seconds: float  # in its outer loop, restores included: the rest is outside it
    forked: bool  # forked from a fork server, its writer ready (`record.spare`)


class ReplayLoop:
    """The replay side of `Run`: its outer loop and the checkpoints that stand in for code."""

    # The state of `Run` this works on (set by `Run.__init__`).
    buffer: Buffer
    settings: Settings
    checkpointing: Checkpointer | None
    selected: tuple[int, ...] | None
    shortcuts: dict[str, bool]
    run_level: bool
    from_start: bool
    frame: Frame
    muted: bool
    step: replay.Step | None
    outer_checkpoint: dict[str, Any] | None
    reads: tuple[int, float]  # the checkpoints restored: bytes, seconds (for the estimates)
    looped: float  # seconds in the outer loop (for the estimates)
    _enter: Callable[[str, int | None, Any], None]  # enter an iteration (a child frame)

    def _replay_outer(self, name: str, iterable: Iterable[Any]) -> Iterator[Any]:
        """Run the outer loop of a replay following `replay.steps` (skip, restore, record).

        A loop cut short (iterations selected) ends in the state of its last checkpoint, the
        end of training, so statements after it see what they saw in the forward run.
        """
        ready = self.buffer.wait_ready()
        began = time.perf_counter()
        recorded = {}
        if self.checkpointing is not None:
            recorded = {c["iteration"]: c for c in ready["checkpoints"] if c["loop_name"] == name}
        last = ready["history"]["iterations"].get(name)  # never past what the run recorded
        if self.from_start and last is not None:
            plan = replay.from_start(self.selected, last, self.run_level)
        elif self.from_start:  # a run recorded before its last iteration was kept
            plan = replay.steps(self.selected, (), None)
        elif name in self.shortcuts and last is not None and self.checkpointing is not None:
            head = self.shortcuts[name]
            plan = replay.shortcut_steps(self.selected, recorded, last, head, self.run_level)
        else:
            plan = replay.steps(self.selected, recorded, last)
        items = iter(iterable)
        position = 0
        stale = False  # the live state is not that of the end of the last iteration run
        try:
            for step in plan:
                skip = step.iteration - position
                if skip:
                    next(islice(items, skip - 1, skip), None)
                try:
                    item = next(items)
                except StopIteration:
                    return
                position = step.iteration + 1
                if step.action == "skip":
                    continue
                if step.restore is not None:
                    self._restore(recorded[step.restore])
                self.outer_checkpoint = recorded.get(step.iteration)
                self.muted = step.action == "silent"
                self.step, stale = step, step.cut
                self._enter(name, step.iteration, item)
                yield item
                self.frame = ROOT
                self.muted = not self.run_level
            final = max(recorded, default=None)
            if self.run_level and final is not None and (final >= position or stale):
                self._restore(recorded[final])
        finally:
            self.frame, self.muted, self.outer_checkpoint = ROOT, not self.run_level, None
            self.step = None
            self.looped += time.perf_counter() - began

    def _restore(self, saved: dict[str, Any]) -> None:
        from flor_flows.versioning.checkpoints import CheckpointStore, restore

        started = time.perf_counter()
        data = CheckpointStore.read(saved["uri"], saved["sha256"], self.settings.fs_options())
        restore(data, self.checkpointing.objects)
        self.reads = (self.reads[0] + len(data), self.reads[1] + time.perf_counter() - started)

    def runs_head(self) -> bool:
        """Whether the replay runs the head of this outer iteration; if not, the state is
        restored to the iteration's end, which is what its requested statements see."""
        if self.step is None or not self.step.head or self.frame.depth != 1:
            return True
        self._restore(self.outer_checkpoint)
        return False

    def runs_tail(self) -> bool:
        """Whether the replay runs the tail of this outer iteration."""
        return self.step is None or not self.step.cut or self.frame.depth != 1

    def _restore_outer(self) -> bool:
        """Stand in for a skipped nested loop: the state at the end of its outer iteration."""
        if self.outer_checkpoint is None or self.checkpointing is None:
            return False
        self._restore(self.outer_checkpoint)
        return True
