"""The writer process: everything a run writes to the store happens here, off the training process.

The training process only queues records and pickles them down a pipe; this process opens the
store, versions the code and inserts rows. Training never waits on SQL, git or their imports
(which would otherwise compete for its GIL), and if the training process dies, even by
SIGKILL, this process sees the pipe close, writes what it received and marks the run failed.
A run's row (started, then its status) is written through `lifecycle`, its one owner.

A store that fails for a while (a dropped connection, a restarting server, a full disk)
costs nothing: batches wait in a spill file on local disk until it is back (`spill`). If
this process is killed, the training process starts another, which resumes the run and
gets the batches this one had not acknowledged again.

Protocol: pickled messages on stdin, replies on stdout.
  ("start" | "resume", context, settings, entry_script, pid) -> ("ready", info) | ("error", ...)
  ("batch", seq, logs, contexts, checkpoints, data, args, checks, divergences) -> ("ack", seq)
  ("sync",)                               -> ("synced",)
  ("finish", status, error)               -> ("finished", note)   then the next "start" may follow
An error that is not the store's answers ("error", type, message) and stops the process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import signal
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from flor_flows import values
from flor_flows.config import Settings
from flor_flows.process import DIED
from flor_flows.record import lifecycle, spare, spill
from flor_flows.record.context import RunContext
from flor_flows.record.verify import Verifier

# Seconds a run's end waits for an unreachable store before leaving its last values on disk.
PATIENCE_VAR, PATIENCE_DEFAULT = "FLOR_FLOWS_STORE_PATIENCE", "30"
MAX_BACKOFF = 10.0  # seconds between tries of an unreachable store


class Session:
    """The store side of one run (record) or one replay of a historical run."""

    def __init__(
        self,
        context: RunContext,
        settings: Settings,
        entry_script: str | None,
        pid: int,
        resume: bool = False,
    ) -> None:
        from flor_flows.store import open_store

        self.context, self.settings = context, settings
        self.header = (context, settings, entry_script, pid)
        self.replaying = context.mode == "replay"
        self.store = open_store(settings.store_url, pooled=True)  # this process never reads
        self.patient = spill.Patient(self.store)  # for what a session must do before anything else
        self.history: dict[str, Any] = {}
        self.checkpoints: list[dict[str, Any]] = []
        self.warm_start: dict[str, Any] | None = None
        self.verifier: Verifier | None = None
        self.run_failure: str | None = None  # a replayed failed run: what it raised
        self.escaped: set[str] = set()  # names whose text values were stored escaped
        self.written = 0  # the sequence number of the last batch in the store
        self.spilled: spill.SpillFile | None = None
        self.backoff, self.next_try = 0.5, 0.0
        if not resume:
            recover(settings)  # what earlier writers could not write comes first
        if resume:
            self._attach()
        elif self.replaying:
            self.source = "replay"
            self.history = self.patient.run_record(context.run_uid)
            self.run_id = self.history["id"]
            self.history["iterations"] = self.patient.outer_iterations(self.run_id)
            spec = context.replay
            self.replay_id = spec.replay_id if spec and spec.replay_id else None
            if self.replay_id is None:
                self.replay_id = lifecycle.start_replay(self.patient, self.run_id)
            self.verifier = Verifier(
                self.store,
                self.run_id,
                float(settings.replay_rtol),
                completed=self.history["status"] == "completed",
            )
            self.run_failure = _failure(self.history)
            self.checkpoints = self.patient.checkpoints_of(self.run_id)
            if self.history["resumed_from_id"] is not None:
                self.warm_start = self.patient.final_checkpoint(self.history["resumed_from_id"])
        else:
            self._start(context, entry_script, pid)

    def _attach(self) -> None:
        """Go on with a run (or replay) another writer started: it is in the store."""
        self.history = {}
        self.run_id = self.patient.run_id(self.context.run_uid)
        spec = self.context.replay
        self.source = "replay" if self.replaying else "forward"
        self.replay_id = spec.replay_id if self.replaying and spec else None
        if self.replaying:
            record = self.patient.run_record(self.context.run_uid)
            self.verifier = Verifier(
                self.store, self.run_id, float(self.settings.replay_rtol),
                completed=record["status"] == "completed",
            )  # fmt: skip
            self.run_failure = _failure(record)
        self.written = self.patient.batches_written(self.run_id, self.replay_id)

    def _start(self, context: RunContext, entry_script: str | None, pid: int) -> None:
        self.source, self.replay_id = "forward", None
        lifecycle.fail_dead(self.patient)  # readers only show them failed; a writer records it
        self.run_id, commit = lifecycle.start(
            self.patient, self.settings, context, entry_script, pid
        )
        self._share_code(self.settings.root, commit)
        if context.resumed_from is not None:
            self.warm_start = self.patient.final_checkpoint(
                self.patient.run_id(context.resumed_from)
            )

    def _share_code(self, root: Path, commit: str) -> None:
        """Keep the run's code version beside its checkpoints, for the hosts that replay it
        without the repository (`archives`); a failure is a warning: the run goes on."""
        from flor_flows.errors import FlorError
        from flor_flows.versioning import archives

        try:
            archives.publish(root, commit, self.settings)
        except FlorError as exc:
            _warn(
                f"code version {commit[:10]} was not stored beside the checkpoints ({exc}); "
                "only hosts with the repository can replay the run until a backfill run on "
                "one of them stores it"
            )

    def ready(self) -> dict[str, Any]:
        """What the training process learns once its session is open (`Buffer.wait_ready`)."""
        return {
            "run_id": self.run_id,
            "replay_id": self.replay_id,
            "history": self.history,
            "checkpoints": self.checkpoints,
            "warm_start": self.warm_start,
        }

    # -- batches: written, or kept on disk while the store is unreachable -------------------
    def receive(self, seq: int, payload: tuple[Any, ...]) -> None:
        """Write batch `seq` (once: a batch sent again after a writer restart is skipped)."""
        if seq <= self.written:
            return
        if self.spilled is None:
            try:
                self.write(seq, *payload)
                return
            except Exception as exc:  # noqa: BLE001 - re-raised unless the store may come back
                if not spill.transient(exc):
                    raise
                self._spill_from_now(exc)
        self.spilled.append_batch(seq, payload)
        if time.monotonic() >= self.next_try:
            self.drain()

    def _spill_from_now(self, exc: BaseException) -> None:
        context, *rest = self.header
        if self.replaying:  # a later writer resumes this replay, not a new one
            spec = dataclasses.replace(context.replay, replay_id=self.replay_id)
            context = dataclasses.replace(context, replay=spec)
        header = (context, *rest)
        self.spilled = spill.SpillFile.for_run(self.settings, self.context.run_uid, header)
        why = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
        _warn(
            f"the store is unreachable ({why}); the run goes on and its values wait in "
            f"{self.spilled.path} until the store is back"
        )
        self.next_try = time.monotonic() + self.backoff

    def drain(self) -> bool:
        """Write the spilled batches if the store answers; True once none are left."""
        if self.spilled is None:
            return True
        try:
            for record in spill.read(self.spilled.path):
                if record[0] == "batch" and record[1] > self.written:
                    self.write(record[1], *record[2])
        except Exception as exc:  # noqa: BLE001 - re-raised unless the store may come back
            if not spill.transient(exc):
                raise
            self.backoff = min(self.backoff * 2, MAX_BACKOFF)
            self.next_try = time.monotonic() + self.backoff
            return False
        _warn(f"the store is back: {self.spilled.batches} batches kept on disk are written")
        self.spilled.path.unlink()
        self.spilled, self.backoff = None, 0.5
        return True

    def write(
        self,
        seq: int,
        logs: list,
        contexts: list,
        checkpoints: list,
        data: list,
        args: Any,
        checks: list,
        divergences: list,
    ) -> None:
        """Write one batch to the store; the replay's re-logged values are checked first."""
        if self.verifier is not None:
            for why in divergences:
                self.verifier.diverge(why)
            self.verifier.check(checks)
        self._warn_escaped(logs)
        run_id, source, replay_id = self.run_id, self.source, self.replay_id
        signature = self.store.signature_id
        for batch in data:
            self.store.add_data_batch(run_id, **batch)
        self.store.write(
            run_id,
            contexts=[
                (
                    run_id,
                    ctx,
                    parent,
                    loop,
                    iteration,
                    path_values[-1] if path_values else None,
                    json.dumps(path_values) if path_values else None,
                    depth,
                    started,
                    seconds,
                    inner,
                )  # fmt: skip
                for ctx, parent, loop, iteration, path_values, depth, started, seconds, inner in contexts
            ],
            logs=[
                (
                    run_id,
                    name,
                    source,
                    ctx,
                    signature(names) if names else None,
                    *(v.encoded if type(v) is values.Frozen else values.encode(v)),
                    replay_id,
                    *path,
                )  # fmt: skip
                for ctx, names, path, name, v in logs
            ],
            checkpoints=[row | {"run_id": run_id} for row in checkpoints],
            args=None if self.replaying else args,
            heartbeat=not self.replaying,
            replacing=replay_id,
            seq=seq,
        )
        self.written = seq

    def _warn_escaped(self, logs: list) -> None:
        """Say once per name that text values were stored escaped (NUL, lone surrogates)."""
        for _, _, _, name, value in logs:
            if type(value) is str and name not in self.escaped and values.storable(value) != value:
                self.escaped.add(name)
                print(
                    f"flor-flows: warning: a text value of {name!r} holds characters a store "
                    "cannot keep (NUL or lone surrogates); stored with them escaped",
                    file=sys.stderr,
                    flush=True,
                )

    def finish(
        self, status: str, error: str | None, measures: tuple[Any, ...] | None = None
    ) -> str | None:
        """Record the outcome (with a replay's `replay_loop.Measures`); if the
        store stays unreachable, leave it and the batches not written in the spill file for
        the next writer, and say so (the returned note)."""
        patience = float(os.environ.get(PATIENCE_VAR, PATIENCE_DEFAULT))  # read now: `spare`
        deadline = time.monotonic() + patience
        while not self.drain() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self.next_try, deadline) - time.monotonic()))
        if self.spilled is None:
            try:
                self._record_outcome(status, error, measures)
                recover(self.settings)  # a writer that was still exiting when this run began
                return None
            except Exception as exc:  # noqa: BLE001 - re-raised unless the store may come back
                if not spill.transient(exc):
                    raise
                self._spill_from_now(exc)
        self.spilled.append_finish(status, error, measures)
        return (
            f"the store did not answer for {patience:.0f} s: this run's last values and "
            f"its outcome are kept in {self.spilled.path}; the next run that opens the store "
            "writes them"
        )

    def _record_outcome(
        self, status: str, error: str | None, measures: tuple[Any, ...] | None = None
    ) -> None:
        if self.verifier is not None:
            verifier = self.verifier
            if status == "failed" and error and _last_line(error) == self.run_failure:
                # the replay of a failed run raised what the run raised: the run, faithfully
                status, error = "completed", f"raised as its run did: {self.run_failure}"
            lifecycle.finish_replay(
                self.store,
                self.replay_id,
                status,
                verifier.checked,
                verifier.divergence,
                error,
                measures,
            )
        else:
            lifecycle.finish(self.store, self.run_id, status, error)


