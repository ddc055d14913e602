"""Run a script as a child process and follow it: start, output, stop, never orphaned.

Training runs (`training.launch`) and replays (`replay.engine`) both run their script this
way: `run` executes `[sys.executable, script, *argv]` in the script's directory with its run
context in the environment, passes its output lines on as they come and returns how it
ended (`Outcome`). It lives below both so that neither imports the other.

Every script `run` starts is registered here until it ends, so a launcher that is told to
stop can stop them all (`stop_children`) and tell a stopped run from a failed one
(`stopping`). A child also gets SIGTERM when the thread that started it dies, even by
SIGKILL (Linux), so a killed launcher never leaves a script running. A caller may start the
script another way (`spawn`: the replay engine forks replays from a process that imported
the script's libraries once); whatever it returns is a `Child`.
"""

from __future__ import annotations

import contextlib
import ctypes
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

from flor_flows.config import Settings
from flor_flows.record.context import RunContext

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

    def poll(self) -> int | None:
        """As subprocess.Popen.poll."""

    def wait(self, timeout: float | None = None) -> int:
        """As subprocess.Popen.wait."""

    def send_signal(self, sig: int) -> None:
        """As subprocess.Popen.send_signal."""

    def terminate(self) -> None:
        """As subprocess.Popen.terminate."""

    def kill(self) -> None:
        """As subprocess.Popen.kill."""


Spawn = Callable[[list[str], Path, dict[str, str]], Child | None]
"""Starts `[sys.executable, script, *argv]` in a directory with an environment, its stdout
and stderr piped as text; None when it cannot (`run` then starts a fresh interpreter)."""

_children: set[Child] = set()
_children_lock = threading.Lock()


@dataclass(frozen=True)
class Launch:
    """Where and as what a script will run (a training run, or a replay of one)."""

    run_uid: str
    settings: Settings
    project: Path  # the script's working directory
    script: Path
    entry_script: str  # relative to the repository root, as the store records it
    argv: tuple[str, ...] = ()  # the script's own command-line arguments


@dataclass(frozen=True)
class Outcome:
    """How a script `run` started ended: its exit status, wall time and last stderr lines."""

    run_uid: str
    returncode: int
    seconds: float
    stderr_tail: str


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
