"""When the Prefect API goes away during a flow run, and after it comes back.

The store, not Prefect, has the last word on a run and on a backfill: a training script
records into the store on its own, and a backfill's replays are processes of this host
that do too, so a Prefect server that dies mid-run costs only the flow run's bookkeeping.
Three pieces keep that cheap:

- `ApiWatch` follows the API while a flow runs in this process. While the API does not
  answer, `publishing.API_DOWN` is set (the flows skip their artifacts) and Prefect's own warnings and
  tracebacks about it are kept off the console; once the API is down and the flow's work
  has settled in the store, it hands over to `on_lost` instead of waiting for Prefect's
  retries to give up.
- `settled_launch` and `settled_backfill` say when that work has settled: every run
  launched here ended, or every backfill run here released its leases.
- `reconcile` is the way back: Prefect 3.9's open-source server has no zombie detection of
  its own (heartbeats only feed an automation one has to create by hand), so a flow run
  whose process could not report its end stays Running. `reconcile` sets the project's
  training and backfill flow runs that are Running in Prefect but whose work in the store
  has ended to the state the store gives them, forcing it (the engine that would have
  proposed it is gone).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from flor_flows import children
from flor_flows.api import health_check
from flor_flows.config import Settings
from flor_flows.publishing import API_DOWN
from flor_flows.replay.backfill import LEASES, RELEASED, Lease
from flor_flows.store import open_store
from flor_flows.training import launch

TRAINING_FLOW = "train"  # flows/training.py's flow name
BACKFILL_FLOW = "backfill"  # flows/backfill.py's
# A flow run is settled only this long after its work ended in the store: until then its
# own process may still be publishing and about to set the final state itself.
RECONCILE_GRACE = float(os.environ.get("FLOR_FLOWS_RECONCILE_GRACE", "30"))
WATCH_INTERVAL = 1.0  # seconds between health checks of the API during a flow run
WATCH_TIMEOUT = 2.0  # a health check's timeout: a live API answers in milliseconds
# A backfill run that ended this way counts as done; any other status as not.
DONE = frozenset({"replayed", "not applicable"})

T = TypeVar("T")


def reconcile(settings: Settings, grace: float = RECONCILE_GRACE) -> list[str]:
    """Set this project's training and backfill flow runs that a lost API left Running to
    the state the store gives them; returns their flow-run ids.

    A training flow run becomes Completed, or Crashed for a failed run. A backfill flow run
    becomes Completed when every run it touched was replayed (or not applicable), Failed
    otherwise. Work still going on in the store (a run running, a backfill's live lease),
    and work that ended less than `grace` seconds ago, is left alone. Only flow runs the
    API reports Running are read (at most 200 a call).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[TRAINING_FLOW, BACKFILL_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
            limit=200,
        )
        if not running:
            return []
        ids = {str(fr.id) for fr in running}
        before = datetime.now(UTC) - timedelta(seconds=grace)
        states = _ended_runs(settings, ids, before) | _ended_backfills(settings, ids, before)
        settled = []
        for flow_run in running:
            state = states.get(str(flow_run.id))
            if state is not None:
                client.set_flow_run_state(flow_run.id, state, force=True)
                settled.append(str(flow_run.id))
    return settled


def _ended_runs(settings: Settings, flow_run_ids: set[str], before: datetime) -> dict[str, Any]:
    """flow-run id -> the final state of the project's training runs among `flow_run_ids`
    that ended (any status but running) before `before`."""
    from prefect.states import Completed, Crashed

    runs = open_store(settings.store_url).runs(settings.project_name)
    if not len(runs):
        return {}
    ended = runs[
        runs["prefect_flow_run_id"].isin(flow_run_ids)
        & (runs["status"] != "running")
        & (runs["ended_at"].notna())
        & (runs["ended_at"] <= before)
    ]
    states = {}
    for row in ended.itertuples(index=False):
        why = f"run {row.run_uid} {row.status} in the store; the Prefect API was away when it ended"
        done = row.status == "completed"
        states[row.prefect_flow_run_id] = Completed(message=why) if done else Crashed(message=why)
    return states


def _ended_backfills(
    settings: Settings, flow_run_ids: set[str], before: datetime
) -> dict[str, Any]:
    """flow-run id -> the final state of the backfill flow runs among `flow_run_ids` whose
    runs in the store all ended before `before`, none leased any more."""
    from prefect.states import Completed, Failed

    items: dict[str, list[dict[str, Any]]] = {}
    for item in open_store(settings.store_url).backfill_items_of(flow_run_ids):
        items.setdefault(item["prefect_flow_run_id"], []).append(item)
    states = {}
    for flow_run_id, touched in items.items():
        if any(i["leased"] or i["updated_at"] > before for i in touched):
            continue
        counts = Counter(i["status"] for i in touched)
        why = (
            f"backfill {touched[0]['backfill_id']}: {_counted(counts)} in the store; the "
            "Prefect API was away when it ended"
        )
        done = set(counts) <= DONE
        states[flow_run_id] = Completed(message=why) if done else Failed(message=why)
    return states


def _counted(counts: Counter[str]) -> str:
    """`2 replayed, 1 replay failed`: runs by status, most first."""
    return ", ".join(f"{n} {status}" for status, n in counts.most_common())


def settled_launch(before: set[str]) -> children.Launch | None:
    """The last run launched here since the runs `before` (uids), once every one of them
    has settled in the store; None until then, or if none was launched."""
    ours = [(run, done) for run, done in launch.launches() if run.run_uid not in before]
    return ours[-1][0] if ours and all(done for _, done in ours) else None


def settled_backfill(released_before: int) -> Lease | None:
    """The last backfill lease released here since `released_before` of them were, once
    this process holds none; None until then."""
    return RELEASED[-1] if len(RELEASED) > released_before and not LEASES else None


def backfill_summary(lease: Lease) -> tuple[str, bool]:
    """What the store says of a backfill this process ran: `2 replayed, 1 cancelled`, and
    whether every run in it is done."""
    store_url, backfill_id, _ = lease
    counts = Counter(open_store(store_url).backfill_status(backfill_id).values())
    return f"backfill {backfill_id}: {_counted(counts)}", set(counts) <= DONE


class _QuietPrefect(logging.Filter):
    """Drops Prefect's warnings and errors (its retries and failures to reach the API)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("prefect") and record.levelno >= logging.WARNING)


class ApiWatch(threading.Thread):
    """Health-checks the Prefect API while a flow runs here (a daemon thread; `stop` ends it).

    While the API is down, `API_DOWN` is set and Prefect's warnings and errors stay off the
    console (a filter on its log handlers; its API log worker's stderr notes are off too,
    see `_quiet`). Once it is down and `settled()` returns something (the flow's work has
    settled in the store), `on_lost(that, down_for)` is called once.
    """

    def __init__(
        self,
        on_lost: Callable[[T, float], Any],
        settled: Callable[[], T | None],
        interval: float = WATCH_INTERVAL,
    ) -> None:
        super().__init__(name="flor-flows-api-watch", daemon=True)
        self.on_lost = on_lost
        self.settled = settled
        self.interval = interval
        self._done = threading.Event()
        self._filter = _QuietPrefect()
        self._quieted: list[logging.Handler] = []
        self._raise_exceptions = logging.raiseExceptions

    def stop(self) -> None:
        """End the watch, and wait for its health check in flight (a thread left running at
        interpreter exit could be cut off inside the HTTP client)."""
        self._done.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(WATCH_TIMEOUT + 1.0)
        API_DOWN.clear()
        self._quiet(False)

    def run(self) -> None:
        """Check the API every `interval` until stopped, or until it is lost and work settled."""
        down_since: float | None = None
        with health_check(WATCH_TIMEOUT) as problem:
            while not self._done.wait(self.interval):
                if problem() is None:
                    down_since = None
                    API_DOWN.clear()
                    self._quiet(False)
                    continue
                if down_since is None:
                    down_since = time.monotonic()
                    API_DOWN.set()
                    self._quiet(True)
                settled = self.settled()
                if settled is not None and not self._done.is_set():
                    self.on_lost(settled, time.monotonic() - down_since)
                    return

    def _quiet(self, on: bool) -> None:
        """Filter Prefect's warnings and errors out of every console handler, or stop."""
        if on and not self._quieted:
            handlers = set(logging.getLogger().handlers)
            for name in list(logging.root.manager.loggerDict):
                if name.startswith("prefect"):
                    handlers.update(getattr(logging.getLogger(name), "handlers", ()))
            for handler in handlers:
                handler.addFilter(self._filter)
            self._quieted = list(handlers)
            # Prefect's API log worker writes "--- Error logging to API ---" and the error
            # to stderr for every batch it cannot send, unless this stdlib switch is off.
            logging.raiseExceptions = False
        elif not on and self._quieted:
            for handler in self._quieted:
                handler.removeFilter(self._filter)
            self._quieted = []
            logging.raiseExceptions = self._raise_exceptions
