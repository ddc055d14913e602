"""A run's row and a replay's in the store, written from one place: started, then finished
with a status.

The writer process (`writer.Session`) starts the run of a live script and records how it
ended; the launcher (`training.launch.account`) records through the same functions a run
whose script died before its first flor call (`never_started`), or that ended without
saying so (`fail`). A replay is started by the replay engine (with its provenance) or by
the writer, and ended by the writer with its verification, or by the engine when its
process failed before saying anything (`finish_replay`). Whoever starts a run, it gets the same row: uid, project, entry script
relative to the root, invocation, flow run, warm start and code version.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flor_flows.config import Settings
from flor_flows.record.context import RunContext
from flor_flows.record.replay_loop import Measures

_STARTED: set[int] = set()  # training processes whose first run this process recorded


def process_started(pid: int) -> datetime | None:
    """When process `pid` started (Linux), so a run's span includes the script's imports.

    Replay planning estimates a replay's set-up from that span. None where /proc is absent.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except OSError:
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, after the command name
    age = uptime - ticks / os.sysconf("SC_CLK_TCK")
    return datetime.fromtimestamp(time.time() - age, UTC)


def start(
    store: Any,  # a Store, or the writer's patient one (`spill.Patient`)
    settings: Settings,
    context: RunContext,
    entry_script: str | None,
    pid: int | None,
) -> tuple[int, str]:
    """Insert the run of `context` (status running) with its code version: its id and commit.

    `entry_script` is the script's path (made relative to the root here); `pid` its process,
    None for a script that never got to start its run. The code version is the launcher's
    snapshot when it took one, else taken now.
    """
    from flor_flows.versioning import code

    root = settings.root
    if context.code_version is not None:  # the launcher took the snapshot
        version = code.CodeVersion(**context.code_version)
    else:
        entry = Path(entry_script) if entry_script else None
        version = code.snapshot(root, context.run_uid, entry)
    project_id = store.project_id(settings.project_name, root)
    invocation = context.invocation
    if invocation is not None:  # the working directory as the project sees it
        invocation = invocation | {"cwd": os.path.relpath(invocation["cwd"], root)}
    run_id = store.start_run(
        uid=context.run_uid,
        project_id=project_id,
        entry_script=os.path.relpath(entry_script, root) if entry_script else None,
        invocation=invocation,
        prefect_flow_run_id=context.flow_run_id,
        resumed_from=context.resumed_from,
        pid=pid,
        started_at=None if pid is None or pid in _STARTED else process_started(pid),
    )
    if pid is not None:
        _STARTED.add(pid)  # a later run of the same process starts when it starts
    store.set_code_version(run_id, project_id, version)
    return run_id, version.commit


def finish(store: Any, run_id: int, status: str, error: str | None = None) -> None:
    """Record how the run ended: completed, failed, interrupted..., with the error if any."""
    store.finish_run(run_id, status, error)


def fail(store: Any, run_id: int, message: str) -> None:
    """Mark the run failed, with why."""
    finish(store, run_id, "failed", message)


def incomplete(store: Any, run_id: int, why: str) -> None:
    """A run whose writer stopped before its end is incomplete, unless it ended after all."""
    store.mark_incomplete(run_id, why)


def fail_dead(store: Any) -> None:
    """Mark failed the running runs of this host whose process is gone (SIGKILL, power loss)."""
    store.mark_dead_runs()


def never_started(
    store: Any,
    settings: Settings,
    context: RunContext,
    script: str,
    message: str,
) -> None:
    """Record the run of a script that died before its first flor call: started as any run
    is (`start`), with the batches the launcher registered, then failed with `message`."""
    run_id, _ = start(store, settings, context, script, pid=None)
    for fields in context.registered.values():
        store.add_data_batch(run_id, **{k: v for k, v in fields.items() if k != "local_path"})
    fail(store, run_id, message)


def start_replay(store: Any, run_id: int, **provenance: Any) -> int:
    """Insert a replay of run `run_id` (status running) with its provenance: its id."""
    return store.start_replay(run_id, **provenance)


def finish_replay(
    store: Any,
    replay_id: int,
    status: str,
    checked: int | None = None,
    divergence: str | None = None,
    error: str | None = None,
    measures: tuple[Any, ...] | None = None,
) -> None:
    """Record how a replay ended, and what it measured (`replay_loop.Measures`; a spill file
    of an earlier flor-flows holds only its reads: bytes, seconds); one that completed but
    diverged from its run's record is `diverged`, with the divergence as its error."""
    if divergence is not None and status == "completed":
        status = "diverged"
    measured = dict(zip(Measures._fields, measures or (), strict=False))
    store.finish_replay(replay_id, status, checked, divergence or error, measured)
