"""Where each run of a backfill stands, kept in one place while its replays run.

`Tracker` is the one owner of a backfill item's status during a flow run: the store first
(what a retry, `flor-flows backfills` and a lost API's reconcile read), then what people
watch (the live status table and the progress bar). `final_state` sums the flow run up.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.states import Completed, Failed, State

from flor_flows import children
from flor_flows.errors import ReplayDiverged, ReplayFailed
from flor_flows.publishing import published
from flor_flows.replay.artifacts import StatusBoard
from flor_flows.store import open_store
from flor_flows.store.backfills import NO_VALUES

if TYPE_CHECKING:
    from flor_flows.replay.backfill import Resolved
    from flor_flows.replay.plan import Item


class _OneLine(logging.Filter):
    """Prefect logs a failed task run with its traceback; a replay that failed or diverged
    says why in its exception's message, so its record keeps that line only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ReplayFailed | ReplayDiverged):
            record.exc_info, record.exc_text = None, None
        return True


def failures_in_one_line() -> None:
    """From now on, this process's task runs that end in a failed or diverged replay are
    logged in one line, without Prefect's traceback (other failures keep theirs)."""
    logger = logging.getLogger("prefect.task_runs")
    if not any(isinstance(f, _OneLine) for f in logger.filters):
        logger.addFilter(_OneLine())


class Tracker:
    """The status of every run of `resolved` as its replays (one or more segments) end."""

    def __init__(self, resolved: Resolved, prefix: str, flow_run_id: object) -> None:
        self.resolved, self.flow_run_id = resolved, flow_run_id
        self.store = open_store(resolved.settings.store_url)
        names = ", ".join(resolved.names)
        self.progress = published(
            create_progress_artifact,
            0.0,
            key=f"{prefix}-backfill-progress",
            description=f"Replays of {names} finished, of {len(resolved.items)}.",
        )
        self.board = StatusBoard(f"{prefix}-backfill-status", resolved.items)
        self.segments_left = Counter(item.run_uid for item in resolved.items)
        self.outcomes: dict[str, tuple[str, str]] = {}  # runs not replayed: status, why
        self.done = 0

    def replaying(self, item: Item) -> None:
        """One of the run's replays started."""
        if item.run_uid not in self.outcomes:  # a failed segment's run stays failed
            self.board.set(item.run_uid, "replaying")

    def not_run(self, item: Item, status: str, why: str) -> None:
        """The item was not replayed (its version not propagated, or not applicable); the
        propagation recorded that in the store already."""
        self.outcomes[item.run_uid] = (status, why)
        self.board.set(item.run_uid, status, why)
        self._ended()

    def failed(self, item: Item, exc: ReplayFailed | ReplayDiverged) -> None:
        """One of the run's replays failed, diverged, or was stopped: the run is not replayed."""
        status = "diverged" if isinstance(exc, ReplayDiverged) else "replay failed"
        status = "cancelled" if children.stopping.is_set() else status
        if item.run_uid not in self.outcomes:
            self.outcomes[item.run_uid] = (status, str(exc))
            self._store(item, status, str(exc))
            self.board.set(item.run_uid, status, str(exc))
        self._ended()

    def replayed(self, item: Item) -> None:
        """One of the run's replays ended well; the run is replayed once all its segments are,
        said with why where they stored no value of the names (`NO_VALUES`)."""
        self.segments_left[item.run_uid] -= 1
        if not self.segments_left[item.run_uid] and item.run_uid not in self.outcomes:
            stored = self.store.values_replayed(
                item.run_uid, list(self.resolved.names), str(self.flow_run_id)
            )
            why = None
            if empty := [name for name, count in stored.items() if not count]:
                where = "in the replayed iterations" if item.iterations != () else "after the loop"
                why = (
                    f"its replay stored no value of {', '.join(empty)}: the statements did not "
                    f"run {where} (a condition never true there, say)"
                )
                self.outcomes[item.run_uid] = (NO_VALUES, why)
            self._store(item, "replayed", why)
            self.board.set(item.run_uid, "replayed", why)
        self._ended()

    def finish(self) -> dict[str, tuple[str, str]]:
        """The runs that were not replayed or stored no value, with their status and why."""
        self._percent(100.0)
        return self.outcomes

    def _store(self, item: Item, status: str, error: str | None) -> None:
        self.store.set_backfill_status(
            self.resolved.backfill_id, item.run_uid, status, error, self.flow_run_id
        )

    def _ended(self) -> None:
        self.done += 1
        self._percent(100 * self.done / len(self.resolved.items))

    def _percent(self, percent: float) -> None:
        if self.progress is not None:
            published(update_progress_artifact, self.progress, percent)


def final_state(
    resolved: Resolved, outcomes: dict[str, tuple[str, str]], held: dict[str, str]
) -> State:
    """The flow's end: how many runs were replayed, and every run that was not, with why."""
    by_status: dict[str, dict[str, str]] = {}
    for uid, (status, why) in outcomes.items():
        by_status.setdefault(status, {})[uid] = why
    skipped = by_status.pop("not applicable", {})
    empty = by_status.pop(NO_VALUES, {})
    runs = len({item.run_uid for item in resolved.items}) - len(skipped)
    failed = sum(len(uids) for uids in by_status.values())
    parts = [f"{runs - failed} of {runs} runs replayed"]
    if empty:
        which = "the name" if len(resolved.names) == 1 else "some of the names"
        parts.append(f"{len(empty)} of them stored no value of {which}")
    if skipped:
        parts.append(f"{len(skipped)} not applicable (their scripts log none of the names)")
    if left_out := resolved.left_out():
        parts.append(left_out)
    if held:
        who = ", ".join(f"{uid} (by {holder})" for uid, holder in held.items())
        parts.append(f"{len(held)} left to another backfill replaying them now: {who}")
    details = [
        f"{status}: {uid}: {why}"
        for status, runs_ in [*by_status.items(), (NO_VALUES, empty)]
        for uid, why in runs_.items()
    ]
    message = "; ".join(parts) + "".join(f"\n{line}" for line in details)
    return Failed(message=message) if by_status else Completed(message=message)
