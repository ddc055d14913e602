"""Reads of the hindsight requests: each request with its runs counted by status, and the
runs of one request with where each stands (`flor-flows backfills [ID]`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from sqlalchemy import and_, case, func, select

from flor_flows.errors import RequestError
from flor_flows.store import schema as s

if TYPE_CHECKING:
    from flor_flows.store.store import Store


# How the list counts a run replayed whose replays stored no value of some name (its item is
# `replayed`, with why as its error).
NO_VALUES = "no values"


def requests(store: Store, statuses: Sequence[str] = ()) -> pd.DataFrame:
    """One row per request: id, names, created_at, then the number of its runs per status
    (`statuses` first, in their order, then any other found; NO_VALUES for a replayed run
    with an error), oldest request first."""
    query = select(s.Backfill.id, s.Backfill.names, s.Backfill.created_at).order_by(s.Backfill.id)
    item = s.BackfillItem
    empty = and_(item.status == "replayed", item.error.is_not(None))
    status = case((empty, NO_VALUES), else_=item.status).label("status")
    counted = select(item.backfill_id, status, func.count().label("n")).group_by(
        item.backfill_id, status
    )
    with store.engine.connect() as conn:
        found = pd.DataFrame(conn.execute(query).all(), columns=["id", "names", "created_at"])
        counts = pd.DataFrame(conn.execute(counted).all(), columns=["id", "status", "n"])
    found["names"] = found["names"].map(",".join)
    found["created_at"] = pd.to_datetime(found["created_at"], utc=True)
    per_status = counts.pivot(index="id", columns="status", values="n")
    order = [c for c in statuses if c in per_status.columns]
    per_status = per_status[order + sorted(set(per_status.columns) - set(order))]
    found = found.merge(per_status, left_on="id", right_index=True, how="left")
    return found.fillna({c: 0 for c in per_status.columns}).astype(
        {c: "int64" for c in per_status.columns}
    )


def request(store: Store, backfill_id: int) -> tuple[list[str], dict[str, Any]]:
    """The names request `backfill_id` computes and its selection (empty for requests made
    before flor-flows kept it); FlorError naming the requests if there is none."""
    query = select(s.Backfill.names, s.Backfill.selection).where(s.Backfill.id == backfill_id)
    with store.engine.connect() as conn:
        found = conn.execute(query).first()
        if found is None:
            known = list(conn.scalars(select(s.Backfill.id).order_by(s.Backfill.id)))
    if found is None:
        listed = ", ".join(map(str, known)) or "none yet"
        raise RequestError(f"no backfill {backfill_id}; backfills: {listed}")
    return list(found.names), dict(found.selection or {})


def items(store: Store, backfill_id: int) -> pd.DataFrame:
    """The runs of request `backfill_id` in run order: run_uid, code_version, status,
    updated_at and error (in full); FlorError if there is no such request."""
    request(store, backfill_id)
    item = s.BackfillItem
    query = (
        select(item.run_uid, s.CodeVersion.commit, item.status, item.updated_at, item.error)
        .outerjoin(s.Run, s.Run.uid == item.run_uid)
        .outerjoin(s.CodeVersion, s.CodeVersion.id == s.Run.code_version_id)
        .where(item.backfill_id == backfill_id)
        .order_by(s.Run.started_at, item.run_uid)
    )
    columns = ["run_uid", "code_version", "status", "updated_at", "error"]
    with store.engine.connect() as conn:
        found = pd.DataFrame(conn.execute(query).all(), columns=columns)
    found["updated_at"] = pd.to_datetime(found["updated_at"], utc=True)
    return found
