"""The training side of a run's writes: in-memory queues, streamed to the writer process.

Records wait in queues that the training thread appends to; a background thread pickles
them down a pipe to `flor_flows.record.writer` at least once a second. The store, git and
SQL live in that process, so training pays only for the append and the pickling.

Each batch is kept until the writer acknowledges it (written, or kept on its disk); if the
writer process dies, a new one resumes the run and gets the unacknowledged batches again,
so training goes on and nothing is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from flor_flows import errors
from flor_flows.config import Settings
from flor_flows.record import spare
from flor_flows.record.context import RunContext


def _error(kind: str, message: str) -> errors.FlorError:
    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, errors.FlorError):
        return cls(message)
    return errors.StoreError(f"{kind}: {message}")


# Wire formats (plain tuples pickle ~5x faster than Frame objects); `writer.py` reads them.
def _logs(records: list) -> list:
    return [(f.ctx_id, f.names, f.path, name, value) for f, name, value in records]


def _contexts(records: list) -> list:
    return [
        (
            f.ctx_id,
            parent,
            f.names[-1],
            f.path[-1],
            f.values if f.has_values else None,
            f.depth,
            started,
            seconds,
            inner,
        )
        for f, parent, started, seconds, inner in records
    ]


class WriterProcess:
    """The pipe to a `flor_flows.record.writer` process, shared by this process's runs in turn:
    a spare one handed over (`spare`), else one started now."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.process: subprocess.Popen[bytes] | spare.Adopted = (
            spare.hand_over()
            or subprocess.Popen(
                [sys.executable, "-m", "flor_flows.record.writer"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
        )
        self.listener: Callable[[tuple[Any, ...]], None] = lambda message: None
        self.lock = threading.Lock()
        threading.Thread(target=self._read, name="flor-flows-reader", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = pickle.load(self.process.stdout)
            except (EOFError, OSError):
                self.listener(("closed",))
                return
            self.listener(message)

    def send(self, message: tuple[Any, ...]) -> None:
        """Pickle a message down the pipe to the writer, flushed at once."""
        pickle.dump(message, self.process.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        self.process.stdin.flush()

    def usable(self) -> bool:
        """Alive and ours (a forked child must not write into its parent's pipe)."""
        return self.pid == os.getpid() and self.process.poll() is None


_shared: dict[str, WriterProcess] = {}
_shared_lock = threading.Lock()


def writer_process() -> WriterProcess:
    """This process's writer, started on first use and again if it died."""
    with _shared_lock:
        writer = _shared.get("writer")
        if writer is None or not writer.usable():
            writer = _shared["writer"] = WriterProcess()
        return writer


class Buffer:
    """Queues of pending records of one run, streamed to the writer process."""

    MAX_PENDING = 50_000  # log records held before the logging thread sends them itself
    CHUNK = 20_000  # records per message, bounding the memory one send needs

    def __init__(
        self, context: RunContext, settings: Settings, entry_script: str | None, pid: int
    ) -> None:
        self.logs: deque[tuple[Any, ...]] = deque()
        self.contexts: deque[tuple[Any, ...]] = deque()
        self.checkpoints: deque[dict[str, Any]] = deque()
        self.data: deque[dict[str, Any]] = deque()
        self.checks: deque[tuple[Any, ...]] = deque()  # replay: values to compare, not store
        self.divergences: deque[str] = deque()  # replay: why its values cannot be trusted
        self.args: dict[str, Any] | None = None  # the latest args, when they changed
        self.info: dict[str, Any] = {}
        self.error: errors.FlorError | None = None
        self._send_lock = threading.Lock()
        self._ready = threading.Event()
        self._replies: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._stop = threading.Event()
        self._session = (context, settings, entry_script, pid)
        self._seq = 0
        self._unacked: deque[tuple[int, tuple[Any, ...]]] = deque()  # batches not written yet
        self._lost = False  # the writer process died: start another before sending
        self.restarts = 0
        self._writer = writer_process()
        self._writer.listener = self._on_message
        self.forked = isinstance(self._writer.process, spare.Adopted)  # handed a spare writer
        self._send(("start", *self._session))
        self._flusher = threading.Thread(
            target=self._flush_loop, name="flor-flows-flush", daemon=True
        )
        self._flusher.start()

    # -- background threads -------------------------------------------------------------
    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ack":
            while self._unacked and self._unacked[0][0] <= message[1]:
                self._unacked.popleft()
            return
        if kind == "ready":
            self.info = self.info or message[1]  # a resumed writer's answer changes nothing
            self._ready.set()
            return
        if kind == "error":
            self.error = _error(message[1], message[2])
        elif kind == "closed" and self.error is None:
            if self._ready.is_set():
                self._lost = True  # the next send starts another writer
            else:
                self.error = errors.StoreError("the flor-flows writer process exited")
        if kind in ("error", "closed"):
            self._ready.set()
        self._replies.put(message)

    def _flush_loop(self) -> None:
        while not self._stop.wait(1.0):
            if self.error is not None:
                return
            try:
                self.flush()
            except errors.FlorError as exc:
                self.error = exc
                return

    # -- sending ---------------------------------------------------------------------------
    def _send(self, message: tuple[Any, ...]) -> None:
        try:
            self._writer.send(message)
        except (BrokenPipeError, OSError) as exc:
            if not self._ready.is_set():
                raise self.error or errors.StoreError(
                    f"the flor-flows writer is gone: {exc}"
                ) from exc
            self._lost = True  # what it did not acknowledge goes to the next writer

    def _send_batch(self, payload: tuple[Any, ...]) -> None:
        self._seq += 1
        message = ("batch", self._seq, *payload)
        self._unacked.append((self._seq, message))
        self._send(message)

    def _restart(self) -> None:
        """Start a new writer for this run and send it the batches the lost one did not
        acknowledge (it skips any the lost one wrote after all)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._writer.process.wait(timeout=5)
        self.restarts += 1
        while not self._replies.empty():  # the lost writer's "closed"
            self._replies.get_nowait()
        self._lost = False
        context, *rest = self._session
        if context.replay is not None:  # the same replay, not a new one
            spec = dataclasses.replace(context.replay, replay_id=self.info.get("replay_id"))
            context = dataclasses.replace(context, replay=spec)
        self._writer = writer_process()
        self._writer.listener = self._on_message
        self._send(("resume", context, *rest))
        for _, message in list(self._unacked):
            self._send(message)

    @staticmethod
    def take(pending: deque, limit: int | None = None) -> list:
        """Pop up to `limit` records (default: all there now; later appends wait their turn)."""
        count = len(pending) if limit is None else min(limit, len(pending))
        return [pending.popleft() for _ in range(count)]

    def flush(self) -> None:
        """Send everything queued now to the writer process."""
        with self._send_lock:
            if self._lost:
                self._restart()
            count = len(self.logs)
            while count > self.CHUNK:
                chunk = _logs(self.take(self.logs, self.CHUNK))
                self._send_batch((chunk, [], [], [], None, [], []))
                count -= self.CHUNK
            args, self.args = self.args, None
            batch = (
                _logs(self.take(self.logs, count)),
                _contexts(self.take(self.contexts)),
                self.take(self.checkpoints),
                self.take(self.data),
                args,
                _logs(self.take(self.checks)),
                self.take(self.divergences),
            )
            if any(batch) or args is not None:
                self._send_batch(batch)

    # -- synchronisation -------------------------------------------------------------------
    def check(self) -> None:
        """Raise the error the writer reported, if any: the run must not go on unrecorded."""
        if self.error is not None:
            raise self.error

    def wait_ready(self) -> dict[str, Any]:
        """What the writer reported once the store was open (raises if opening failed)."""
        self._ready.wait()
        self.check()
        return self.info

    def _request(self, message: tuple[Any, ...], answer: str) -> tuple[Any, ...]:
        self.wait_ready()
        for _ in range(3):  # a writer lost meanwhile is replaced and asked again
            self.flush()
            with self._send_lock:
                self._send(message)
            reply = self._replies.get()
            if reply[0] == answer:
                return reply
            if reply[0] != "closed":
                self.check()
                raise errors.StoreError(f"unexpected reply from the flor-flows writer: {reply[0]}")
            self._lost = True
        raise errors.StoreError("the flor-flows writer process exited three times in a row")

    def sync(self) -> None:
        """Block until everything sent so far is in the store (or kept for it)."""
        self._request(("sync",), "synced")

    def close(
        self, status: str, error: str | None, measures: tuple[Any, ...] | None = None
    ) -> str | None:
        """Send what is left and record the outcome (with a replay's `replay_loop.Measures`);
        the writer stays for the next run.

        Returns the writer's note when the store could not take the end of the run. The
        writer process exits by itself when this process ends and the pipe closes.
        """
        self._stop.set()
        self._flusher.join()
        return self._request(("finish", status, error, measures), "finished")[1]
