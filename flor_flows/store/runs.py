"""A run's lifecycle and record in the store: started, versioned, written, finished."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine

from flor_flows.errors import StoreError
from flor_flows.process import DIED, HOST, alive
from flor_flows.secrets import redact_url
from flor_flows.store import schema as s
from flor_flows.store.sql import get_or_create, now

if TYPE_CHECKING:
    from flor_flows.versioning.code import CodeVersion


def _delete_replayed(conn: Any, run_id: int, replay_id: int, logs: Sequence[tuple]) -> None:
    """Delete the values other replays stored for the (context, name) pairs of `logs`."""
    contexts: dict[str, set[int | None]] = {}
    for row in logs:  # LOG_COLUMNS order: run_id, name, source, ctx_id, ...
        contexts.setdefault(row[1], set()).add(row[3])
    table = s.Log.__table__
    for name, ctx_ids in contexts.items():
        ids = sorted(c for c in ctx_ids if c is not None)
        base = delete(table).where(
            table.c.run_id == run_id,
            table.c.name == name,
            table.c.source == "replay",
            or_(table.c.replay_id != replay_id, table.c.replay_id.is_(None)),
        )
        if None in ctx_ids:
            conn.execute(base.where(table.c.ctx_id.is_(None)))
        for start in range(0, len(ids), 500):
            conn.execute(base.where(table.c.ctx_id.in_(ids[start : start + 500])))


class RunsArea:
    """Runs: their lifecycle (one owner: the writer's session), values and checkpoints."""

    engine: Engine
    url: str
    readonly: bool

    def project_id(self, name: str, root: Path) -> int:
        """The id of project `name`, created on first use."""
        with self.engine.begin() as conn:
            return get_or_create(
                conn,
                select(s.Project.id).where(s.Project.name == name),
                insert(s.Project).values(name=name, root=str(root), created_at=now()),
            )

    def start_run(
        self,
        *,
        uid: str,
        project_id: int,
        entry_script: str | None,
        prefect_flow_run_id: str | None = None,
        resumed_from: str | None = None,
        pid: int | None = None,
        started_at: datetime | None = None,
        invocation: dict[str, Any] | None = None,
    ) -> int:
        """Insert a run in status `running` (started now, or at `started_at`); its id."""
        stamp = now()
        with self.engine.begin() as conn:
            resumed_id = self.run_id(resumed_from, conn) if resumed_from else None
            return conn.execute(
                insert(s.Run).values(
                    uid=uid,
                    project_id=project_id,
                    entry_script=entry_script,
                    status="running",
                    args={},
                    started_at=started_at or stamp,
                    heartbeat_at=stamp,
                    host=HOST,
                    pid=pid or os.getpid(),
                    resumed_from_id=resumed_id,
                    prefect_flow_run_id=prefect_flow_run_id,
                    invocation=invocation,
                )
            ).inserted_primary_key[0]

    def run_id(self, uid: str, conn: Any = None) -> int:
        """The id of run `uid`; StoreError when there is none."""
        query = select(s.Run.id).where(s.Run.uid == uid)
        if conn is None:
            with self.engine.connect() as conn:
                found = conn.scalar(query)
        else:
            found = conn.scalar(query)
        if found is None:
            raise StoreError(f"no run {uid!r} in store {redact_url(self.url)!r}")
        return found

    def run_record(self, uid: str) -> dict[str, Any]:
        """A run's row, with its data batches, as plain values (used by replay)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(s.Run).where(s.Run.uid == uid)).mappings().first()
            if row is None:
                raise StoreError(f"no run {uid!r} in store {redact_url(self.url)!r}")
            batches = conn.execute(select(s.DataBatch).where(s.DataBatch.run_id == row["id"]))
            record = dict(row)
            record["data"] = {b["name"]: dict(b) for b in batches.mappings()}
        return record

    def set_code_version(self, run_id: int, project_id: int, version: CodeVersion) -> None:
        """Attach the code version a run executes (recorded once per project and commit)."""
        with self.engine.begin() as conn:
            version_id = get_or_create(
                conn,
                select(s.CodeVersion.id).where(
                    s.CodeVersion.project_id == project_id, s.CodeVersion.commit == version.commit
                ),
                insert(s.CodeVersion).values(
                    project_id=project_id,
                    commit=version.commit,
                    tree=version.tree,
                    base=version.base,
                    branch=version.branch,
                    dirty=version.dirty,
                    created_at=now(),
                ),
            )
            conn.execute(update(s.Run).where(s.Run.id == run_id).values(code_version_id=version_id))

    def add_data_batch(self, run_id: int, **batch: Any) -> None:
        """Record a data batch the run read: its name, URI, sha256, size and stored copy."""
        with self.engine.begin() as conn:
            conn.execute(insert(s.DataBatch).values(run_id=run_id, created_at=now(), **batch))

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        """End a run: its final status (completed, failed, ...) and error, if any."""
        with self.engine.begin() as conn:
            conn.execute(
                update(s.Run)
                .where(s.Run.id == run_id)
                .values(status=status, ended_at=now(), heartbeat_at=now(), error=error)
            )

    def mark_incomplete(self, run_id: int, why: str) -> None:
        """A run whose writer stopped before its end: unless it finished after all (or failed
        by itself), it is incomplete, with why."""
        with self.engine.begin() as conn:
            conn.execute(
                update(s.Run)
                .where(s.Run.id == run_id, or_(s.Run.status == "running", s.Run.error == DIED))
                .values(status="incomplete", error=why, ended_at=now())
            )

    def mark_dead_runs(self) -> int:
        """Mark runs of this host whose process is gone (SIGKILL, power loss) as failed."""
        with self.engine.begin() as conn:
            rows = conn.execute(
                select(s.Run.id, s.Run.pid).where(s.Run.status == "running", s.Run.host == HOST)
            ).all()
            dead = [rid for rid, pid in rows if not alive(pid)]
            if dead:
                conn.execute(
                    update(s.Run).where(s.Run.id.in_(dead)).values(status="failed", error=DIED)
                )
        return len(dead)

    def signature_id(self, names: tuple[str, ...]) -> int:
        """The id of a loop signature (the loop names along a context path)."""
        found = self._signatures.get(names)
        if found is not None:
            return found
        key = json.dumps(list(names))
        with self.engine.begin() as conn:
            found = get_or_create(
                conn,
                select(s.LoopSignature.id).where(s.LoopSignature.names == key),
                insert(s.LoopSignature).values(names=key),
            )
        self._signatures[names] = found
        return found

    def write(
        self,
        run_id: int,
        *,
        contexts: Sequence[tuple[Any, ...]] = (),
        logs: Sequence[tuple[Any, ...]] = (),
        checkpoints: Sequence[dict[str, Any]] = (),
        args: dict[str, Any] | None = None,
        heartbeat: bool = False,
        replacing: int | None = None,
        seq: int | None = None,
    ) -> None:
        """Write one flush of a run's buffered records in a single transaction.

        Contexts and logs are positional tuples in `CONTEXT_COLUMNS` / `LOG_COLUMNS` order; a
        log row stops after its last loop level (`i0`.. as deep as its context). `replacing`:
        the replay writing these logs, whose values replace those other replays left for the
        same (run, context, name), so a repeated request never appends. `seq`: the batch's
        sequence number, stored with it (on the replay's row when `replacing`).
        """
        with self.engine.begin() as conn:
            if replacing is not None and logs:
                _delete_replayed(conn, run_id, replacing, logs)
            if contexts:
                conn.exec_driver_sql(self._insert_contexts, list(contexts))
            by_width: dict[int, list[tuple[Any, ...]]] = {}
            for row in logs:  # rows carry only their own loop levels: no trailing NULLs to bind
                by_width.setdefault(len(row), []).append(row)
            for width, rows in by_width.items():
                conn.exec_driver_sql(self._insert_logs(width), rows)
            if logs:
                self._register_names(conn, {(r[1], r[4] or 0, r[5], r[2]) for r in logs})
            if checkpoints:
                conn.execute(insert(s.Checkpoint), list(checkpoints))
            values: dict[str, Any] = {}
            if args is not None:
                values["args"] = args
            if heartbeat:
                values["heartbeat_at"] = now()
            if seq is not None and replacing is not None:
                conn.execute(
                    update(s.Replay).where(s.Replay.id == replacing).values(batches_written=seq)
                )
            elif seq is not None:
                values["batches_written"] = seq
            if values:
                conn.execute(update(s.Run).where(s.Run.id == run_id).values(**values))

    def _register_names(self, conn: Any, kinds: set[tuple[str, int, int, str]]) -> None:
        """Add new (name, signature, type, source) kinds to the `log_names` catalog."""
        for name, sig_id, vtype, source in kinds - self._log_names:
            get_or_create(
                conn,
                select(s.LogName.name).where(
                    s.LogName.name == name,
                    s.LogName.sig_id == sig_id,
                    s.LogName.vtype == vtype,
                    s.LogName.source == source,
                ),
                insert(s.LogName).values(name=name, sig_id=sig_id, vtype=vtype, source=source),
            )
            self._log_names.add((name, sig_id, vtype, source))

    def outer_iterations(self, run_id: int) -> dict[str, int]:
        """The last iteration run `run_id` recorded of each outermost loop (loop -> index).

        Forward runs record a context per outer iteration; for runs recorded before they
        did, the values logged inside the loops tell.
        """
        contexts = (
            select(s.Context.loop_name, func.max(s.Context.iteration))
            .where(s.Context.run_id == run_id, s.Context.depth == 1)
            .group_by(s.Context.loop_name)
        )
        logged = (
            select(s.LoopSignature.names, func.max(s.Log.i0))
            .join(s.LoopSignature, s.LoopSignature.id == s.Log.sig_id)
            .where(s.Log.run_id == run_id, s.Log.source == "forward", s.Log.i0.is_not(None))
            .group_by(s.LoopSignature.names)
        )
        with self.engine.connect() as conn:
            found = {loop: last for loop, last in conn.execute(contexts) if last is not None}
            if found:
                return found
            for names, last in conn.execute(logged):
                loop = json.loads(names)[0]
                found[loop] = max(found.get(loop, last), last)
        return found

    def forward_values(self, run_id: int, name: str) -> dict[int | None, list[tuple]]:
        """The values run `run_id` logged under `name`, per loop context, in logged order."""
        query = (
            select(s.Log.ctx_id, s.Log.vtype, s.Log.num, s.Log.ival, s.Log.txt)
            .where(s.Log.name == name, s.Log.run_id == run_id, s.Log.source == "forward")
            .order_by(s.Log.id)
        )
        found: dict[int | None, list[tuple]] = {}
        with self.engine.connect() as conn:
            for ctx, *value in conn.execute(query):
                found.setdefault(ctx, []).append(tuple(value))
        return found

    def checkpoints_of(self, run_id: int) -> list[dict[str, Any]]:
        """The run's checkpoints, in the order they were written."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(s.Checkpoint).where(s.Checkpoint.run_id == run_id).order_by(s.Checkpoint.id)
            )
            return [dict(r) for r in rows.mappings()]

    def final_checkpoint(self, run_id: int) -> dict[str, Any]:
        """The last checkpoint run `run_id` wrote (the state a warm start continues from)."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    select(s.Checkpoint.uri, s.Checkpoint.sha256, s.Run.uid.label("run_uid"))
                    .join(s.Run, s.Run.id == s.Checkpoint.run_id)
                    .where(s.Checkpoint.run_id == run_id)
                    .order_by(s.Checkpoint.id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
        if row is None:
            raise StoreError(f"run {run_id} wrote no checkpoint to warm-start from")
        return dict(row)

    def latest_checkpointed_run(self, project: str, entry_script: str) -> str | None:
        """The uid of the newest completed run of `entry_script` that wrote a checkpoint."""
        query = (
            select(s.Run.uid)
            .join(s.Project, s.Project.id == s.Run.project_id)
            .where(
                s.Project.name == project,
                s.Run.entry_script == entry_script,
                s.Run.status == "completed",
                select(s.Checkpoint.id).where(s.Checkpoint.run_id == s.Run.id).exists(),
            )
            .order_by(s.Run.started_at.desc(), s.Run.id.desc())
            .limit(1)
        )
        with self.engine.connect() as conn:
            return conn.scalar(query)

    def batches_written(self, run_id: int, replay_id: int | None = None) -> int:
        """The sequence number of the last batch written for a run (or one of its replays)."""
        if replay_id is not None:
            query = select(s.Replay.batches_written).where(s.Replay.id == replay_id)
        else:
            query = select(s.Run.batches_written).where(s.Run.id == run_id)
        with self.engine.connect() as conn:
            return conn.scalar(query) or 0
