"""A backfill's runs: each leased by one flow run at a time, replayed, released."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from flor_flows.process import HOST, alive
from flor_flows.store import schema as s
from flor_flows.store.sql import aware, get_or_create, now

if TYPE_CHECKING:
    pass


def lease_holder(flow_run_id: object) -> str:
    """This process as the holder of backfill leases: host, pid and flow run."""
    return f"{HOST}:{os.getpid()}:{flow_run_id}"


def _holder_gone(holder: str) -> bool:
    """Whether a lease's holder was a process of this host that no longer runs."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    return host == HOST and pid.isdigit() and not alive(int(pid))


class BackfillsArea:
    """Backfills and their items: ids, leases, statuses."""

    engine: Engine
    url: str
    readonly: bool

    def backfill_id(
        self, key: str, names: Sequence[str], selection: dict[str, Any] | None = None
    ) -> int:
        """The record of the hindsight request `key`, created on first use."""
        record = {"key": key, "names": list(names), "selection": selection, "created_at": now()}
        with self.engine.begin() as conn:
            return get_or_create(
                conn,
                select(s.Backfill.id).where(s.Backfill.key == key),
                insert(s.Backfill).values(**record),
            )

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
            holder, until = row.pop("holder"), aware(row.pop("lease_until"))
            row["leased"] = (
                holder is not None and until is not None and until > stamp
            ) and not _holder_gone(holder)
            row["updated_at"] = aware(row["updated_at"])
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
