"""`Store`: every read and write of recorded runs goes through this one class, on any
SQLAlchemy URL; its areas live in runs.py, arrivals.py, leases.py, replays.py and reads.py."""

from __future__ import annotations

import os
import sqlite3
import time
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    create_engine,
    event,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from flor_flows.errors import CorruptStore, StoreError
from flor_flows.secrets import redact_url
from flor_flows.store import schema as s
from flor_flows.store.arrivals import ArrivalsArea
from flor_flows.store.leases import BackfillsArea
from flor_flows.store.reads import ReadsArea
from flor_flows.store.replays import ReplaysArea
from flor_flows.store.runs import RunsArea
from flor_flows.store.sql import insert_sql


def sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names; None for another database or an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


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


class Store(RunsArea, ArrivalsArea, BackfillsArea, ReplaysArea, ReadsArea):
    """Runs, versions, batches, loop contexts, logs and checkpoints in one SQL database: one
    entry point, its methods by area (runs, arrivals, leases, replays, reads)."""

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
            lambda width: insert_sql(s.Log.__tablename__, s.LOG_COLUMNS[:width], self.engine)
        )
        # A loop that runs twice under one parent (same name) revisits its contexts: keep the first.
        self._insert_contexts = insert_sql("contexts", s.CONTEXT_COLUMNS, self.engine, ignore=True)
        try:
            self._ensure_schema()
        except DatabaseError as exc:
            # sqlite3 reports a damaged file only as this broad class: CorruptStore tells it
            # apart by its result code; any other error goes on as it was.
            corrupt = CorruptStore.from_error(str(parsed.database), exc)
            if corrupt is None:
                raise
            raise corrupt from exc

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

    def _unwritable(self) -> str:
        """Why this process cannot write a SQLite store's file, if that is why (else "")."""
        path = sqlite_file(self.url)
        if path is None:
            return ""
        found = [p for p in (path, path.parent) if p.exists() and not os.access(p, os.W_OK)]
        return (
            f" ({found[0]} is read-only here: the store can be read, not written)" if found else ""
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
                        f"cannot use store {redact_url(self.url)!r}: {exc.orig}{self._unwritable()}"
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
