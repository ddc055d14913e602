"""A hindsight request, resolved: the new statements, the plan, and what is already done.

The backfill flow calls these; `resolve` reads the new statements from the working tree
(or a git ref), hashes them, finds or creates the request's record in the store and plans
the work, leaving out the runs a previous attempt of the same request already replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from flor_flows.config import Settings, load_settings
from flor_flows.errors import FlorError, RequestError, Unparsable
from flor_flows.propagate.statements import read
from flor_flows.replay import plan as planning
from flor_flows.replay.selection import parse_iter
from flor_flows.replay.skipping import (
    carried_state,
    logged,
    shortcuts,
    skippable_loops,
)
from flor_flows.replay.where import parse_where
from flor_flows.replay.worktree import working_tree_files
from flor_flows.store import open_store, recorded
from flor_flows.store.leases import lease_holder
from flor_flows.store.sql import now
from flor_flows.training.request import Name, ProjectRequest, form_words
from flor_flows.versioning import code

Lease = tuple[str, int, str]  # a backfill flow run's hold: (store URL, backfill id, holder)
# The leases this process's backfill flow runs hold now. A stopped `flor-flows replay` marks
# their unfinished runs cancelled (see `Store.cancel_leased`).
LEASES: set[Lease] = set()
# Where a run of a backfill stands (`BackfillItem.status`), in the order it may get there
# (and "no values": replayed, its replays storing no value of some name, counted apart in
# `flor-flows backfills`), and those `flor-flows backfills ID --retry-failed` runs again.
STATUSES = (
    "planned", "propagated", "replaying", "replayed", "no values", "not applicable",
    "propagation failed", "replay failed", "diverged", "cancelled",
)  # fmt: skip
RETRIED = ("propagation failed", "replay failed", "diverged", "cancelled")
# Those they have released (their replays all ended), oldest first: see `release`.
RELEASED: list[Lease] = []
_RANGE = r"\d+(-\d+)?"
ITERATIONS_PATTERN = rf"^\s*[^\W\d]\w*\s*=\s*(all|last|none|{_RANGE}(\s*,\s*{_RANGE})*)\s*$"


class BackfillRequest(ProjectRequest):
    """Compute new logged values over historical runs (the form the Prefect UI renders)."""

    names: list[Name] = Field(
        ...,
        min_length=1,
        description="Logged names to compute: flor.log statements of today's code.",
    )
    where: str | None = Field(
        None,
        description="Which runs and iterations, over the wide table: e.g. 'acc < 0.9 and lr > 0.01'.",
    )
    iterations: list[Annotated[str, StringConstraints(pattern=ITERATIONS_PATTERN)]] = Field(
        default_factory=list,
        description="Per outer loop: 'epoch=all', 'epoch=last', 'epoch=none' or 'epoch=0,3'.",
    )
    only_missing: bool = Field(True, description="Skip iterations that have the values already.")
    source_ref: str | None = Field(
        None,
        pattern=r"^[^-\s]\S*$",
        description="Git ref holding the new statements (default: the working tree).",
    )
    max_parallel: int = Field(2, ge=1, le=64, description="Replays running at once.")
    runs: list[str] = Field(
        default_factory=list,
        description="Only these runs (their uids) of those the selection keeps; default: all. "
        "`flor-flows backfills ID --retry-failed` gives the runs of a backfill that failed.",
    )

    def selection(self) -> dict[str, Any]:
        """What, besides the names, says which values the request computes."""
        return self.model_dump(include={"where", "iterations", "only_missing", "source_ref"})

    @field_validator("where")
    @classmethod
    def _where_compiles(cls, where: str | None) -> str | None:
        if where is None or not where.strip():
            return None  # an empty form field: no filter
        try:
            parse_where(where)
        except FlorError as exc:
            raise PydanticCustomError("where", form_words(exc, "--where")) from exc
        return where

    @field_validator("iterations")
    @classmethod
    def _iterations_parse(cls, iterations: list[str]) -> list[str]:
        try:
            parse_iter(iterations)
        except FlorError as exc:
            raise PydanticCustomError("iterations", form_words(exc, "--iter")) from exc
        return iterations


@dataclass(frozen=True)
class Resolved:
    """A hindsight request made concrete: its settings, new statements, identity and plan."""

    settings: Settings
    names: tuple[str, ...]
    new_files: dict[str, str]
    statements_sha256: str
    key: str  # the request's identity: names, statements, selection
    backfill_id: int | None  # its record in the store, once a flow run created it
    items: list[planning.Item]
    done: list[str]  # runs a previous attempt of this request replayed already

    @property
    def commits(self) -> list[str]:
        """The code versions of the planned runs, each once, in plan order."""
        return list(dict.fromkeys(item.code_version for item in self.items))

    def left_out(self) -> str | None:
        """Why the runs an earlier attempt of this request replayed are not in the plan."""
        if not self.done:
            return None
        return (
            f"{len(self.done)} run(s) left out: backfill {self.backfill_id}, the same request "
            "(names, statements, selection), replayed them already; once it has replayed "
            "every run, the same command with --all replays them all anew"
        )


def new_files(root: Path, ref: str | None, entry_scripts: Iterable[str] = ()) -> dict[str, str]:
    """The Python files holding the new statements: those of `ref`, or the working tree's
    tracked ones and `entry_scripts` even untracked (a run's code version holds its entry
    script either way)."""
    if ref is not None:
        return code.python_files_at(root, ref)
    files = working_tree_files(root)
    for entry in entry_scripts:
        if entry not in files and (root / entry).is_file():
            files[entry] = (root / entry).read_text()
    return files


def statements_sha256(files: dict[str, str], names: tuple[str, ...]) -> str:
    """A hash of the requested log statements' text: the identity of what is computed."""
    found: dict[str, str] = {}
    broken: list[str] = []
    for path in sorted(files):
        try:
            module = read(files[path])
        except Unparsable as exc:
            broken.append(f"{path} does not parse ({exc})")
            continue
        for name, stmt in module.logs().items():
            if name in names:
                found.setdefault(name, stmt.text)
    missing = sorted(set(names) - set(found))
    if missing:
        why = f"; {'; '.join(broken)}" if broken else ""
        raise RequestError(
            f"no flor.log statement for {', '.join(missing)} in the new code (the tracked "
            f"Python files and the runs' entry scripts){why}"
        )
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()


