"""One training run launched from outside its script: version, run, account for the outcome.

The training flow calls these as tasks: `snapshot_code` and `register_batches` version the
code and the data before anything runs (a broken repository or a bad URI fails here, fast),
`run` executes the script in a child interpreter under the record API with everything it
needs in its run context, and `account` makes sure the store tells the truth about the
outcome even when the script died before it could say anything itself.

Every script `run` starts (training runs and replays alike) is registered here until it
ends, so a launcher that is told to stop can stop them all (`stop_children`) and tell a
stopped run from a failed one (`stopping`). A child also gets SIGTERM when the thread that
started it dies, even by SIGKILL (Linux), so a killed launcher never leaves a script running.
A caller may start the script another way (`spawn`: the replay engine forks replays from a
process that imported the script's libraries once); whatever it returns is a `Child`.

Every launch of this process is listed too (`launches`, the latest few), with whether it has
settled (`settle`): from then on the store has the run's last word and whatever is left of
its flow run only informs Prefect, so a launcher that loses its Prefect API can stop there.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from flor_flows.config import STATE_DIR, Settings, load_settings
from flor_flows.errors import DataError, RequestError, StoreError, TrainingFailed
from flor_flows.record.context import RunContext
from flor_flows.record.run import new_uid
from flor_flows.store import open_store
from flor_flows.training.request import TrainingRequest
from flor_flows.versioning import code, data
from flor_flows.versioning.code import CodeVersion
from flor_flows.versioning.data import Batch

STDERR_TAIL_LINES = 40
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOPPING_READ_GRACE = 0.5  # seconds to read a stopped script's last output lines

stopping = threading.Event()
"""Set once a stop of this process's scripts was requested (`stop_children`): from then on
`run` starts nothing, and a script that ends is one that was stopped, not one that failed."""


class Child(Protocol):
    """A running script as `run` follows and stops it: what `subprocess.Popen` offers."""

    pid: int
    stdout: IO[str] | None
    stderr: IO[str] | None
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def terminate(self) -> None: ...
    def kill(self) -> None: ...


Spawn = Callable[[list[str], Path, dict[str, str]], Child | None]
"""Starts `[sys.executable, script, *argv]` in a directory with an environment, its stdout
and stderr piped as text; None when it cannot (`run` then starts a fresh interpreter)."""

_children: set[Child] = set()
_children_lock = threading.Lock()
RECENT_LAUNCHES = 64
_launches: deque[tuple[Launch, threading.Event]] = deque(maxlen=RECENT_LAUNCHES)


@dataclass(frozen=True)
class Launch:
    """Where and as what a training run will run; nothing is versioned or started yet."""

    run_uid: str
    settings: Settings
    project: Path  # the script's working directory
    script: Path
    entry_script: str  # relative to the repository root, as the store records it
    argv: tuple[str, ...] = ()  # the script's own command-line arguments


@dataclass(frozen=True)
class Outcome:
    run_uid: str
    returncode: int
    seconds: float
    stderr_tail: str


def new_launch(request: TrainingRequest) -> Launch:
    """Resolve the project, its settings and the script; assign the run its uid."""
    project = Path(request.project).expanduser().resolve()
    script = (project / request.script).resolve()
    if not script.is_file():
        raise RequestError(f"training script {request.script!r} not found in {project}")
    settings = load_settings(project)
    entry_script = os.path.relpath(script, settings.root)
    launch = Launch(new_uid(), settings, project, script, entry_script, tuple(request.argv))
    _launches.append((launch, threading.Event()))
    return launch


def settle(launch: Launch) -> None:
    """Mark `launch` settled: the store has its run's last word (or it never got a run)."""
    for known, settled in list(_launches):
        if known is launch:
            settled.set()


def launches() -> list[tuple[Launch, bool]]:
    """This process's latest launches, oldest first, each with whether it has settled."""
    return [(known, settled.is_set()) for known, settled in list(_launches)]


