"""The training side of a run's writes: in-memory queues, streamed to the writer process.

Records wait in queues that the training thread appends to; a background thread pickles
them down a pipe to `flor_flows.record.writer` at least once a second. The store, git and
SQL live in that process, so training pays only for the append and the pickling.
"""

from __future__ import annotations

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
    """The pipe to a `flor_flows.record.writer` process, shared by this process's runs in turn."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "flor_flows.record.writer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
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
        self._writer = writer_process()
        self._writer.listener = self._on_message
        self._send(("start", context, settings, entry_script, pid))
        self._flusher = threading.Thread(
            target=self._flush_loop, name="flor-flows-flush", daemon=True
        )
        self._flusher.start()

    # -- background threads -------------------------------------------------------------
    def _on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            self.info = message[1]
            self._ready.set()
            return
        if kind == "error":
            self.error = _error(message[1], message[2])
        elif kind == "closed" and self.error is None and not self._stop.is_set():
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
            raise self.error or errors.StoreError(f"the flor-flows writer is gone: {exc}") from exc

    @staticmethod
    def take(pending: deque, limit: int | None = None) -> list:
        """Pop up to `limit` records (default: all there now; later appends wait their turn)."""
        count = len(pending) if limit is None else min(limit, len(pending))
        return [pending.popleft() for _ in range(count)]

    def flush(self) -> None:
        """Send everything queued now to the writer process."""
        with self._send_lock:
            count = len(self.logs)
            while count > self.CHUNK:
                chunk = _logs(self.take(self.logs, self.CHUNK))
                self._send(("batch", chunk, [], [], [], None, [], []))
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
                self._send(("batch", *batch))

    # -- synchronisation -------------------------------------------------------------------
    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def wait_ready(self) -> dict[str, Any]:
        """What the writer reported once the store was open (raises if opening failed)."""
        self._ready.wait()
        self.check()
        return self.info

    def _request(self, message: tuple[Any, ...], answer: str) -> None:
        self.wait_ready()
        self.flush()
        with self._send_lock:
            self._send(message)
        reply = self._replies.get()
        if reply[0] != answer:
            self.check()
            raise errors.StoreError(f"unexpected reply from the flor-flows writer: {reply[0]}")

    def sync(self) -> None:
        """Block until everything sent so far is in the store."""
        self._request(("sync",), "synced")

    def close(self, status: str, error: str | None) -> None:
        """Send what is left and record the outcome; the writer stays for the next run.

        The writer process exits by itself when this process ends and the pipe closes.
        """
        self._stop.set()
        self._flusher.join()
        self._request(("finish", status, error), "finished")
