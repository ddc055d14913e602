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
children end with them, or when the process that asked for them does.

In the warm process (`keep`) servers outlive the scope instead: the next command's replays of
the same libraries fork from the server an earlier command started, so only the first pays
the imports. A kept server ends after KEPT_IDLE_SECONDS without a replay, with the warm
process, or on the first request after one of the files it imported changed (an upgrade, an
edit): that replay and the next fork from a new server that imports them anew. A command
may start the server its first replay will want while its flow run starts (`prestart`).
`FLOR_FLOWS_REPLAY_FORK=0` turns all this off.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
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
from typing import IO, Any

from flor_flows.children import Spawn
from flor_flows.replay import forkserver_main, importtimes

ENV_VAR = "FLOR_FLOWS_REPLAY_FORK"
PROGRAM = Path(__file__).with_name("forkserver_main.py")
MAX_SERVERS = 4  # each holds its libraries in memory (torch + sklearn: about 340 MB)
START_TIMEOUT = 600.0  # seconds a server may take to import the script's libraries
REQUEST_TIMEOUT = 10.0  # seconds a server may take to fork a replay
KEPT_IDLE_SECONDS = 600.0  # a kept server (`keep`) ends after this long without a replay
AVAILABLE = sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
# What a shell sets per command or directory, and Prefect's settings read at use (a forked
# replay applies its own, `forkserver_main.apply_env`): no library reads them at import,
# so they are not in the key. One server serves `export PREFECT_API_URL=...` and after.
NOT_IN_KEY = frozenset({"PWD", "OLDPWD", "_", "SHLVL", *forkserver_main.AT_USE})


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
    path: str  # its socket
    modules: list[str]
    process: subprocess.Popen[bytes] | None  # None: a kept one an earlier command started
    seconds: float  # its imports took this long: what a replay forked from it skips
    kept: bool = False  # it outlives the scope (`keep`)
    busy: int = 0  # replays running
    used: float = field(default_factory=time.monotonic)
    failed: str | None = None  # why it stopped answering

    def alive(self) -> bool:
        """Whether the server is still running and answering, as far as this process knows."""
        return self.failed is None and (self.process is None or self.process.poll() is None)

    def spawn(
        self, command: list[str], cwd: Path, env: dict[str, str], roots: tuple[str, ...]
    ) -> Forked | str | None:
        """Fork `command` (as a `children.Spawn` would) in `cwd`; why the server refused it,
        or None if it did not answer or retired (`failed` says why)."""
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        fds: list[int] = []
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            conn.connect(self.path)
            socket.send_fds(conn, [b"R"], [out_w, err_w])
            request = {"script": command[1], "cwd": str(cwd), "argv": command[2:], "env": env}
            conn.sendall(json.dumps(request | {"roots": roots}).encode() + b"\n")
            reply, fds, _, _ = socket.recv_fds(conn, 4096, 1)
            head, _, status = reply.partition(b"\n")
            verdict, _, why = head.decode(errors="replace").partition(" ")
            if verdict in ("refused", "retired") and not fds:
                if verdict == "retired":
                    self.failed = why
                for fd in (out_r, err_r):
                    os.close(fd)
                conn.close()
                return why if verdict == "refused" else None
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
        """End the server this process started (and any replay it still runs) and remove
        its socket."""
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(os.path.dirname(self.path), ignore_errors=True)


@dataclass(frozen=True)
class Keeper:
    """Where fork servers outlive the scopes that start them (`keep`)."""

    directory: Path  # this user's only: the servers' sockets, start locks, states and logs
    pidfd: int  # the process they end with


_lock = threading.Lock()
_scopes = [0]  # open scopes: servers live while there is one
_servers: dict[Key, Server] = {}
_refused: set[Key | str] = set()  # keys and labels whose replays start fresh (said once)
_announced: set[str] = set()  # labels whose forking was said
_starting: dict[Key, threading.Lock] = {}  # one start per key, the others wait for it
_keeper: list[Keeper] = []  # set by `keep`: then servers outlive their scopes


def keep(directory: Path, pidfd: int) -> None:
    """From now on fork servers started here (and in the processes this one forks) outlive
    their scope: each serves later scopes too, found in `directory`, until the process of
    `pidfd` ends or it was KEPT_IDLE_SECONDS without a replay. The warm process keeps them
    for its commands, so that only a command's first replay of a script waits for its
    libraries. A server whose imported files changed forks no more: the next one imports
    them anew."""
    _keeper[:] = [Keeper(directory, pidfd)]


def enabled() -> bool:
    """Whether replays fork from fork servers here (`FLOR_FLOWS_REPLAY_FORK` not 0, Linux)."""
    return AVAILABLE and os.environ.get(ENV_VAR, "1").strip() != "0"


def keeping() -> bool:
    """Whether replays fork here from servers kept across scopes (`keep`)."""
    return bool(_keeper) and enabled()


