"""Arrived data batches, each claimed and consumed by exactly one retraining."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import (
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from flor_flows.store import schema as s
from flor_flows.store.sql import now

if TYPE_CHECKING:
    pass


class ArrivalsArea:
    """The arrivals queue: claim, consume, count ahead, release."""

    engine: Engine
    url: str
    readonly: bool

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