def resolve(request: BackfillRequest) -> Resolved:
    """The request's statements, identity and plan, less the runs already replayed for it."""
    settings = load_settings(request.project)
    names = tuple(dict.fromkeys(request.names))
    store = recorded(settings.store_url)  # a dry run creates nothing
    runs = store.runs()
    files = new_files(settings.root, request.source_ref, runs["entry_script"].dropna().unique())
    digest = statements_sha256(files, names)
    carried = carried_state(files, names)
    placed = logged(files, names)  # where the statements log: in the loop, or after it
    key = hashlib.sha256(
        json.dumps(
            [names, digest, request.where, sorted(request.iterations), request.only_missing]
        ).encode()
    ).hexdigest()
    backfill_id = store.find_backfill(key)  # created by the flow run: a dry run writes nothing
    status = {} if backfill_id is None else store.backfill_status(backfill_id)
    where = parse_where(request.where) if request.where else None
    iters = parse_iter(request.iterations) if request.iterations else None
    # the same work as the whole request's, on fewer runs: the same key; split as they need
    chosen = _named_runs(runs["run_uid"], request.runs) if request.runs else None
    items = planning.plan(
        store,
        names,
        where=where,
        iters=iters,
        only_missing=request.only_missing,
        skip_nested=bool(skippable_loops(files, names)),
        shortcuts={s.loop: s.free for s in shortcuts(files, names)},
        run_level=placed.run_level_only,
        workers=request.max_parallel,
        from_start=bool(carried),
        looped=placed.looped,
        only=chosen,
        root=settings.root,
    )
    if carried:  # said in the plan: why each replay runs from the first iteration
        why = f"from the first iteration: {', '.join(sorted(carried))} carried outside checkpoints"
        items = [replace(item, reason=f"{item.reason}; {why}") for item in items]
    while not request.only_missing and items and all(status.get(i.run_uid) == "replayed" for i in items):  # fmt: skip
        # `--all` once more after it finished: a new request, computed anew (a retry of one
        # that did not finish resumes it)
        key = hashlib.sha256(f"{key}:again".encode()).hexdigest()
        backfill_id = store.find_backfill(key)
        status = {} if backfill_id is None else store.backfill_status(backfill_id)
    done = [i.run_uid for i in items if status.get(i.run_uid) == "replayed"]
    todo = [i for i in items if status.get(i.run_uid) != "replayed"]
    return Resolved(settings, names, files, digest, key, backfill_id, todo, done)