def measured(script: Path, env: dict[str, str]) -> tuple[float, bool] | None:
    """How long a fork server of the libraries `script` imports took to import them on this
    host, run with `env` (what a replay forked from one skips: the median of the last
    servers', `importtimes`), and whether a kept one (`keep`) runs now; None if no server of
    them was measured here, or `script` cannot be read."""
    try:
        key = _key(script.read_bytes(), env)
    except (OSError, SyntaxError, ValueError):
        return None
    seconds = importtimes.median(key.imports)
    if seconds is None:
        return None
    return seconds, keeping() and _answers(_keeper[0].directory / _name(key))


@contextlib.contextmanager
def scope() -> Iterator[None]:
    """While open, replays may fork from fork servers; the last one to close stops those
    it does not keep."""
    with _lock:
        _scopes[0] += 1
    try:
        yield
    finally:
        with _lock:
            _scopes[0] -= 1
            ending = [s for s in _servers.values() if not s.kept] if not _scopes[0] else []
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
    if not enabled():
        return None
    roots = tuple(str(root) for root in roots)
    try:
        key = _key(script.read_bytes(), env)
    except (OSError, SyntaxError, ValueError) as exc:
        _refuse(label, label, f"the script does not parse: {exc}", on_output)
        return None
    with _lock:
        if not _scopes[0] or label in _refused:
            return None
    server = _server(key, label, script, cwd, roots, on_output)
    if server is None:
        return None

    def spawn(command: list[str], cwd: Path, env: dict[str, str]) -> Forked | None:
        """Fork the replay; a refusal (said once) or no answer leaves it a fresh process."""
        nonlocal server
        forked = server.spawn(command, cwd, env, roots)
        if forked is None and server.kept:  # it retired or went: once more, from a new one
            server = _server(key, label, script, cwd, roots, on_output)
            forked = server.spawn(command, cwd, env, roots) if server is not None else None
        if isinstance(forked, str):
            _refuse(label, label, forked, on_output)
            return None
        if forked is not None and label not in _announced:
            _announced.add(label)
            _announce(label, server, on_output)
        return forked

    return spawn


def prestart(script: Path, source: bytes, roots: Iterable[Path], env: dict[str, str]) -> bool:
    """Start now, in a thread, the kept server (`keep`) that replays of a script whose
    source is `source` will fork from, from `script` (which imports the same), unless one
    runs: the flow run that will ask for it starts meanwhile, and its first replay waits
    less for the libraries. False (nothing started) if this process keeps no servers
    (`keeping`) or the two scripts' imports differ."""
    if not keeping():
        return False
    try:
        key = _key(source, env)
        if key != _key(script.read_bytes(), env):
            return False
    except (OSError, SyntaxError, ValueError):  # the replay says why, if it still fails then
        return False
    roots = tuple(str(root) for root in roots)

    def start() -> None:
        with contextlib.suppress(OSError):  # likewise: the replay starts it, or says why not
            _kept(key, script, script.parent, roots)

    threading.Thread(target=start, name="flor-flows-prestart", daemon=True).start()
    return True


def prepare(label: str, script: Path, roots: Iterable[Path], env: dict[str, str]) -> str:
    """Start now, unless one runs, the kept server (`keep`) that replays of `script` run
    with `env` will fork from, and wait until it is ready: what to say of it (as a replay
    would, or why its replays will start fresh processes). Only where servers are kept."""
    assert keeping()
    try:
        key = _key(script.read_bytes(), env)
        found = _kept(key, script, script.parent, tuple(str(root) for root in roots))
    except (OSError, SyntaxError, ValueError) as exc:
        found = f"{script} cannot be read or parsed: {exc}"
    if isinstance(found, str):
        return f"flor-flows: replays of {label} start fresh processes: {found}"
    running = " (it was running already)" if found.process is None else ""
    return _forking(label, found) + running


def _key(source: bytes, env: dict[str, str]) -> Key:
    """The key of a script with `source` run with `env`; SyntaxError if it does not parse."""
    names = forkserver_main.imported_names(source)
    imports = (n for n in names if n.partition(".")[0] not in sys.stdlib_module_names)
    shared = {k: v for k, v in env.items() if k not in NOT_IN_KEY}
    return Key(tuple(dict.fromkeys(imports)), tuple(sorted(shared.items())))


def _server(
    key: Key,
    label: str,
    script: Path,
    cwd: Path,
    roots: tuple[str, ...],
    on_output: Callable[[str], Any],
) -> Server | None:
    """The live server for `key`: this scope's, a kept one, or one started now from
    `script` in `cwd`; None (said once) if there is none, or the scope closed meanwhile."""
    with _lock:
        starting = _starting.setdefault(key, threading.Lock())
    with starting:
        with _lock:
            server = _servers.get(key)
            if key in _refused:
                return None
        if server is not None and server.alive():
            return server
        if server is not None and not server.kept:  # it died since
            why = server.failed or f"it exited with code {server.process.returncode}"
            _refuse(key, label, f"its fork server ended ({why})", on_output)
            return None
        found = _kept(key, script, cwd, roots) if _keeper else _started(key, script, cwd, roots)
        if isinstance(found, str):
            _refuse(key, label, found, on_output)
            return None
        with _lock:
            if not _scopes[0]:  # the scope closed while the server started
                ending: Server | None = found
            else:
                ending, _servers[key] = None, found
        if ending is not None and not ending.kept:
            ending.stop()
        return None if ending is not None else found


