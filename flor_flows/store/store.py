"""`Store`: every read and write of recorded runs goes through this one class, on any SQLAlchemy URL."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from flor_flows.errors import CorruptStore, StoreError
from flor_flows.process import DIED, alive
from flor_flows.secrets import redact_url
from flor_flows.store import schema as s

if TYPE_CHECKING:
    import pandas as pd

    from flor_flows.versioning.code import CodeVersion

HOST = socket.gethostname()


def now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    """A stored time as UTC: SQLite gives back the naive form of what was written."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def _read_only_connection(path: Path) -> sqlite3.Connection:
    """A connection that can only read `path`, also on read-only storage.

    SQLite opens a WAL-mode file read-only only where it may use its shared-memory file;
    on read-only storage the file is read as immutable, which is exact only when no
    changes wait in its `-wal` file: otherwise it is an error, not a stale view.
    """
    if not path.is_file():
        raise StoreError(f"no runs recorded yet: there is no store at {path}")
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1")
        return conn
    except sqlite3.OperationalError:
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size:
            raise StoreError(
                f"the store {path} is on storage this process cannot write and holds changes "
                f"not merged yet ({wal.name}): open it once where it can be written"
            ) from None
    uri = f"{path.as_uri()}?immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def lease_holder(flow_run_id: object) -> str:
    """This process as the holder of backfill leases: host, pid and flow run."""
    return f"{HOST}:{os.getpid()}:{flow_run_id}"