def snapshot_code(launch: Launch) -> CodeVersion:
    """Commit the project's source as the run will execute it (a hidden ref, see `code`)."""
    return code.snapshot(launch.settings.root, launch.run_uid, launch.script)


def register_batches(launch: Launch, batches: dict[str, str]) -> dict[str, Batch]:
    """Hash and copy each batch (relative paths are the project's) before the run starts."""
    cache = launch.settings.root / STATE_DIR / "cache"
    resolved = {name: data.resolve(launch.project, uri) for name, uri in batches.items()}
    options = launch.settings.fs_options()
    for name, uri in resolved.items():
        if not launch.settings.batch_allowed(uri):
            raise DataError(
                f"batch {name}={uri!r} is outside the project and the configured batch roots: "
                "a training flow reads batches only there (set batch_roots in "
                "[tool.flor-flows] or FLOR_FLOWS_BATCH_ROOTS to allow more)"
            )
    return {
        name: data.version(name, uri, launch.settings.data_url, cache, options)
        for name, uri in resolved.items()
    }


def warm_start_from(launch: Launch) -> str | None:
    """The newest completed, checkpointed run of the same script, if any."""
    store = open_store(launch.settings.store_url)
    return store.latest_checkpointed_run(launch.settings.project_name, launch.entry_script)


def context_of(
    launch: Launch,
    request: TrainingRequest,
    code_version: CodeVersion,
    batches: dict[str, Batch],
    resumed_from: str | None,
    flow_run_id: str | None,
) -> RunContext:
    """The run context handed to the script: ids, locations, args and the versioning done."""
    settings = launch.settings
    return RunContext(
        run_uid=launch.run_uid,
        store_url=settings.store_url,
        checkpoint_url=settings.checkpoint_url,
        data_url=settings.data_url,
        storage_options=settings.storage_options or None,
        flow_run_id=flow_run_id,
        resumed_from=resumed_from,
        kwargs=dict(request.args),
        code_version=dataclasses.asdict(code_version),
        registered={name: dataclasses.asdict(b) for name, b in batches.items()},
    )


def child_env() -> dict[str, str]:
    """The environment of a script `run` starts, less its run context: this process's own
    without flor-flows' settings (the context carries them), output unbuffered."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
    return env | {"PYTHONUNBUFFERED": "1"}


def run(
    launch: Launch,
    context: RunContext,
    on_output: Callable[[str], Any] = print,
    spawn: Spawn | None = None,
) -> Outcome:
    """Run the script with this interpreter; its output lines go to `on_output` as they come.

    The command is `[sys.executable, script, *launch.argv]` in `launch.project`, started by
    `spawn` if given (and able), else as a fresh interpreter. Once a stop was requested
    (`stopping`), nothing starts: the outcome is that of a script stopped by SIGTERM before
    its first line.
    """
    env = child_env() | context.to_env()
    command = [sys.executable, str(launch.script), *launch.argv]
    start = time.perf_counter()
    with _children_lock:  # a stop either sees this child or prevents it
        if stopping.is_set():
            return Outcome(
                launch.run_uid, -signal.SIGTERM, 0.0, "not started: a stop was requested"
            )
        proc = spawn(command, launch.project, env) if spawn is not None else None
        if proc is None:
            proc = subprocess.Popen(
                command,
                cwd=launch.project,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                preexec_fn=_die_with_parent(os.getpid()),
            )
        _children.add(proc)
    try:
        return _follow(launch, proc, on_output, start)
    finally:
        with _children_lock:
            _children.discard(proc)


def _follow(launch: Launch, proc: Child, on_output: Callable[[str], Any], start: float) -> Outcome:
    """Pump the script's output to `on_output` until it ends; stop it if we are interrupted."""
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    tail_lock = threading.Lock()  # a reader may outlive `_follow` (see below)

    def pump(stream: Any, keep: deque[str] | None) -> None:
        for line in stream:
            line = line.rstrip("\n")
            if keep is not None:
                with tail_lock:
                    keep.append(line)
            on_output(line)

    readers = [
        threading.Thread(target=pump, args=(proc.stdout, None), daemon=True),
        threading.Thread(target=pump, args=(proc.stderr, tail), daemon=True),
    ]
    for reader in readers:
        reader.start()
    try:
        returncode = proc.wait()
    except BaseException:  # cancelled or interrupted: stop the script too, then re-raise
        _stop(proc)
        raise
    # Read to EOF: the script's writer process holds its stderr open until it has stored
    # everything. Once stopping, not for long: the launcher has seconds left, not minutes.
    for reader in readers:
        reader.join(STOPPING_READ_GRACE if stopping.is_set() else None)
    with tail_lock:
        stderr_tail = "\n".join(tail)
    return Outcome(launch.run_uid, returncode, time.perf_counter() - start, stderr_tail)


