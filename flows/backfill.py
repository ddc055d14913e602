"""The backfill flow: a hindsight request over historical runs, as one flow run.

Plan; lease the runs (a second identical backfill started meanwhile leaves them alone);
propagate the new statements into each code version; replay each run of it from its
checkpoints, a bounded number at a time; then publish the new values. A version that cannot
be propagated, a run whose replay fails or diverges from its record, and a run whose script
does not reach the requested statements (not applicable) are reported while the others go on.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from flor_flows.errors import ReplayDiverged, ReplayFailed
from flor_flows.publishing import published
from flor_flows.replay import artifacts, engine, plan, worktree
from flor_flows.replay.backfill import (
    LEASES,
    BackfillRequest,
    Resolved,
    plan_rows,
    release,
    resolve,
)
from flor_flows.store import open_store
from flor_flows.store.leases import lease_holder
from flor_flows.store.sql import now
from flor_flows.training import launch
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


def _diff(version: engine.Version) -> str:
    """Markdown: what was inserted into one code version, or why not."""
    parts = [f"# Code version `{version.commit[:10]}`"]
    for path, result in version.propagations.items():
        parts += [
            f"- `{p.name}` in {path} at line {p.line}, confidence {p.confidence:.2f}"
            for p in result.placements
        ]
        parts += [f"- refused in {path}: {r}" for r in result.refusals]
        if path in version.diffs:
            parts.append(f"```diff\n{version.diffs[path]}```")
    return "\n".join(parts)


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
        f"{len(resolved.items)} replays of {runs} runs, with their estimated seconds.",
    )
    if dry_run or not resolved.items:
        return Completed(message=f"{len(resolved.items)} replays planned; nothing run")

    store = open_store(resolved.settings.store_url)
    backfill_id = store.backfill_id(resolved.key, resolved.names, request.selection())
    resolved = replace(resolved, backfill_id=backfill_id)
    holder = lease_holder(flow_run.id)
    seconds = 600 + 3 * sum(item.estimated_seconds for item in resolved.items)
    held = store.lease_backfill(
        resolved.backfill_id,
        list(dict.fromkeys(item.run_uid for item in resolved.items)),
        holder,
        now() + timedelta(seconds=seconds),
    )
    resolved = replace(resolved, items=[i for i in resolved.items if i.run_uid not in held])
    lease = (resolved.settings.store_url, resolved.backfill_id, holder)
    LEASES.add(lease)
    try:
        worktree.share(resolved.settings, resolved.commits)  # for hosts without the repository
        with (
            worktree.workspace() as workdir,
            engine.sharing_setup(),  # a version's replays here share its script's imports
        ):
            propagating = {
                c: propagate_version.submit(resolved, c, workdir) for c in resolved.commits
            }
            outcomes = _replay_all(resolved, propagating, request.max_parallel, prefix)
            versions = [f.result() for f in propagating.values()]
    finally:
        release(lease)

    for version in versions:
        published(
            create_markdown_artifact,
            _diff(version),
            key=artifacts.diff_key(prefix, version.commit),
            description=f"The new statements in code version `{version.commit[:10]}`.",
        )
    _publish_result(resolved, prefix)
    return _final_state(resolved, outcomes, held)


def _publish_result(resolved: Resolved, prefix: str) -> None:
    """The new values across runs and code versions: a table and a chart."""
    store = open_store(resolved.settings.store_url)
    folded = artifacts.backfill_result(store, resolved.names)
    table = artifacts.result_table(folded, resolved.names)
    key = f"{prefix}-backfill-result"
    published(create_table_artifact, table.rows, key=key, description=table.description)
    chart = artifacts.result_chart(folded, resolved.names)
    if chart is not None:
        published(
            create_markdown_artifact,
            chart,
            key=f"{prefix}-backfill-chart",
            description=f"{', '.join(resolved.names)} per iteration, a line per run.",
        )


def _final_state(
    resolved: Resolved, outcomes: dict[str, tuple[str, str]], held: dict[str, str]
) -> State:
    """The flow's end: how many runs were replayed, and every run that was not, with why."""
    by_status: dict[str, dict[str, str]] = {}
    for uid, (status, why) in outcomes.items():
        by_status.setdefault(status, {})[uid] = why
    skipped = by_status.pop("not applicable", {})
    runs = len({item.run_uid for item in resolved.items}) - len(skipped)
    parts = [f"{runs - len(by_status)} of {runs} runs replayed"]
    if skipped:
        parts.append(f"{len(skipped)} not applicable (their scripts log none of the names)")
    if held:
        who = ", ".join(f"{uid} (by {holder})" for uid, holder in held.items())
        parts.append(f"{len(held)} left to another backfill replaying them now: {who}")
    details = [
        f"{status}: {uid}: {why}"
        for status, runs_ in by_status.items()
        for uid, why in runs_.items()
    ]
    message = "; ".join(parts) + "".join(f"\n{line}" for line in details)
    return Failed(message=message) if by_status else Completed(message=message)


def _replay_all(
    resolved: Resolved, versions: dict[str, PrefectFuture], max_parallel: int, prefix: str
) -> dict[str, tuple[str, str]]:
    """Replay every planned item, `max_parallel` at a time, keeping each run's status.

    A run counts as replayed once all its segments are; returns the runs that were not,
    with their status (not applicable, propagation failed, replay failed, diverged,
    cancelled) and why.
    """
    store = open_store(resolved.settings.store_url)
    progress = published(
        create_progress_artifact,
        0.0,
        key=f"{prefix}-backfill-progress",
        description=f"Replays of {', '.join(resolved.names)} finished, of {len(resolved.items)}.",
    )
    board = artifacts.StatusBoard(f"{prefix}-backfill-status", resolved.items)
    segments_left = Counter(item.run_uid for item in resolved.items)
    outcomes: dict[str, tuple[str, str]] = {}
    pending = list(resolved.items)
    running: dict[PrefectFuture, plan.Item] = {}
    done = 0
    while pending or running:
        while pending and len(running) < max_parallel:
            item = pending.pop(0)
            version = versions[item.code_version].result()
            status, why = version.outcome(item.entry_script)
            if status == "propagated":
                running[replay_run.submit(resolved, version, item)] = item
                if item.run_uid not in outcomes:  # a failed segment's run stays failed
                    board.set(item.run_uid, "replaying")
                continue
            outcomes[item.run_uid] = (status, why)  # its status is stored already
            board.set(item.run_uid, status, why)
            done += 1
        if not running:
            continue
        finished = next(as_completed(list(running)))
        item = running.pop(finished)
        done += 1
        try:
            finished.result()
        except (ReplayFailed, ReplayDiverged) as exc:  # the others go on
            status = "diverged" if isinstance(exc, ReplayDiverged) else "replay failed"
            status = "cancelled" if launch.stopping.is_set() else status
            if item.run_uid not in outcomes:
                outcomes[item.run_uid] = (status, str(exc))
                store.set_backfill_status(
                    resolved.backfill_id, item.run_uid, status, str(exc), flow_run.id
                )
                board.set(item.run_uid, status, str(exc))
        else:
            segments_left[item.run_uid] -= 1
            if not segments_left[item.run_uid] and item.run_uid not in outcomes:
                store.set_backfill_status(
                    resolved.backfill_id, item.run_uid, "replayed", None, flow_run.id
                )
                board.set(item.run_uid, "replayed")
        _progress(progress, 100 * done / len(resolved.items))
    _progress(progress, 100.0)
    return outcomes


def _progress(artifact: UUID | None, percent: float) -> None:
    if artifact is not None:
        published(update_progress_artifact, artifact, percent)
