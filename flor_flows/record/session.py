"""The process-wide current run: started by the first API call, ended by `commit` or at exit."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import traceback
from types import TracebackType

from flor_flows.errors import FlorError
from flor_flows.record.context import RunContext
from flor_flows.record.run import Run, entry_script

_lock = threading.Lock()
_state: dict[str, object] = {
    "run": None,
    "context": RunContext(),
    "hooks": False,
    "failed": False,  # the script raised or was terminated (a replay's exit status)
}


def configure(context: RunContext) -> None:
    """Set the context later runs of this process start with (done once at import)."""
    _state["context"] = context


def current() -> Run:
    """The run in progress, started now if there is none."""
    run = _state["run"]
    if run is None or run.finished:
        with _lock:
            run = _state["run"]
            if run is None or run.finished:
                _install_hooks()
                run = Run(_state["context"], entry_script())
                _state["run"] = run
    return run


def active() -> Run | None:
    """The run in progress, if any; unlike `current`, never starts one."""
    run = _state["run"]
    return None if run is None or run.finished else run


def commit() -> None:
    """End the current run (if any); the next API call starts a new one."""
    run = active()
    if run is not None:
        run.commit()


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    _state["failed"] = True
    run = active()
    if run is not None:
        run.failure = "".join(traceback.format_exception(kind, exc, tb))[-4000:]
        if run.replaying and isinstance(exc, FlorError):
            print(_ours(kind, exc, tb), file=sys.stderr, flush=True)
            return
    _previous_excepthook(kind, exc, tb)


def _ours(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> str:
    """flor-flows' own error in a replay, as the frame of the script that called into
    flor-flows and the error's line: its path through flor-flows is no news to the user
    (the whole traceback is in the replay's record, `replays.error`)."""
    frames = traceback.extract_tb(tb)
    ours = [frame.filename.startswith(_PACKAGE) for frame in frames]
    start = next((k for k, own in enumerate(ours) if not own), len(frames))  # past a runner
    end = next((k for k in range(start, len(frames)) if ours[k]), len(frames))  # its call
    where = "".join(traceback.format_list(frames[start:end][-1:]))
    return f"{where}{kind.__module__}.{kind.__qualname__}: {exc}"


def _on_sigterm(signum: int, _frame: object) -> None:
    _state["failed"] = True
    run = active()
    if run is not None:
        run.failure = "terminated by SIGTERM"
    sys.exit(128 + signum)


def _at_exit() -> None:
    run = _state["run"]
    if run is None:
        return
    try:
        run.commit()  # a no-op when the script committed already
    except FlorError as exc:
        what = (
            f"the end of the run was not recorded: {exc} (what it logged before is in the store)"
            if run.buffer.info  # the store had opened the run
            else f"the run was not recorded: {exc}"
        )
        print(f"flor-flows: {what}", file=sys.stderr, flush=True)
        os._exit(1)
    if run.replaying:
        # A replay is done once its values are stored: skip the interpreter's teardown (about
        # 1 s with torch loaded, per replay). Its status is whether the script raised.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1 if _state["failed"] else 0)


_previous_excepthook = sys.excepthook
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _install_hooks() -> None:
    if _state["hooks"]:
        return
    _state["hooks"] = True
    atexit.register(_at_exit)
    sys.excepthook = _excepthook
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)