def _named_runs(uids: Iterable[str], names: list[str]) -> set[str]:
    """The uids of the runs `names` name: each a uid, or the end of just one (as `flor-flows
    runs` shows it); RequestError for a name that names no run, or several."""
    uids = list(uids)
    chosen = set()
    for name in names:
        found = [u for u in uids if u == name] or [u for u in uids if u.endswith(name)]
        if len(found) != 1:
            which = "no run has this uid" if not found else f"it ends {len(found)} runs' uids"
            raise RequestError(f"run {name!r}: {which} (`flor-flows runs` lists them)")
        chosen.add(found[0])
    return chosen


def check_versions(resolved: Resolved) -> dict[str, str]:
    """Per planned run, what propagating the statements into its code version gives: `ok`,
    `refused: <why>` (a placement refused, or a propagated file that does not compile) or
    `not applicable: <why>`. Versions are materialised in a temporary directory only."""
    from flor_flows.replay.engine import prepare_version

    found: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="flor-flows-check-") as workdir:
        for commit in resolved.commits:
            items = [item for item in resolved.items if item.code_version == commit]
            version = prepare_version(
                resolved.settings.root,
                commit,
                resolved.new_files,
                resolved.names,
                Path(workdir),
                {item.entry_script for item in items},
            )
            for item in items:
                status, why = version.outcome(item.entry_script)
                found[item.run_uid] = {
                    "propagated": "ok",
                    "propagation failed": f"refused: {why}",
                }.get(status, f"{status}: {why}")
    return found


@contextlib.contextmanager
def leased(
    resolved: Resolved, request: BackfillRequest, flow_run_id: object
) -> Iterator[tuple[Resolved, dict[str, str]]]:
    """The request's record in the store and a lease on its runs for flow run `flow_run_id`,
    released however the block ends. Yields `resolved` with its backfill id and without the
    runs another backfill is replaying now, and those runs with their holders."""
    store = open_store(resolved.settings.store_url)
    backfill_id = store.backfill_id(resolved.key, resolved.names, request.selection())
    holder = lease_holder(flow_run_id)
    seconds = 600 + 3 * sum(i.estimated_seconds + i.server_seconds for i in resolved.items)
    held = store.lease_backfill(
        backfill_id,
        list(dict.fromkeys(item.run_uid for item in resolved.items)),
        holder,
        now() + timedelta(seconds=seconds),
    )
    items = [item for item in resolved.items if item.run_uid not in held]
    lease = (resolved.settings.store_url, backfill_id, holder)
    LEASES.add(lease)
    try:
        yield replace(resolved, backfill_id=backfill_id, items=items), held
    finally:
        release(lease)


def release(lease: Lease) -> None:
    """End a backfill flow run's leases: its replays have all ended (see `RELEASED`)."""
    store_url, backfill_id, holder = lease
    open_store(store_url).release_backfill(backfill_id, holder)
    LEASES.discard(lease)
    RELEASED.append(lease)


def plan_rows(items: list[planning.Item]) -> list[dict[str, object]]:
    """The plan as table rows: run, code version, loop, iterations, estimated seconds, and
    the seconds it first waits for its script's fork server to start (`Item.server_seconds`)."""
    return [
        {
            "run_uid": item.run_uid,
            "code_version": item.code_version[:10],
            "loop": item.loop,
            "iterations": "all" if item.iterations is None else list(item.iterations),
            "estimated_seconds": round(item.estimated_seconds, 2),
            "fork_server_seconds": round(item.server_seconds, 2),
            "reason": item.reason,
        }
        for item in items
    ]
