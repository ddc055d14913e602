"""One training run launched from outside its script: version, run, account for the outcome.

The training flow calls these as tasks: `snapshot_code` and `register_batches` version the
code and the data before anything runs (a broken repository or a bad URI fails here, fast),
`run` executes the script in a child interpreter under the record API with everything it
needs in its run context, and `account` makes sure the store tells the truth about the
outcome even when the script died before it could say anything itself.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flor_flows.config import STATE_DIR, Settings, load_settings
from flor_flows.errors import FlorError, StoreError, TrainingFailed
from flor_flows.record.context import RunContext
from flor_flows.record.run import new_uid
from flor_flows.store import open_store
from flor_flows.training.request import TrainingRequest
from flor_flows.versioning import code, data
from flor_flows.versioning.code import CodeVersion
from flor_flows.versioning.data import Batch

STDERR_TAIL_LINES = 40


@dataclass(frozen=True)
class Launch:
    """Where and as what a training run will run; nothing is versioned or started yet."""

    run_uid: str
    settings: Settings
    project: Path  # the script's working directory
    script: Path
    entry_script: str  # relative to the repository root, as the store records it


@dataclass(frozen=True)
class Outcome:
    run_uid: str
    returncode: int
    seconds: float
    stderr_tail: str


def new_launch(request: TrainingRequest) -> Launch:
    """Resolve the project, its settings and the script; assign the run its uid."""
    project = Path(request.project).expanduser().resolve()
    script = (project / request.script).resolve()
    if not script.is_file():
        raise FlorError(f"training script {request.script!r} not found in {project}")
    settings = load_settings(project)
    entry_script = os.path.relpath(script, settings.root)
    return Launch(new_uid(), settings, project, script, entry_script)


def snapshot_code(launch: Launch) -> CodeVersion:
    """Commit the project's source as the run will execute it (a hidden ref, see `code`)."""
    return code.snapshot(launch.settings.root, launch.run_uid, launch.script)


def register_batches(launch: Launch, batches: dict[str, str]) -> dict[str, Batch]:
    """Hash and copy each batch (relative paths are the project's) before the run starts."""
    cache = launch.settings.root / STATE_DIR / "cache"
    return {
        name: data.version(name, data.resolve(launch.project, uri), launch.settings.data_url, cache)
        for name, uri in batches.items()
    }


def warm_start_from(launch: Launch) -> str | None:
    """The newest completed, checkpointed run of the same script, if any."""
    store = open_store(launch.settings.store_url)
    return store.latest_checkpointed_run(launch.settings.project_name, launch.entry_script)


def context_of(
    launch: Launch,
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
        flow_run_id=flow_run_id,
        resumed_from=resumed_from,
        kwargs=dict(request.args),
        code_version=dataclasses.asdict(code_version),
        registered={name: dataclasses.asdict(b) for name, b in batches.items()},
    )


def run(
    launch: Launch,
    context: RunContext,
    on_output: Callable[[str], Any] = print,
) -> Outcome:
    """Run the script with this interpreter; its output lines go to `on_output` as they come."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
    env |= context.to_env() | {"PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(launch.script)],
        cwd=launch.project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def pump(stream: Any, keep: deque[str] | None) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if keep is not None:
                keep.append(line)
            on_output(line)

    readers = [
        threading.Thread(target=pump, args=(proc.stdout, None), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, tail), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        returncode = proc.wait()
    except BaseException:  # cancelled or interrupted: stop the script too, then re-raise
        _stop(proc)
        raise
    for reader in readers:
        reader.join()
    return Outcome(launch.run_uid, returncode, time.perf_counter() - start, "\n".join(tail))


def _stop(proc: subprocess.Popen[str], grace: float = 30.0) -> None:
    """SIGTERM (the run records itself failed and flushes), SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def account(launch: Launch, context: RunContext, outcome: Outcome) -> None:
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
        settings = launch.settings
        project_id = store.project_id(settings.project_name, settings.root)
        run_id = store.start_run(
            uid=launch.run_uid,
            project_id=project_id,
            entry_script=launch.entry_script,
            prefect_flow_run_id=context.flow_run_id,
            resumed_from=context.resumed_from,
        )
        store.set_code_version(run_id, project_id, CodeVersion(**context.code_version))
        for fields in context.registered.values():
            store.add_data_batch(run_id, **{k: v for k, v in fields.items() if k != "local_path"})
        store.finish_run(run_id, "failed", message)
    elif status == "running":
        store.finish_run(store.run_id(launch.run_uid), "failed", message)
    raise TrainingFailed(message)
