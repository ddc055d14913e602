"""When the Prefect API goes away during a training flow run, and after it comes back.

The store, not Prefect, has the last word on a run: its script records into the store on
its own, so a Prefect server that dies mid-run costs only the flow run's bookkeeping. Two
pieces keep that cheap:

- `ApiWatch` follows the API while a flow runs in this process. While the API does not
  answer, Prefect's own warnings and tracebacks about it (its log and event workers retry
  for minutes) are kept off the console; once the API is down and every run launched here
  has settled in the store, it hands the run to `on_lost` instead of waiting for Prefect's
  retries to give up.
- `reconcile` is the way back: Prefect 3.9's open-source server has no zombie detection of
  its own (heartbeats only feed an automation one has to create by hand), so a flow run
  whose process could not report its end stays Running. `reconcile` sets the training flow
  runs that are Running in Prefect but whose run in the store has ended to Completed or
  Crashed, forcing the state (the engine that would have proposed it is gone).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from flor_flows.config import Settings
from flor_flows.server import api_problem
from flor_flows.store import open_store
from flor_flows.training import launch

TRAINING_FLOW = "train"  # flows/training.py's flow name
# A flow run is settled only this long after its run ended in the store: until then its
# own process may still be publishing and about to set the final state itself.
RECONCILE_GRACE = float(os.environ.get("FLOR_FLOWS_RECONCILE_GRACE", "30"))
WATCH_INTERVAL = 1.0  # seconds between health checks of the API during a flow run
WATCH_TIMEOUT = 2.0  # a health check's timeout: a live API answers in milliseconds


def reconcile(settings: Settings, grace: float = RECONCILE_GRACE) -> list[str]:
    """Set this project's training flow runs that a lost API left Running to the state their
    run has in the store (Completed; Crashed for a failed run); returns their flow-run ids.

    Runs still running in the store, and runs that ended less than `grace` seconds ago, are
    left alone. Only flow runs the API reports Running are read (at most 200 a call).
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
    from prefect.states import Completed, Crashed

    with get_client(sync_client=True) as client:
        running = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[TRAINING_FLOW])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
            limit=200,
        )
        if not running:
            return []
        ended = _ended_runs(settings, {str(fr.id) for fr in running}, grace)
        settled = []
        for flow_run in running:
            found = ended.get(str(flow_run.id))
            if found is None:
                continue
            uid, status = found
            why = f"run {uid} {status} in the store; the Prefect API was away when it ended"
            state = Completed(message=why) if status == "completed" else Crashed(message=why)
            client.set_flow_run_state(flow_run.id, state, force=True)
            settled.append(str(flow_run.id))
    return settled


def _ended_runs(settings: Settings, flow_run_ids: set[str], grace: float) -> dict[str, Any]:
    """flow-run id -> (run uid, status) of the project's runs among `flow_run_ids` that
    ended (any status but running) at least `grace` seconds ago."""
    runs = open_store(settings.store_url).runs(settings.project_name)
    if not len(runs):
        return {}
    before = datetime.now(UTC) - timedelta(seconds=grace)
    ended = runs[
        runs["prefect_flow_run_id"].isin(flow_run_ids)
        & (runs["status"] != "running")
        & (runs["ended_at"].notna())
        & (runs["ended_at"] <= before)
    ]
    return {
        row.prefect_flow_run_id: (row.run_uid, row.status) for row in ended.itertuples(index=False)
    }


class _QuietPrefect(logging.Filter):
    """Drops Prefect's warnings and errors (its retries and failures to reach the API)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("prefect") and record.levelno >= logging.WARNING)


class ApiWatch(threading.Thread):
    """Health-checks the Prefect API while a flow runs here (a daemon thread; `stop` ends it).

    While the API is down, Prefect's warnings and errors stay off the console (a filter on
    its log handlers; its API log worker's stderr notes are off too, see `_quiet`). Once it
    is down and the runs launched since the watch started have all settled in the store
    (at least one), `on_lost(run, down_for)` is called once, with the last of them.
    """

    def __init__(
        self,
        on_lost: Callable[[launch.Launch, float], Any],
        interval: float = WATCH_INTERVAL,
    ) -> None:
        super().__init__(name="flor-flows-api-watch", daemon=True)
        self.on_lost = on_lost
        self.interval = interval
        self._before = {run.run_uid for run, _ in launch.launches()}
        self._done = threading.Event()
        self._filter = _QuietPrefect()
        self._quieted: list[logging.Handler] = []
        self._raise_exceptions = logging.raiseExceptions

    def stop(self) -> None:
        self._done.set()
        self._quiet(False)

    def run(self) -> None:
        down_since: float | None = None
        while not self._done.wait(self.interval):
            if api_problem(WATCH_TIMEOUT) is None:
                down_since = None
                self._quiet(False)
                continue
            if down_since is None:
                down_since = time.monotonic()
                self._quiet(True)
            ours = [
                (run, done) for run, done in launch.launches() if run.run_uid not in self._before
            ]
            if ours and all(done for _, done in ours) and not self._done.is_set():
                self.on_lost(ours[-1][0], time.monotonic() - down_since)
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
