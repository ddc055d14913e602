"""Batches the store could not take yet, kept on local disk until it can.

When a write fails for a reason that passes (a dropped connection, a restarting database,
a full disk), the writer appends the batch to a spill file under the project's state
directory and goes on; it writes the file's batches, in order, once the store answers
again. A spill file that outlives its writer (the store was still down when the run
ended, or the writer was killed) is written by the next writer that opens the store
(`recover`). Each batch carries its run's sequence number, stored with it, so a batch
is never written twice.

What cannot wait in a file (opening a session: its run must be found or started before
anything else) is tried again for a while instead (`Patient`).

A file is a stream of pickles: the session's header (context, settings, entry script,
pid), then ("batch", seq, payload) records and, if the run ended, ("finish", status, error,
reads).
"""

from __future__ import annotations

import os
import pickle
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from flor_flows.config import STATE_DIR, Settings
from flor_flows.process import HOST, alive


def transient(exc: BaseException) -> bool:
    """Whether a store error may pass if the write is tried again later."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class Patient:
    """A store whose calls are tried again while it fails in a way that passes (a dropped
    connection, a restarting server), for about 15 s: opening a session cannot wait in a
    spill file as its batches can."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            for delay in (0.5, 1.0, 2.0, 4.0, 8.0, None):
                try:
                    return method(*args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - re-raised unless the store may come back
                    if delay is None or not transient(exc):
                        raise
                    time.sleep(delay)
            return None  # not reached: the last try returns or raises

        return call


def directory(settings: Settings) -> Path:
    """Where a project's spill files are kept: under its state directory."""
    return settings.root / STATE_DIR / "spill"


class SpillFile:
    """One writer's spill file for one run: append-only, read back in order."""

    def __init__(self, path: Path, header: tuple[Any, ...]) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.batches = 0
        self._append(header)

    @classmethod
    def for_run(cls, settings: Settings, run_uid: str, header: tuple[Any, ...]) -> SpillFile:
        """A new spill file for `run_uid`, named for this host and process (see `orphans`)."""
        name = f"{run_uid}.{HOST}.{os.getpid()}.spill"
        return cls(directory(settings) / name, header)

    def _append(self, record: tuple[Any, ...]) -> None:
        with self.path.open("ab") as file:
            pickle.dump(record, file, protocol=pickle.HIGHEST_PROTOCOL)

    def append_batch(self, seq: int, payload: tuple[Any, ...]) -> None:
        """Keep batch `seq` until the store takes it."""
        self._append(("batch", seq, payload))
        self.batches += 1

    def append_finish(
        self, status: str, error: str | None, measures: tuple[Any, ...] | None = None
    ) -> None:
        """Keep the run's outcome (with a replay's measures), to record once its batches are
        written."""
        self._append(("finish", status, error, measures))


def read(path: Path) -> Iterator[tuple[Any, ...]]:
    """The records of a spill file; a record cut short by a kill ends it (it was never
    acknowledged, so the training process sent it again)."""
    with path.open("rb") as file:
        while True:
            try:
                yield pickle.load(file)
            except (EOFError, pickle.UnpicklingError):
                return


def orphans(settings: Settings) -> list[Path]:
    """Spill files of this host whose writer process has gone, oldest first."""
    found = []
    for path in sorted(directory(settings).glob("*.spill"), key=lambda p: p.stat().st_mtime):
        host, pid, _ = path.name.split(".", 1)[1].rsplit(".", 2)
        if host == HOST and pid.isdigit() and not alive(int(pid)):
            found.append(path)
    return found