def _kept(key: Key, script: Path, cwd: Path, roots: tuple[str, ...]) -> Server | str:
    """The kept server for `key` (`keep`): the one running, else one started now."""
    keeper = _keeper[0]
    name = _name(key)
    path, state = keeper.directory / name, keeper.directory / f"{name}.json"
    with (keeper.directory / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one start per key across the warm process's commands
        if _answers(path) and state.exists():
            found = json.loads(state.read_text())
            return Server(key, str(path), found["modules"], None, found["seconds"], kept=True)
        path.unlink(missing_ok=True)  # left by a server that was killed
        with (keeper.directory / f"{name}.log").open("ab") as log:
            started = _start(key, script, cwd, roots, str(path), keeper.pidfd, log)
        if isinstance(started, Server):
            state.write_text(json.dumps({"modules": started.modules, "seconds": started.seconds}))
            importtimes.record(key.imports, started.seconds)
        return started


def _name(key: Key) -> str:
    """The name of a kept server's files (`keep`)."""
    return hashlib.sha256(repr(key).encode()).hexdigest()[:16]


def _started(key: Key, script: Path, cwd: Path, roots: tuple[str, ...]) -> Server | str:
    """A server for `key` that ends with this scope (or this process); why there is none."""
    if not _make_room():
        return "every fork server is busy"
    directory = tempfile.mkdtemp(prefix="flor-flows-fork-")
    watch = os.pidfd_open(os.getpid())
    try:
        started = _start(key, script, cwd, roots, os.path.join(directory, "socket"), watch)
    finally:
        os.close(watch)
    if isinstance(started, str):
        shutil.rmtree(directory, ignore_errors=True)
    else:
        importtimes.record(key.imports, started.seconds)
    return started


def _answers(path: Path) -> bool:
    """Whether a server listens on `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def _announce(label: str, server: Server, on_output: Callable[[str], Any]) -> None:
    """Say once that `label`'s replays fork (`_forking`)."""
    on_output(_forking(label, server))


def _forking(label: str, server: Server) -> str:
    """That `label`'s replays fork, from which libraries, and for a kept server how long it
    stays."""
    libraries = ", ".join(server.modules) or "no library"
    said = (
        f"flor-flows: replays of {label} fork from one process that imported {libraries} "
        f"in {server.seconds:.2f} s"
    )
    if server.kept:
        minutes = KEPT_IDLE_SECONDS / 60
        said += (
            f" (kept for the next commands until {minutes:.0f} min without a replay, or until "
            f"`flor-flows server stop`)"
        )
    return said


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
        live = sorted((s for s in _servers.values() if not s.kept), key=lambda s: s.used)
        while len(live) >= MAX_SERVERS:
            idle = next((s for s in live if s.busy == 0), None)
            if idle is None:
                break
            live.remove(idle)
            ending.append(_servers.pop(idle.key))
    for server in ending:
        server.stop()
    return len(live) < MAX_SERVERS


def _start(
    key: Key,
    script: Path,
    cwd: Path,
    roots: tuple[str, ...],
    path: str,
    watch: int,
    log: IO[bytes] | None = None,
) -> Server | str:
    """A fork server for `key` on socket `path`, started as `python script` in `cwd` would
    be, ready; else why there is none. It ends when the process of pidfd `watch` does; given
    a `log` (its stderr), it is a kept one (`keep`): also after KEPT_IDLE_SECONDS without a
    replay."""
    kept = log is not None
    idle = KEPT_IDLE_SECONDS if kept else 0.0
    command = [sys.executable, str(PROGRAM), path, str(script), json.dumps(roots), str(watch)]
    process = subprocess.Popen(
        [*command, str(idle)],
        cwd=cwd,
        env=dict(key.env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        pass_fds=(watch,),
        start_new_session=kept,  # outside the command's process group and its signals
    )
    assert process.stdout is not None
    with process.stdout:
        ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
        line = process.stdout.readline() if ready else b""
    state = json.loads(line) if line.startswith(b"{") else {"ready": False}
    if state["ready"]:
        return Server(key, path, state["modules"], process, state["seconds"], kept)
    if not ready:
        process.kill()
    code = process.wait()
    if "why" in state:
        return str(state["why"])
    if not ready:
        return f"its fork server was not ready after {START_TIMEOUT:.0f} s"
    return f"its fork server exited with code {code} before it was ready"
