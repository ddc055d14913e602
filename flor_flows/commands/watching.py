"""A flow command's Prefect API: flow runs a lost API left Running settled first, the API
watched while the flow runs."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flor_flows.commands.stopping import stoppable

T = TypeVar("T")


def reconcile_runs(project: Path) -> None:
    """Settle the project's flow runs that a lost Prefect API left Running (see reconcile);
    an API or a store that cannot be read for it is a warning: the command goes on."""
    import httpx
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from flor_flows.config import load_settings
    from flor_flows.reconcile import reconcile

    if not PREFECT_API_URL.value():  # a temporary API: no server outlived its flow runs
        return
    try:
        settled = reconcile(load_settings(project))
    except (httpx.HTTPError, ObjectNotFound) as exc:
        print(f"flor-flows: warning: could not reconcile flow runs: {exc}", file=sys.stderr)
        return
    if settled:
        print(
            f"flor-flows: {len(settled)} flow run(s) left Running by a lost Prefect API now have "
            "the state their work has in the store",
            file=sys.stderr,
        )


def watch_api(on_lost: Callable[[Any, float], None], kind: str) -> Any:  # noqa: ANN401
    """Watch PREFECT_API_URL during a `kind` flow run, "training" or "backfill" (see
    ApiWatch): `on_lost` once the API is down and the flow's work settled. None without one."""
    from prefect.settings import PREFECT_API_URL

    from flor_flows.reconcile import ApiWatch, settled_backfill, settled_launch
    from flor_flows.replay.backfill import RELEASED
    from flor_flows.training import launch

    if not PREFECT_API_URL.value():
        return None
    if kind == "training":
        before = {run.run_uid for run, _ in launch.launches()}
        watch = ApiWatch(on_lost, lambda: settled_launch(before))
    else:
        released = len(RELEASED)
        watch = ApiWatch(on_lost, lambda: settled_backfill(released))
    watch.start()
    return watch


def run_watched(
    call: Callable[[], T],
    project: Path,
    on_lost: Callable[[Any, float], None],
    kind: str,
    stopped: str,
) -> T:
    """A flow command's flow run `call()`: flow runs a lost API left Running settled first,
    the API watched while it runs (`watch_api`), Ctrl-C stopping its scripts (`stoppable`)."""
    reconcile_runs(project)
    watch = watch_api(on_lost, kind)
    try:
        return stoppable(lambda: _without_heartbeats(call), stopped)
    finally:
        if watch is not None:
            watch.stop()


def _without_heartbeats(call: Callable[[], T]) -> T:
    """`call()` with Prefect's flow-run heartbeats off, unless the user set their frequency:
    the engine joins its heartbeat thread at the flow's end (up to a second per command), and
    they only feed an automation created by hand; a flow run a command leaves Running is
    settled by the project's next command (`reconcile`)."""
    from prefect.settings import get_current_settings

    from flor_flows.api import prefect_settings

    if "heartbeat_frequency" in get_current_settings().flows.model_fields_set:
        return call()
    with prefect_settings("flows", heartbeat_frequency=None):
        return call()
