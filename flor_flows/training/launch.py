"""One training run launched from outside its script: version, run, account for the outcome.

The training flow calls these as tasks: `snapshot_code` and `register_batches` version the
code and the data before anything runs (a broken repository or a bad URI fails here, fast),
`children.run` executes the script in a child interpreter under the record API with
everything it needs in its run context (`context_of`), and `account` makes sure the store
tells the truth about the outcome even when the script died before it could say anything
itself (through `record.lifecycle`, the one owner of a run's status).

Every launch of this process is listed too (`launches`, the latest few), with whether it has
settled (`settle`): from then on the store has the run's last word and whatever is left of
its flow run only informs Prefect, so a launcher that loses its Prefect API can stop there.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import deque
from pathlib import Path

from flor_flows import children
from flor_flows.config import STATE_DIR, load_settings
from flor_flows.errors import DataError, RequestError, StoreError, TrainingFailed
from flor_flows.record import lifecycle
from flor_flows.record.context import RunContext
from flor_flows.record.run import new_uid
from flor_flows.store import open_store
from flor_flows.training.request import TrainingRequest
from flor_flows.versioning import code, data
from flor_flows.versioning.code import CodeVersion
from flor_flows.versioning.data import Batch

RECENT_LAUNCHES = 64
_launches: deque[tuple[children.Launch, threading.Event]] = deque(maxlen=RECENT_LAUNCHES)


def new_launch(request: TrainingRequest) -> children.Launch:
    """Resolve the project, its settings and the script; assign the run its uid."""
    project = Path(request.project).expanduser().resolve()
    script = (project / request.script).resolve()
    if not script.is_file():
        raise RequestError(f"training script {request.script!r} not found in {project}")
    settings = load_settings(project)
    entry_script = os.path.relpath(script, settings.root)
    launch = children.Launch(
        new_uid(), settings, project, script, entry_script, tuple(request.argv)
    )
    _launches.append((launch, threading.Event()))
    return launch


def settle(launch: children.Launch) -> None:
    """Mark `launch` settled: the store has its run's last word (or it never got a run)."""
    for known, settled in list(_launches):
        if known is launch:
            settled.set()


def launches() -> list[tuple[children.Launch, bool]]:
    """This process's latest launches, oldest first, each with whether it has settled."""
    return [(known, settled.is_set()) for known, settled in list(_launches)]


def snapshot_code(launch: children.Launch) -> CodeVersion:
    """Commit the project's source as the run will execute it (a hidden ref, see `code`)."""
    return code.snapshot(launch.settings.root, launch.run_uid, launch.script)


def register_batches(launch: children.Launch, batches: dict[str, str]) -> dict[str, Batch]:
    """Hash and copy each batch (relative paths are the project's) before the run starts."""
    cache = launch.settings.root / STATE_DIR / "cache"
    resolved = {name: data.resolve(launch.project, uri) for name, uri in batches.items()}
    options = launch.settings.fs_options()
    for name, uri in resolved.items():
        if not launch.settings.batch_allowed(uri):
            raise DataError(
                f"batch {name}={uri!r} is outside the project and the configured batch roots: "
                "a training flow reads batches only there (set batch_roots in "
                "[tool.flor-flows] or FLOR_FLOWS_BATCH_ROOTS to allow more)"
            )
    return {
        name: data.version(name, uri, launch.settings.data_url, cache, options)
        for name, uri in resolved.items()
    }


def warm_start_from(launch: children.Launch) -> str | None:
    """The newest completed, checkpointed run of the same script, if any."""
    store = open_store(launch.settings.store_url)
    return store.latest_checkpointed_run(launch.settings.project_name, launch.entry_script)


def context_of(
    launch: children.Launch,
    request: TrainingRequest,
    code_version: CodeVersion,
    batches: dict[str, Batch],
    resumed_from: str | None,
    flow_run_id: str | None,
) -> RunContext:
    """The run context handed to the script: ids, locations, args and the versioning done."""
    settings = launch.settings
    return RunContext(
        run_uid=launch.run_uid,
        store_url=settings.store_url,
        checkpoint_url=settings.checkpoint_url,
        data_url=settings.data_url,
        storage_options=settings.storage_options or None,
        flow_run_id=flow_run_id,
        resumed_from=resumed_from,
        kwargs=dict(request.args),
        code_version=dataclasses.asdict(code_version),
        registered={name: dataclasses.asdict(b) for name, b in batches.items()},
    )


def account(launch: children.Launch, context: RunContext, outcome: children.Outcome) -> None:
    """Make the store agree with the outcome; raise `TrainingFailed` if the script failed.

    The record API marks its own run failed on an exception, a signal or a vanished
    process. A script that died before its first flor call has no run yet: it gets one,
    failed, with its code version, batches and error, so the failure is in the history too.
    """
    store = open_store(launch.settings.store_url)
    try:
        status = store.run_record(launch.run_uid)["status"]
    except StoreError:
        status = None
    if outcome.returncode == 0:
        if status is None:
            raise TrainingFailed(
                f"{launch.entry_script} exited cleanly but recorded nothing: "
                "does it import flor_flows and call its API?"
            )
        return
    message = (
        f"{launch.entry_script} exited with code {outcome.returncode}; "
        f"the last lines of its stderr:\n{outcome.stderr_tail}"
    )
    if status is None:
        lifecycle.never_started(store, launch.settings, context, str(launch.script), message)
    elif status == "running":
        lifecycle.fail(store, store.run_id(launch.run_uid), message)
    raise TrainingFailed(message)
