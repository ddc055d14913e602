"""Checkpointing during a forward run: when to checkpoint, and writing off the critical path.

The training thread only copies state (`snapshot`); serialising, hashing and writing happen
on one background thread while training goes on, as Flor's background materialisation did.
At most one write is in flight: a boundary that comes while the previous write is still
running waits for the next one (or, in "every" mode, for that write), so memory stays bounded.
The adaptive policy is charged the whole cost of a checkpoint (copy plus write), so the
checkpoints of a run take at most epsilon of its CPU time, wherever that time is spent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from flor_flows.config import Settings
from flor_flows.record.frames import Frame
from flor_flows.versioning import checkpoints


class Checkpointer:
    """The checkpoints of one `flor.checkpointing` block: when to take them, and taking them."""

    def __init__(
        self,
        objects: dict[str, Any],
        anchor: Frame,
        settings: Settings,
        record: Callable[[dict[str, Any]], None],
    ) -> None:
        self.objects, self.anchor, self._record = objects, anchor, record
        self.store = checkpoints.CheckpointStore(settings.checkpoint_url, settings.fs_options())
        self.policy = checkpoints.policy(settings.checkpoint_policy)
        self._executor: ThreadPoolExecutor | None = None
        self._pending: tuple[Future[checkpoints.Written], dict[str, Any]] | None = None
        self._skipped: tuple[str, dict[str, Any]] | None = None  # the last boundary, unwritten

    def boundary(self, run_uid: str, row: dict[str, Any], loop_seconds: float) -> None:
        """The end of an outer iteration: maybe start a checkpoint of the state now."""
        due = self.policy.should_write(loop_seconds)
        if not due or not self.collect(wait=self.policy.every_iteration):
            self._skipped = (run_uid, row)
            return
        self._write(run_uid, row)

    def loop_ended(self) -> None:
        """The outer loop ran to its end: make sure its final state is checkpointed.

        A warm start continues from a run's last checkpoint, so that must be the end state.
        """
        if self._skipped is not None:
            self.collect(wait=True)
            self._write(*self._skipped)

    def _write(self, run_uid: str, row: dict[str, Any]) -> None:
        self._skipped = None
        start = time.perf_counter()
        payload = checkpoints.snapshot(self.objects)
        row = row | {"copy_seconds": time.perf_counter() - start}
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="flor-flows-checkpoint")
        future = self._executor.submit(
            self.store.write, run_uid, row["loop_name"], row["iteration"], payload
        )
        self._pending = (future, row)

    def collect(self, wait: bool) -> bool:
        """Record a finished write (raising its error); False while one is still running."""
        if self._pending is None:
            return True
        future, row = self._pending
        if not wait and not future.done():
            return False
        self._pending = None
        written = future.result()
        seconds = row.pop("copy_seconds") + written.seconds
        self.policy.wrote(seconds)  # the whole cost, copy and write, counts against epsilon
        self._record(
            row
            | {
                "uri": written.uri,
                "sha256": written.sha256,
                "bytes": written.bytes,
                "seconds": seconds,
                "created_at": datetime.now(UTC),
            }
        )
        return True

    def close(self) -> None:
        """Wait for the last write and stop the writer thread."""
        try:
            self.collect(wait=True)
        finally:
            if self._executor is not None:
                self._executor.shutdown()
