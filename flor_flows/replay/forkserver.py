"""Pay a script's imports once per code version on a worker, not once per replay.

While a `scope` is open (a backfill), replays fork from a fork server (`forkserver_main`): a
process started as a fresh `python SCRIPT` would be (same interpreter, environment,
`sys.path`) that imported the installed libraries the script imports (torch, sklearn, ...)
once, and nothing else. One server serves every code version whose script imports the same
modules in the same environment (`Key`), unless a file beside a version's script would shadow
a module the server imported: that version's replays start fresh. A forked replay runs the
script from its first line in a process of its own, with its own working directory, pipes,
environment, argv and exit status, as a fresh interpreter would; `children.run` follows and
stops it through `Forked`, as it does a `subprocess.Popen`.

A server that cannot start, refuses (an import fails, or its libraries keep threads running
across a fork) or dies leaves its replays on fresh processes, said once in the replay's
output: the optimisation never fails a replay. Servers end with the last scope, when evicted
(at most MAX_SERVERS live, idle ones first), or with this process (they watch it); their
children end with them. `FLOR_FLOWS_REPLAY_FORK=0` turns this off.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flor_flows.children import Spawn
from flor_flows.replay import forkserver_main

ENV_VAR = "FLOR_FLOWS_REPLAY_FORK"
PROGRAM = Path(__file__).with_name("forkserver_main.py")
MAX_SERVERS = 4  # each holds its libraries in memory (torch + sklearn: about 340 MB)
START_TIMEOUT = 600.0  # seconds a server may take to import the script's libraries
REQUEST_TIMEOUT = 10.0  # seconds a server may take to fork a replay
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")


@dataclass(frozen=True)
class Key:
    """What decides the libraries a server imports: one server serves one key."""

    imports: tuple[str, ...]  # what the script imports at module level, less the stdlib
    env: tuple[tuple[str, str], ...]


class Forked:
    """A replay forked by a fork server, as `children.run` uses a `subprocess.Popen`.

    The server reports the exit status on the request's connection; `pidfd` names the
    process itself, so a signal never reaches another process that reused its pid.
    """

    def __init__(
        self,
        args: list[str],
        pid: int,
        pidfd: int,
        conn: socket.socket,
        pipes: tuple[int, int],
        on_exit: Callable[[], None],
        received: bytes = b"",  # what the connection brought after the pid
    ) -> None:
        self.args, self.pid = args, pid
        encoding = io.text_encoding(None)  # as `subprocess.Popen(text=True)` decodes
        self.stdout: io.TextIOWrapper | None = open(pipes[0], encoding=encoding)  # noqa: SIM115
        self.stderr: io.TextIOWrapper | None = open(pipes[1], encoding=encoding)  # noqa: SIM115
        self.returncode: int | None = None
        self._pidfd = pidfd
        self._lock = threading.Lock()
        self._ended = threading.Event()
        watcher = threading.Thread(
            target=self._watch, args=(conn, received, on_exit), name=f"forked-{pid}", daemon=True
        )
        watcher.start()

    def _watch(self, conn: socket.socket, status: bytes, on_exit: Callable[[], None]) -> None:
        """Wait for the exit status. Without one the server died, and the child got SIGTERM
        (its parent-death signal): wait until it is gone, and say it was terminated."""
        conn.settimeout(None)
        with conn:
            while not status.endswith(b"\n") and (chunk := conn.recv(64)):
                status += chunk
        if not status:
            select.select([self._pidfd], [], [])  # readable once the process has ended
        with self._lock:
            self.returncode = int(status) if status else -signal.SIGTERM
            os.close(self._pidfd)
        self._ended.set()
        on_exit()

    def poll(self) -> int | None:
        """As subprocess.Popen.poll."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """As subprocess.Popen.wait."""
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """As subprocess.Popen.send_signal."""
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    signal.pidfd_send_signal(self._pidfd, sig)

    def terminate(self) -> None:
        """As subprocess.Popen.terminate."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """As subprocess.Popen.kill."""
        self.send_signal(signal.SIGKILL)


@dataclass
class Server:
    """A running fork server, ready to fork replays of `key`."""

    key: Key
    process: subprocess.Popen[bytes]
    directory: str  # private, holds the socket
    modules: list[str]
    busy: int = 0  # replays running
    used: float = field(default_factory=time.monotonic)
    failed: str | None = None  # why it stopped answering

    def alive(self) -> bool:
        """Whether the server is still running and answering."""
        return self.failed is None and self.process.poll() is None

    def spawn(self, command: list[str], cwd: Path, env: dict[str, str]) -> Forked | str | None:
        """Fork `command` (as a `children.Spawn` would) in `cwd`; why the server refused it,
        or None if it did not answer."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.connect(os.path.join(self.directory, "socket"))
            socket.send_fds(conn, [b"R"], [out_w, err_w])
            request = {"script": command[1], "cwd": str(cwd), "argv": command[2:], "env": env}
            conn.sendall(json.dumps(request).encode() + b"\n")
            reply, fds, _, _ = socket.recv_fds(conn, 4096, 1)
            head, _, status = reply.partition(b"\n")
            if head.startswith(b"refused ") and not fds:
                for fd in (out_r, err_r):
                    os.close(fd)
                conn.close()
                return head.removeprefix(b"refused ").decode(errors="replace")
            pid, (pidfd,) = int(head), fds
        except (OSError, ValueError) as exc:
            self.failed = f"it did not answer: {exc}"
            for fd in (out_r, err_r, *fds):
                os.close(fd)
            conn.close()
            return None
        finally:
            os.close(out_w)
            os.close(err_w)
        with _lock:
            self.busy += 1
            self.used = time.monotonic()
        return Forked(command, pid, pidfd, conn, (out_r, err_r), self._ended, status)

    def _ended(self) -> None:
        with _lock:
            self.busy -= 1

    def stop(self) -> None:
        """End the server (and any replay it still runs) and remove its socket."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


_lock = threading.Lock()
_scopes = [0]  # open scopes: servers live while there is one
_servers: dict[Key, Server] = {}
_refused: set[Key | str] = set()  # keys and labels whose replays start fresh (said once)
_announced: set[str] = set()  # labels whose forking was said
_starting: dict[Key, threading.Lock] = {}  # one start per key, the others wait for it


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """While open, replays may fork from fork servers; the last one to close stops them."""
    with _lock:
        _scopes[0] += 1
    try:
        yield
    finally:
        with _lock:
            _scopes[0] -= 1
            ending = list(_servers.values()) if not _scopes[0] else []
            if not _scopes[0]:
                _servers.clear()
                _refused.clear()
                _announced.clear()
                _starting.clear()
        for server in ending:
            server.stop()


def spawner(
    label: str,
    script: Path,
    cwd: Path,
    roots: Iterable[Path],
    env: dict[str, str],
    on_output: Callable[[str], Any],
) -> Spawn | None:
    """How to start a replay of `script` in `cwd` with `env` (and its run context): a fork
    of the server for them, started now if need be; None for a fresh process. `roots` hold
    the project's own code, which a server never imports."""
    if not AVAILABLE or os.environ.get(ENV_VAR, "1").strip() == "0":
        return None
    roots = tuple(str(root) for root in roots)
    try:
        names = forkserver_main.imported_names(str(script))
    except (OSError, SyntaxError, ValueError) as exc:
        _refuse(label, label, f"the script does not parse: {exc}", on_output)
        return None
    imports = (n for n in names if n.partition(".")[0] not in sys.stdlib_module_names)
    key = Key(tuple(dict.fromkeys(imports)), tuple(sorted(env.items())))
    with _lock:
        if not _scopes[0] or key in _refused or label in _refused:
            return None
        starting = _starting.setdefault(key, threading.Lock())
    with starting:
        with _lock:
            server = _servers.get(key)
            refused = key in _refused
        if refused:
            return None
        if server is not None and not server.alive():  # it died since
            why = server.failed or f"it exited with code {server.process.returncode}"
            _refuse(key, label, f"its fork server ended ({why})", on_output)
            return None
        if server is None:
            server = _started(key, label, script, cwd, roots, on_output)
            if server is None:
                return None

    def spawn(command: list[str], cwd: Path, env: dict[str, str]) -> Forked | None:
        """Fork the replay; a refusal (said once) or no answer leaves it a fresh process."""
        forked = server.spawn(command, cwd, env)
        if isinstance(forked, str):
            _refuse(label, label, forked, on_output)
            return None
        if forked is not None and label not in _announced:
            _announced.add(label)
            libraries = ", ".join(server.modules) or "no library"
            on_output(f"flor-flows: replays of {label} fork from one process that imported "
                      f"{libraries}")  # fmt: skip
        return forked

    return spawn