def _holder_gone(holder: str) -> bool:
    """Whether a lease's holder was a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host == HOST and pid.isdigit() and not alive(int(pid))


class Store:
    """Runs, versions, batches, loop contexts, logs and checkpoints in one SQL database."""

    def __init__(self, url: str, pooled: bool = False, readonly: bool = False) -> None:
        """Open (and create if needed) the store at `url`.

        On a SQLite file, connections are not pooled unless `pooled`: the wide table reads
        through connectorx, whose own SQLite library cannot see this process's other
        connections (POSIX locks are per process) and, closing, may remove the WAL under
        them, so an idle pooled connection would go on reading, and writing, a removed WAL.
        The writer process, which never reads that way, pools: a connection per write would
        checkpoint the WAL at every flush.
        """
        self.url, self.readonly = url, readonly
        if url.startswith("sqlite:///") and not readonly:
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            parsed = make_url(url)
            on_file = parsed.get_backend_name() == "sqlite" and parsed.database not in (
                None,
                "",
                ":memory:",
            )
            # A pooled connection is checked before use, so one the server dropped (a
            # restart, pg_terminate_backend) is replaced instead of failing a write.
            pool = {"poolclass": NullPool} if on_file and not pooled else {"pool_pre_ping": True}
            if readonly and on_file:
                path = Path(parsed.database)
                self.engine: Engine = create_engine(
                    "sqlite://", creator=lambda: _read_only_connection(path), poolclass=NullPool
                )
            else:
                self.engine = create_engine(url, future=True, **pool)
        except Exception as exc:  # noqa: BLE001 - any driver/URL error becomes one clear message
            raise StoreError(f"cannot open store {redact_url(url)!r}: {exc}") from exc
        if self.engine.dialect.name == "sqlite" and not readonly:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._signatures: dict[tuple[str, ...], int] = {}
        self._log_names: set[tuple[str, int, int, str]] = set()
        self._insert_logs = cache(
            lambda width: _insert_sql(s.Log.__tablename__, s.LOG_COLUMNS[:width], self.engine)
        )
        # A loop that runs twice under one parent (same name) revisits its contexts: keep the first.
        self._insert_contexts = _insert_sql("contexts", s.CONTEXT_COLUMNS, self.engine, ignore=True)
        try:
            self._ensure_schema()
        except DatabaseError as exc:
            # sqlite3 reports a damaged file only as this broad class: CorruptStore tells it
            # apart by its result code; any other error goes on as it was.
            corrupt = CorruptStore.from_error(str(parsed.database), exc)
            if corrupt is None:
                raise
            raise corrupt from exc

    # -- schema ---------------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        """Create the tables of a new store (add those an older one lacks); check the version."""
        if not self.readonly:
            self._create_schema()
        with self.engine.connect() as conn:
            found = conn.scalar(select(s.Meta.value).where(s.Meta.key == "schema_version"))
        if found != str(s.SCHEMA_VERSION):
            raise StoreError(
                f"store {redact_url(self.url)!r} has schema version {found}, this flor-flows expects "
                f"{s.SCHEMA_VERSION}; upgrade flor-flows or point FLOR_FLOWS_STORE_URL at a new store"
            )

    def _create_schema(self) -> None:
        for attempt in range(5):
            try:
                with self.engine.begin() as conn:
                    s.Base.metadata.create_all(conn)
                    _add_missing_columns(conn)
                break
            except (OperationalError, ProgrammingError, IntegrityError) as exc:
                # Another process may be creating the same tables right now: look again.
                if attempt == 4:
                    raise StoreError(
                        f"cannot use store {redact_url(self.url)!r}: {exc.orig}"
                    ) from exc
                time.sleep(0.05 * (attempt + 1))
        version = select(s.Meta.value).where(s.Meta.key == "schema_version")
        try:
            with self.engine.begin() as conn:
                if conn.scalar(version) is None:
                    conn.execute(
                        insert(s.Meta).values(key="schema_version", value=str(s.SCHEMA_VERSION))
                    )
        except IntegrityError:
            pass  # another process recorded it first

    # -- runs -----------------------------------------------------------------------------
    def project_id(self, name: str, root: Path) -> int:
        """The id of project `name`, created on first use."""
        with self.engine.begin() as conn:
            return _get_or_create(
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

    def set_code_version(self, run_id: int, project_id: int, version: CodeVersion) -> None:
        with self.engine.begin() as conn:
            version_id = _get_or_create(
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
        with self.engine.begin() as conn:
            conn.execute(insert(s.DataBatch).values(run_id=run_id, created_at=now(), **batch))

    def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
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

    # -- streamed records -----------------------------------------------------------------
    def signature_id(self, names: tuple[str, ...]) -> int:
        """The id of a loop signature (the loop names along a context path)."""
        found = self._signatures.get(names)
        if found is not None:
            return found
        key = json.dumps(list(names))
        with self.engine.begin() as conn:
            found = _get_or_create(
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
            _get_or_create(
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

    def checkpoints_of(self, run_id: int) -> list[dict[str, Any]]:
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

    # -- arrivals -------------------------------------------------------------------------
    def claim_arrivals(
        self, project_id: int, uris: Sequence[str], claim: str, limit: int
    ) -> list[str]:
        """Claim up to `limit` of `uris` that no one claimed before; ours, in the given order."""
        won: list[str] = []
        with self.engine.begin() as conn:
            for uri in uris:
                if len(won) == limit:
                    break
                row = {"project_id": project_id, "uri": uri, "claim": claim, "claimed_at": now()}
                try:
                    with conn.begin_nested():
                        conn.execute(insert(s.Arrival).values(**row))
                except IntegrityError:
                    continue  # claimed by an earlier or concurrent run
                won.append(uri)
        return won

    def consume_arrival(self, project_id: int, uri: str, claim: str, run_uid: str) -> None:
        """Mark a claimed batch as trained on by run `run_uid`."""
        with self.engine.begin() as conn:
            conn.execute(
                update(s.Arrival)
                .where(
                    s.Arrival.project_id == project_id,
                    s.Arrival.uri == uri,
                    s.Arrival.claim == claim,
                )
                .values(run_uid=run_uid)
            )

    def arrivals_ahead(self, project_id: int, claim: str) -> int:
        """How many batches claimed before `claim` by other runs are not trained on yet."""
        first = (
            select(func.min(s.Arrival.id))
            .where(s.Arrival.project_id == project_id, s.Arrival.claim == claim)
            .scalar_subquery()
        )
        query = select(func.count()).where(
            s.Arrival.project_id == project_id,
            s.Arrival.claim != claim,
            s.Arrival.run_uid.is_(None),
            s.Arrival.id < first,
        )
        with self.engine.connect() as conn:
            return conn.scalar(query)

    def release_arrivals(self, claim: str) -> int:
        """Give back the batches `claim` took but did not train on; returns how many."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(s.Arrival).where(s.Arrival.claim == claim, s.Arrival.run_uid.is_(None))
            ).rowcount

    # -- backfills -------------------------------------------------------------------------
    def backfill_id(
        self, key: str, names: Sequence[str], selection: dict[str, Any] | None = None
    ) -> int:
        """The record of the hindsight request `key`, created on first use."""
        record = {"key": key, "names": list(names), "selection": selection, "created_at": now()}
        with self.engine.begin() as conn:
            return _get_or_create(
                conn,
                select(s.Backfill.id).where(s.Backfill.key == key),
                insert(s.Backfill).values(**record),
            )

    def batches_written(self, run_id: int, replay_id: int | None = None) -> int:
        """The sequence number of the last batch written for a run (or one of its replays)."""
        if replay_id is not None:
            query = select(s.Replay.batches_written).where(s.Replay.id == replay_id)
        else:
            query = select(s.Run.batches_written).where(s.Run.id == run_id)
        with self.engine.connect() as conn:
            return conn.scalar(query) or 0

    def find_backfill(self, key: str) -> int | None:
        """The id of the hindsight request `key`, if a flow run ever ran it."""
        with self.engine.connect() as conn:
            return conn.scalar(select(s.Backfill.id).where(s.Backfill.key == key))

    def backfill_status(self, backfill_id: int) -> dict[str, str]:
        """run uid -> status of every run the request has touched."""
        query = select(s.BackfillItem.run_uid, s.BackfillItem.status).where(
            s.BackfillItem.backfill_id == backfill_id
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(query).all())

    def set_backfill_status(
        self,
        backfill_id: int,
        run_uid: str,
        status: str,
        error: str | None = None,
        flow_run_id: str | None = None,
    ) -> None:
        """Record where a run of a backfill stands (it survives a restart of the backfill)."""
        values = {"status": status, "error": error, "updated_at": now()}
        values["prefect_flow_run_id"] = flow_run_id
        with self.engine.begin() as conn:
            updated = conn.execute(
                update(s.BackfillItem)
                .where(s.BackfillItem.backfill_id == backfill_id, s.BackfillItem.run_uid == run_uid)
                .values(**values)
            ).rowcount
            if not updated:
                conn.execute(
                    insert(s.BackfillItem).values(
                        backfill_id=backfill_id, run_uid=run_uid, **values
                    )
                )

    def lease_backfill(
        self, backfill_id: int, uids: Sequence[str], holder: str, until: datetime
    ) -> dict[str, str]:
        """Take the lease on runs `uids` of a backfill for `holder` (a flow run) until `until`.

        A run leased by another holder whose lease is live is left alone: returns those, run
        uid -> holder. A lease expires at `until`, or at once when its holder was a process
        of this host that has gone.
        """
        item = s.BackfillItem
        held: dict[str, str] = {}
        stamp = now()
        with self.engine.begin() as conn:
            for uid in uids:
                fields = {"holder": holder, "lease_until": until, "updated_at": stamp}
                try:
                    with conn.begin_nested():
                        conn.execute(
                            insert(item).values(
                                backfill_id=backfill_id, run_uid=uid, status="planned", **fields
                            )
                        )
                    continue
                except IntegrityError:
                    pass  # the run has a row: take it unless another live lease holds it
                mine = (item.backfill_id == backfill_id, item.run_uid == uid)
                other = conn.scalar(select(item.holder).where(*mine))
                free = or_(item.holder.is_(None), item.holder == holder, item.lease_until < stamp)
                if other is not None and _holder_gone(other):
                    free = or_(free, item.holder == other)
                if not conn.execute(update(item).where(*mine, free).values(**fields)).rowcount:
                    held[uid] = conn.scalar(select(item.holder).where(*mine))
        return held

    def backfill_items_of(self, flow_run_ids: Iterable[str]) -> list[dict[str, Any]]:
        """The backfill items flow runs `flow_run_ids` last touched: backfill id, run uid,
        status, flow run, holder, whether its lease is live, and when it last changed."""
        item = s.BackfillItem
        query = select(
            item.backfill_id,
            item.run_uid,
            item.status,
            item.prefect_flow_run_id,
            item.holder,
            item.lease_until,
            item.updated_at,
        ).where(item.prefect_flow_run_id.in_(list(flow_run_ids)))
        stamp = now()
        with self.engine.connect() as conn:
            rows = [dict(row._mapping) for row in conn.execute(query)]
        for row in rows:
            holder, until = row.pop("holder"), _aware(row.pop("lease_until"))
            row["leased"] = (
                holder is not None and until is not None and until > stamp
            ) and not _holder_gone(holder)
            row["updated_at"] = _aware(row["updated_at"])
        return rows

    def cancel_leased(self, backfill_id: int, holder: str) -> None:
        """Mark the runs `holder` leases and has not finished cancelled, and end its leases."""
        item = s.BackfillItem
        unfinished = ("planned", "propagated", "replaying")
        with self.engine.begin() as conn:
            conn.execute(
                update(item)
                .where(
                    item.backfill_id == backfill_id,
                    item.holder == holder,
                    item.status.in_(unfinished),
                )
                .values(status="cancelled", updated_at=now())
            )
        self.release_backfill(backfill_id, holder)

    def release_backfill(self, backfill_id: int, holder: str) -> None:
        """End `holder`'s leases on the runs of a backfill."""
        item = s.BackfillItem
        with self.engine.begin() as conn:
            conn.execute(
                update(item)
                .where(item.backfill_id == backfill_id, item.holder == holder)
                .values(holder=None, lease_until=None)
            )

    def start_replay(self, run_id: int, **provenance: Any) -> int:
        with self.engine.begin() as conn:
            return conn.execute(
                insert(s.Replay).values(
                    run_id=run_id, started_at=now(), status="running", **provenance
                )
            ).inserted_primary_key[0]

    def finish_replay(
        self, replay_id: int, status: str, checked: int | None = None, error: str | None = None
    ) -> None:
        """End a replay: completed, failed or diverged, with its verification (None: kept)."""
        values = {"status": status, "ended_at": now(), "checked": checked, "error": error}
        with self.engine.begin() as conn:
            conn.execute(
                update(s.Replay)
                .where(s.Replay.id == replay_id)
                .values({k: v for k, v in values.items() if v is not None})
            )

    def replay_outcome(self, replay_id: int) -> dict[str, Any]:
        """A replay's status, how many values it verified, and why it diverged or failed."""
        query = select(s.Replay.status, s.Replay.checked, s.Replay.error).where(
            s.Replay.id == replay_id
        )
        with self.engine.connect() as conn:
            return dict(conn.execute(query).mappings().one())

    # -- reads ----------------------------------------------------------------------------
    def runs(self, project: str | None = None, uids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per run: uid, status, code version, times, entry script, args, batches."""
        from flor_flows.store.query import run_table

        return run_table(self, project, uids)

    def dataframe(
        self,
        names: Iterable[str],
        project: str | None = None,
        uids: Sequence[str] | None = None,
        include_diverged: bool = False,
    ) -> pd.DataFrame:
        """The wide table of `names`; `uids` narrows it to those runs. Values of replays that
        diverged from their run's record are left out unless `include_diverged`."""
        from flor_flows.store.query import run_table, wide_table

        names = list(dict.fromkeys(names))
        if not names:
            return run_table(self, project, uids)
        return wide_table(self, names, project, uids, include_diverged=include_diverged)

    def logged_names(self, uid: str) -> list[str]:
        """The names run `uid` logged, forward or replayed, in first-logged order."""
        query = (
            select(s.Log.name)
            .where(s.Log.run_id == self.run_id(uid))
            .group_by(s.Log.name)
            .order_by(func.min(s.Log.id))
        )
        with self.engine.connect() as conn:
            return list(conn.scalars(query))

    def query(self, sql: str) -> pd.DataFrame:
        """Run one SQL statement, read-only, on the store: a write or a second statement is
        refused by the database itself (SQLite's authorizer allows reading only; PostgreSQL
        runs it in a READ ONLY transaction as a prepared statement, which holds one command)."""
        import pandas as pd

        dialect = self.engine.dialect
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            cursor = raw.cursor()
            try:
                if dialect.name == "sqlite":
                    raw.set_authorizer(_authorize_reads)
                    cursor.execute(sql)
                elif dialect.name == "postgresql":
                    cursor.execute("SET TRANSACTION READ ONLY")
                    cursor.execute(sql, prepare=True)
                else:
                    raise StoreError(f"read-only queries are not supported on {dialect.name} yet")
                columns = [d[0] for d in cursor.description or ()]
                rows = cursor.fetchall() if cursor.description else []
            except dialect.dbapi.Error as exc:  # bad SQL is the user's input: no traceback
                why = str(exc).strip().splitlines()[0]
                raise StoreError(f"query failed: {why} (queries read, one statement each)") from exc
            finally:
                raw.rollback()
                if dialect.name == "sqlite":
                    raw.set_authorizer(None)
                cursor.close()
        return pd.DataFrame.from_records(rows, columns=columns)


_SQLITE_READS = {
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
}  # fmt: skip


def _authorize_reads(action: int, *_: object) -> int:
    """A SQLite authorizer that lets a statement read and nothing else (no ATTACH, no PRAGMA)."""
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


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


def _get_or_create(conn: Any, query: Any, statement: Any) -> Any:
    """What `query` finds, after running `statement` if it found nothing.

    Safe against a concurrent writer inserting the same row: the savepoint absorbs the
    unique-key clash and the second read finds its row.
    """
    found = conn.scalar(query)
    if found is None:
        try:
            with conn.begin_nested():
                conn.execute(statement)
        except IntegrityError:
            pass  # inserted by a concurrent writer
        found = conn.scalar(query)
    return found


def _insert_sql(table: str, columns: Sequence[str], engine: Engine, ignore: bool = False) -> str:
    """A driver-level INSERT taking positional tuples: the fast path for streamed rows.

    With `ignore`, rows whose primary key exists already are skipped.
    """
    style = engine.dialect.paramstyle
    if style == "qmark":
        marks = ["?"] * len(columns)
    elif style in ("format", "pyformat"):
        marks = ["%s"] * len(columns)
    elif style == "numeric":
        marks = [f":{k + 1}" for k in range(len(columns))]
    else:
        raise StoreError(f"unsupported DB-API paramstyle {style!r} for {engine.url!r}")
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(marks)})"
    if not ignore:
        return sql
    if engine.dialect.name in ("sqlite", "postgresql"):
        return sql + " ON CONFLICT DO NOTHING"
    if engine.dialect.name in ("mysql", "mariadb"):
        return sql.replace("INSERT INTO", "INSERT IGNORE INTO", 1)
    raise StoreError(f"flor-flows does not support the {engine.dialect.name} dialect yet")


@cache
def open_store(url: str, pooled: bool = False, readonly: bool = False) -> Store:
    """One `Store` per URL per process (see `Store` for `pooled`; `readonly`: only reads,
    for a store on storage this process cannot write)."""
    return Store(url, pooled, readonly)


def _add_missing_columns(conn: Any) -> None:
    """Add the nullable columns a store made by an earlier flor-flows lacks (additive only)."""
    for table in s.Base.metadata.sorted_tables:
        present = {c["name"] for c in inspect(conn).get_columns(table.name)}
        for column in table.columns:
            if column.name not in present:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
