"""Ctrl-C and SIGTERM during a flow command: stop its scripts, record what they did, exit now."""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def stoppable(call: Callable[[], T], stopped: str) -> T:
    """`call()` (a flow run) in a thread, this (the main) thread waiting: SIGINT or SIGTERM
    stops its scripts and exits at once (see `_stop_and_exit`), saying `stopped` (a format
    string of `n`, how many scripts were running).

    Running the flow off the main thread keeps Prefect from installing its own SIGTERM
    handler (it can only do so in the main thread), whose crash handling takes seconds
    and leaves the replays running meanwhile.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="flor-flows-flow", daemon=True)
    handler = functools.partial(_stop_and_exit, worker=worker, stopped=stopped)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# Seconds after the signal, all within 5: the replays get until STOP_CHILDREN_GRACE to
# record themselves stopped (then SIGKILL), the flow until STOP_FLOW_UNTIL to wind down,
# the temporary Prefect server until STOP_SERVER_UNTIL to shut down (then SIGKILL).
STOP_CHILDREN_GRACE = 2.0


STOP_FLOW_UNTIL = 3.0


STOP_SERVER_UNTIL = 3.8


def _stop_and_exit(signum: int, _frame: object, worker: threading.Thread, stopped: str) -> None:
    """Stop every script (replays, training) and this process's temporary Prefect server;
    exit 128 + signum."""
    from flor_flows import children

    if children.stopping.is_set():  # a second signal: the first one is already on it
        return
    start = time.monotonic()
    running = children.stop_children(grace=STOP_CHILDREN_GRACE)
    _cancel_backfill_items()
    # The flow sees its replays end as stopped (children.stopping), starts no more, and
    # records that; give it the time that is left, not more.
    worker.join(max(0.0, start + STOP_FLOW_UNTIL - time.monotonic()))
    _stop_temporary_servers(start + STOP_SERVER_UNTIL)
    print(f"flor-flows: interrupted: {stopped.format(n=running)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit, not sys.exit: an orderly exit would wait for Prefect's teardown (its
    # atexit hooks stop the temporary server with a 5 s wait, flush logs and events to an
    # API that may be gone, and join the flow's non-daemon worker threads), which can take
    # far longer than a user waits after Ctrl-C. Everything worth keeping is already in the
    # store: the replays flushed their values before exiting, and our output is flushed.
    os._exit(128 + signum)


def _cancel_backfill_items() -> None:
    """Mark the runs this process's backfill holds cancelled: the same request run again
    resumes them."""
    from flor_flows.replay.backfill import LEASES
    from flor_flows.store import open_store

    for store_url, backfill_id, holder in list(LEASES):
        open_store(store_url).cancel_leased(backfill_id, holder)


def _stop_temporary_servers(deadline: float) -> None:
    """Stop the ephemeral Prefect API server(s) this process started (PREFECT_API_URL unset).

    Prefect keeps them in `SubprocessASGIServer._instances` (by port) and stops them at
    exit with a 5 s grace; here the grace ends at `deadline`, then SIGKILL.
    """
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:  # never imported: no temporary server was started
        return
    servers = list(server_module.SubprocessASGIServer._instances.values())
    running = [s.server_process for s in servers if s.server_process is not None]
    running = [proc for proc in running if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)


def exit_now(code: int) -> None:
    """Flush and exit at once, leaving a flow that lost its Prefect API behind.

    os._exit, not sys.exit: the flow is still inside Prefect's client retries (about a
    minute per request), and an orderly exit would wait for them, then for Prefect's atexit
    hooks flushing logs and events to the API that is gone. The store already has
    everything the flow's work recorded.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