def _started(
    key: Key,
    label: str,
    script: Path,
    cwd: Path,
    roots: tuple[str, ...],
    on_output: Callable[[str], Any],
) -> Server | None:
    """A server for `key`, started now from `script` in `cwd` and registered; None (said
    once) if it cannot start, or every server is busy, or the scope closed meanwhile."""
    if not _make_room():
        return None  # every server is busy: this replay starts fresh, the next may not
    started = _start(key, script, cwd, roots)
    if isinstance(started, str):
        _refuse(key, label, started, on_output)
        return None
    with _lock:
        if not _scopes[0]:  # the scope closed while the server started
            ending: Server | None = started
        else:
            ending, _servers[key] = None, started
    if ending is not None:
        ending.stop()
        return None
    return started


def _refuse(what: Key | str, label: str, why: str, on_output: Callable[[str], Any]) -> None:
    """From now on the replays of `what` (a key, or a label) start fresh processes. A server
    that stopped answering is left to the scope's end: replays it forked may still run."""
    with _lock:
        _refused.add(what)
    on_output(f"flor-flows: replays of {label} start fresh processes: {why}")


def _make_room() -> bool:
    """Stop the least recently used idle servers beyond MAX_SERVERS - 1; False if all busy."""
    ending = []
    with _lock:
        live = sorted(_servers.values(), key=lambda s: s.used)
        while len(live) >= MAX_SERVERS:
            idle = next((s for s in live if s.busy == 0), None)
            if idle is None:
                break
            live.remove(idle)
            ending.append(_servers.pop(idle.key))
    for server in ending:
        server.stop()
    return len(live) < MAX_SERVERS


def _start(key: Key, script: Path, cwd: Path, roots: tuple[str, ...]) -> Server | str:
    """A fork server for `key`, started as `python script` in `cwd` would be, ready; else
    why there is none."""
    directory = tempfile.mkdtemp(prefix="flor-flows-fork-")
    command = [
        sys.executable,
        str(PROGRAM),
        os.path.join(directory, "socket"),
        str(script),
        json.dumps(roots),
        str(os.getpid()),
    ]
    process = subprocess.Popen(
        command, cwd=cwd, env=dict(key.env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    with process.stdout:
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if ready else b""
    state = json.loads(line) if line.startswith(b"{") else {"ready": False}
    if state["ready"]:
        return Server(key, process, directory, state["modules"])
    if not ready:
        process.kill()
    code = process.wait()
    shutil.rmtree(directory, ignore_errors=True)
    if "why" in state:
        return str(state["why"])
    if not ready:
        return f"its fork server was not ready after {START_TIMEOUT:.0f} s"
    return f"its fork server exited with code {code} before it was ready"