def _stop(proc: Child, grace: float = 30.0) -> None:
    """SIGTERM (the run records itself failed and flushes), SIGKILL if it lingers."""
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def stop_children(grace: float = 5.0) -> int:
    """Stop every script `run` started and start no more; returns how many were running.

    Sets `stopping`, sends each running script SIGTERM (it records itself failed and flushes
    what it logged), and SIGKILLs those still running after `grace` seconds.
    """
    with _children_lock:
        stopping.set()
        running = [proc for proc in _children if proc.poll() is None]
    for proc in running:
        proc.terminate()
    deadline = time.monotonic() + grace
    for proc in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    for proc in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # SIGKILL is not refused; this only reaps
    return len(running)


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux (loaded once, here: nothing is imported after a fork); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` giving the child SIGTERM when its parent dies (Linux); else None.

    The kernel sends it when the *thread* that started the child ends; `run`'s thread waits
    for the child, so in practice that is when the process ends, SIGKILL included.
    """
    if _PRCTL is None:
        return None
    prctl, sigterm = _PRCTL, int(signal.SIGTERM)

    def preexec() -> None:  # between fork and exec: no imports, no locks
        prctl(PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != parent:  # the parent died before prctl took hold
            os.kill(os.getpid(), sigterm)

    return preexec


def account(launch: Launch, context: RunContext, outcome: Outcome) -> None:
    """Make the store agree with the outcome; raise `TrainingFailed` if the script failed.

    The record API marks its own run failed on an exception, a signal or a vanished
    process. A script that died before its first flor call has no run yet: it gets one,
    failed, with its code version, batches and error, so the failure is in the history too.
    """
    store = open_store(launch.settings.store_url)
    try:
        status = store.run_record(launch.run_uid)["status"]
    except StoreError:
        status = None
    if outcome.returncode == 0:
        if status is None:
            raise TrainingFailed(
                f"{launch.entry_script} exited cleanly but recorded nothing: "
                "does it import flor_flows and call its API?"
            )
        return
    message = (
        f"{launch.entry_script} exited with code {outcome.returncode}; "
        f"the last lines of its stderr:\n{outcome.stderr_tail}"
    )
    if status is None:
        settings = launch.settings
        project_id = store.project_id(settings.project_name, settings.root)
        run_id = store.start_run(
            uid=launch.run_uid,
            project_id=project_id,
            entry_script=launch.entry_script,
            prefect_flow_run_id=context.flow_run_id,
            resumed_from=context.resumed_from,
        )
        store.set_code_version(run_id, project_id, CodeVersion(**context.code_version))
        for fields in context.registered.values():
            store.add_data_batch(run_id, **{k: v for k, v in fields.items() if k != "local_path"})
        store.finish_run(run_id, "failed", message)
    elif status == "running":
        store.finish_run(store.run_id(launch.run_uid), "failed", message)
    raise TrainingFailed(message)