def _failure(run: dict[str, Any]) -> str | None:
    """What a failed run raised (the last line of its error), else None."""
    return _last_line(run["error"]) if run["status"] == "failed" and run["error"] else None


def _last_line(text: str) -> str:
    return text.strip().rpartition("\n")[2]


def _warn(message: str) -> None:
    print(f"flor-flows: warning: {message}", file=sys.stderr, flush=True)


def recover(settings: Settings) -> None:
    """Write what writers that are gone left in spill files (see `spill`), oldest first.

    A file without the run's outcome belongs to a writer killed before the run ended: if
    no later writer finished the run, it is marked incomplete.
    """
    for path in spill.orphans(settings):
        records = spill.read(path)
        context, file_settings, entry_script, pid = next(records)
        try:
            session = Session(context, file_settings, entry_script, pid, resume=True)
            outcome = None
            for record in records:
                if record[0] == "batch":
                    session.receive(record[1], record[2])
                else:
                    outcome = record[1:]
            if session.spilled is not None:  # the store failed again: try another time
                session.spilled.path.unlink()
                continue
        except Exception as exc:  # noqa: BLE001 - recovery must not stop the run starting now
            if not spill.transient(exc):
                _warn(f"cannot write the values kept in {path} ({exc}); the file is left as is")
            continue
        if outcome is not None:
            session._record_outcome(*outcome)
        elif session.verifier is None:
            lifecycle.incomplete(
                session.store,
                session.run_id,
                f"{DIED}; the values it kept on local disk were written later",
            )
        path.unlink()
        _warn(f"wrote the values of run {context.run_uid} that were kept in {path}")


