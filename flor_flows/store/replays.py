"""A replay's record: started under its run, finished with its outcome."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine

from flor_flows.store import schema as s
from flor_flows.store.sql import now


class ReplaysArea:
    """Replays: one owner writes each (the writer's session)."""

    engine: Engine
    url: str
    readonly: bool

    def start_replay(self, run_id: int, **provenance: Any) -> int:
        """Record a replay of run `run_id` as running, with its provenance; its id."""
        with self.engine.begin() as conn:
            return conn.execute(
                insert(s.Replay).values(
                    run_id=run_id, started_at=now(), status="running", **provenance
                )
            ).inserted_primary_key[0]

    def finish_replay(
        self,
        replay_id: int,
        status: str,
        checked: int | None = None,
        error: str | None = None,
        measured: dict[str, Any] | None = None,
    ) -> None:
        """End a replay: completed, failed or diverged, with its verification and what it
        measured (`schema.Replay`'s read_bytes, read_seconds, loop_seconds, forked; None: kept)."""
        values = {"status": status, "ended_at": now(), "checked": checked, "error": error}
        values |= measured or {}
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

    def values_replayed(self, run_uid: str, names: list[str], flow_run_id: str) -> dict[str, int]:
        """Per name of `names`, how many values the replays of run `run_uid` by Prefect flow
        run `flow_run_id` stored (0 for none)."""
        query = (
            select(s.Log.name, func.count())
            .join(s.Replay, s.Replay.id == s.Log.replay_id)
            .join(s.Run, s.Run.id == s.Log.run_id)
            .where(s.Run.uid == run_uid, s.Log.name.in_(names))
            .where(s.Replay.prefect_flow_run_id == flow_run_id)
            .group_by(s.Log.name)
        )
        with self.engine.connect() as conn:
            return dict.fromkeys(names, 0) | dict(conn.execute(query).all())
