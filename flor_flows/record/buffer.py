"""A background writer: records queue in memory and reach the store at least once a second."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any


class Buffer:
    """Thread-safe queues of pending records, drained by one background thread.

    `start` runs once in the thread before the first drain (it opens the store); an error
    there or in `drain` is kept and re-raised in the caller's thread by `check`.
    """

    MAX_PENDING = 50_000  # log records held before the logging thread writes them itself
    CHUNK = 20_000  # rows per INSERT, bounding the memory one write needs

    def __init__(
        self,
        start: Callable[[], None],
        drain: Callable[[Buffer], None],
        interval: float = 1.0,
    ) -> None:
        self.logs: deque[tuple[Any, ...]] = deque()
        self.contexts: deque[tuple[Any, ...]] = deque()
        self.checkpoints: deque[dict[str, Any]] = deque()
        self._start, self._drain, self._interval = start, drain, interval
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flor-flows-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._start()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by check()
            self.error = exc
            return
        finally:
            self._ready.set()
        while not self._stop.wait(self._interval):
            if not self._flush_safely():
                return

    def _flush_safely(self) -> bool:
        try:
            self.flush()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by check()
            self.error = exc
            return False
        return True

    @staticmethod
    def take(queue: deque, limit: int | None = None) -> list:
        """Pop up to `limit` records (default: all there now; later appends wait their turn)."""
        count = len(queue) if limit is None else min(limit, len(queue))
        return [queue.popleft() for _ in range(count)]

    def flush(self) -> None:
        with self._lock:
            self._drain(self)

    def flush_now(self) -> None:
        """Write from the calling thread once the store is open (used for back-pressure)."""
        self.wait_ready()
        self.flush()

    def wait_ready(self) -> None:
        """Block until the store is open; raise its error if opening failed."""
        self._ready.wait()
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        """Stop the thread and write everything still queued."""
        self._stop.set()
        self._thread.join()
        self.check()
        self.flush()