def _reply(out: BinaryIO, *message: Any) -> None:
    """Answer the training process; one that died no longer reads, but what it sent before
    is still in the pipe: go on writing it (its end marks the run failed)."""
    try:
        pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
    except BrokenPipeError:
        pass


def _error(exc: BaseException) -> tuple[str, str, str]:
    return ("error", type(exc).__name__, str(exc))


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """Handle one run's messages until it finishes or its process goes away."""
    session: Session | None = None
    try:
        while True:
            try:
                message = pickle.load(inp)
            except EOFError:  # the training process ended or died
                if session is not None:
                    session.finish("failed", DIED)
                    return 1
                return 0
            kind = message[0]
            if kind in ("start", "resume"):
                session = Session(*message[1:], resume=kind == "resume")
                _reply(out, "ready", session.ready())
            elif kind == "batch":
                session.receive(message[1], message[2:])
                _reply(out, "ack", message[1])
            elif kind == "sync":
                session.drain()
                _reply(out, "synced")
            elif kind == "finish":  # the next run of the same process may follow
                note = session.finish(*message[1:])
                session = None
                _reply(out, "finished", note)
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the training process
        _reply(out, *_error(exc))
        return 1


if __name__ == "__main__":
    # Ctrl-C at a terminal signals the whole group: the training process records its run
    # as interrupted through this writer, which ends when that process's pipe does.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.argv[1:] == ["--spare"]:  # started ahead of its replay: see `spare`
        import flor_flows.store  # noqa: F401 - what `Session` imports, before it is needed

        if not spare.adopt():
            sys.exit(0)
    sys.exit(serve(sys.stdin.buffer, sys.stdout.buffer))
