"""The backfill flow: a hindsight request over historical runs, as one flow run.

Plan; lease the runs (a second identical backfill started meanwhile leaves them alone);
propagate the new statements into each code version; replay each run of it from its
checkpoints, a bounded number at a time; then publish the new values. A version that cannot
be propagated, a run whose replay fails or diverges from its record, and a run whose script
does not reach the requested statements (not applicable) are reported while the others go on.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, State

from flor_flows.errors import ReplayDiverged, ReplayFailed
from flor_flows.replay import artifacts, engine, outcomes, plan, worktree
from flor_flows.replay.backfill import (
    BackfillRequest,
    Resolved,
    leased,
    plan_rows,
    resolve,
)
from flor_flows.store import open_store
from flor_flows.training.artifacts import key_prefix


def _run_name() -> str:
    """`backfill-<names>`, e.g. backfill-grad_norm or backfill-grad_norm,lr_now."""
    request = flow_run.parameters["request"]
    names = request["names"] if isinstance(request, dict) else request.names
    return "backfill-" + ",".join(names)


@task(cache_policy=NO_CACHE)
def plan_request(request: BackfillRequest) -> Resolved:
    """Resolve the request: its statements, the runs and iterations to replay, their costs."""
    return resolve(request)


@task(cache_policy=NO_CACHE, task_run_name="propagate-{commit}")
def propagate_version(resolved: Resolved, commit: str, workdir: Path) -> engine.Version:
    """Propagate into one code version: in the flow's `workdir` when run by the flow's own
    process (its replays reuse it), else in a workspace removed when the task ends."""
    items = [i for i in resolved.items if i.code_version == commit]
    with contextlib.ExitStack() as cleanup:
        if not worktree.owned(workdir):  # another process or host (a Dask worker)
            workdir = cleanup.enter_context(worktree.workspace())
        version = engine.prepare_version(
            resolved.settings.root,
            commit,
            resolved.new_files,
            resolved.names,
            workdir,
            {item.entry_script for item in items},
            resolved.settings,
        )
    store = open_store(resolved.settings.store_url)
    for item in items:
        status, error = version.outcome(item.entry_script)
        store.set_backfill_status(resolved.backfill_id, item.run_uid, status, error, flow_run.id)
    return version


@task(cache_policy=NO_CACHE, task_run_name="replay-{item.run_uid}")
def replay_run(resolved: Resolved, version: engine.Version, item: plan.Item) -> str:
    """Replay one run, or one segment of its iterations; raises `ReplayFailed`."""
    with contextlib.ExitStack() as cleanup:
        if not worktree.owned(version.directory):  # propagated by another process or host
            workdir = cleanup.enter_context(worktree.workspace())  # removed when the task ends
            version = engine.prepare_version(
                resolved.settings.root,
                version.commit,
                resolved.new_files,
                resolved.names,
                workdir,
                [item.entry_script],
                resolved.settings,
            )
        engine.replay(
            version,
            item.run_uid,
            item.entry_script,
            resolved.settings,
            resolved.names,
            item.iterations,
            on_output=get_run_logger().info,
            statements_sha256=resolved.statements_sha256,
            flow_run_id=str(flow_run.id),
            run_level=item.run_level,
        )
    return item.run_uid


@flow(name="backfill", flow_run_name=_run_name)
def backfill(request: BackfillRequest, dry_run: bool = False) -> State:
    """Compute `request.names` over the historical runs the request selects."""
    resolved = plan_request(request)
    prefix = key_prefix(resolved.settings.project_name)
    runs = len({item.run_uid for item in resolved.items})
    create_table_artifact(
        plan_rows(resolved.items),
        key=f"{prefix}-backfill-plan",
        description=f"Plan of the backfill of {', '.join(resolved.names)}: "
        f"{len(resolved.items)} replays of {runs} runs, with their estimated seconds (and "
        "those the first replay of a script waits for its fork server to start).",
    )
    if dry_run or not resolved.items:
        said = [f"{len(resolved.items)} replays planned; nothing run", resolved.left_out()]
        return Completed(message="; ".join(part for part in said if part))

    with leased(resolved, request, flow_run.id) as (resolved, held):
        worktree.share(resolved.settings, resolved.commits)  # for hosts without the repository
        with (
            worktree.workspace() as workdir,
            engine.sharing_setup(),  # a version's replays here share its script's imports
        ):
            propagating = {
                c: propagate_version.submit(resolved, c, workdir) for c in resolved.commits
            }
            replayed = _replay_all(resolved, propagating, request.max_parallel, prefix)
            versions = [f.result() for f in propagating.values()]

    for version in versions:
        artifacts.publish_diff(version, prefix)
    artifacts.publish_result(open_store(resolved.settings.store_url), resolved.names, prefix)
    return outcomes.final_state(resolved, replayed, held)


def _replay_all(
    resolved: Resolved, versions: dict[str, PrefectFuture], max_parallel: int, prefix: str
) -> dict[str, tuple[str, str]]:
    """Replay every planned item, `max_parallel` at a time; the runs that were not replayed,
    with their status (not applicable, propagation failed, replay failed, diverged,
    cancelled) and why."""
    tracker = outcomes.Tracker(resolved, prefix, flow_run.id)
    outcomes.failures_in_one_line()  # each says why in its message
    pending = list(resolved.items)
    running: dict[PrefectFuture, plan.Item] = {}
    while pending or running:
        while pending and len(running) < max_parallel:
            item = pending.pop(0)
            version = versions[item.code_version].result()
            status, why = version.outcome(item.entry_script)
            if status == "propagated":
                running[replay_run.submit(resolved, version, item)] = item
                tracker.replaying(item)
            else:
                tracker.not_run(item, status, why)
        if running:
            finished = next(as_completed(list(running)))
            item = running.pop(finished)
            try:
                finished.result()
            except (ReplayFailed, ReplayDiverged) as exc:  # the others go on
                tracker.failed(item, exc)
            else:
                tracker.replayed(item)
    return tracker.finish()
