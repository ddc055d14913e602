"""SQL helpers the store's areas share: timestamps, get-or-create, bulk inserts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from flor_flows.errors import StoreError

if TYPE_CHECKING:
    pass


def now() -> datetime:
    """The current time in UTC, as the store records times."""
    return datetime.now(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """A stored time as UTC: SQLite gives back the naive form of what was written."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


def get_or_create(conn: Any, query: Any, statement: Any) -> Any:
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


def insert_sql(table: str, columns: Sequence[str], engine: Engine, ignore: bool = False) -> str:
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
