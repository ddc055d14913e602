"""Reads for people: the runs, the wide table, names, and read-only SQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from sqlalchemy import (
    func,
    select,
)
from sqlalchemy.engine import Engine

from flor_flows.errors import StoreError
from flor_flows.store import schema as s

if TYPE_CHECKING:
    import pandas as pd


_SQLITE_READS = {
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
}  # fmt: skip


def _authorize_reads(action: int, *_: object) -> int:
    """A SQLite authorizer that lets a statement read and nothing else (no ATTACH, no PRAGMA)."""
    return sqlite3.SQLITE_OK if action in _SQLITE_READS else sqlite3.SQLITE_DENY


class ReadsArea:
    """What `flor-flows runs/dataframe/query` and `flor.dataframe` read."""

    engine: Engine
    url: str
    readonly: bool

    def runs(self, project: str | None = None, uids: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per run: uid, status, code version, times, entry script, args, batches."""
        from flor_flows.store.query import run_table

        return run_table(self.engine, project, uids)

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
            return run_table(self.engine, project, uids)
        return wide_table(self.engine, names, project, uids, include_diverged=include_diverged)

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
