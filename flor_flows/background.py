"""A Prefect server in the background, shared by the `flor-flows` commands of one PREFECT_HOME.

Without PREFECT_API_URL each command would start Prefect's temporary server (10-40 s) and
stop it at exit. Instead the first command starts `prefect server start` detached (its own
session, its output in a log file), waits until it answers, and leaves it running; the next
ones find it through a small state file in PREFECT_HOME (pid, port, URL, log). A lock file
serializes the check-and-start, so two commands starting at once start one server.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from flor_flows.errors import PrefectApiError
from flor_flows.process import alive
from flor_flows.secrets import redact_url
from flor_flows.server import prefect_command, server_env

MODES = ("background", "temporary")
STATE_FILE = "flor-flows-server.json"
LOCK_FILE = "flor-flows-server.lock"
LOG_FILE = "flor-flows-server.log"
WARM_SOCKET = "flor-flows-warm.sock"  # the warm process next to the server (warm.py)
WARM_PID = "flor-flows-warm.pid"
WARM_LOG = "flor-flows-warm.log"
STOP_HINT = "flor-flows server stop"
# A first start migrates a new database: 10-50 s on 2 busy cores.
STARTUP_TIMEOUT = 180.0
# A server that is up answers /health in milliseconds, a dead one is refused at once; a busy
# machine (2 cores, load 10) can take seconds: no answer in 10 s is a server that is stuck.
HEALTH_TIMEOUT = 10.0
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
WARM_TIMEOUT = 60.0  # seconds `server start` waits for the warm process (its imports: ~4 s)


@dataclass(frozen=True)
class ServerState:
    """What the state file records of a background server."""

    pid: int
    port: int
    url: str  # the API's URL, as PREFECT_API_URL
    log: str
    database: str  # redacted
    started_at: str


def prefect_mode() -> str:
    """FLOR_FLOWS_PREFECT: `background` (the default) or `temporary` (Prefect's own per process)."""
    mode = os.environ.get("FLOR_FLOWS_PREFECT", "").strip().lower() or "background"
    if mode not in MODES:
        raise PrefectApiError(
            f"FLOR_FLOWS_PREFECT={os.environ['FLOR_FLOWS_PREFECT']!r}: use background or temporary"
        )
    return mode


def prefect_home() -> Path:
    """Prefect's home (PREFECT_HOME, default ~/.prefect): the server's SQLite and our state."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


def _healthy(url: str, timeout: float = HEALTH_TIMEOUT) -> bool:
    """Whether the Prefect API at `url` answers its health check."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.read().strip() == b"true"
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _command_line(pid: int) -> str:
    """The command line of process `pid`; empty if it is gone or cannot be read."""
    try:
        return subprocess.run(
            ["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


def _is_server(state: ServerState) -> bool:
    """Whether `state.pid` is still the server it records (a pid can be reused, e.g. after a
    reboot): a live `prefect server start` on its port."""
    if not alive(state.pid):
        return False
    command = _command_line(state.pid)
    return "server start" in command and f"--port {state.port}" in command


def _terminate(pid: int) -> None:
    """SIGTERM the server's process group (it leads its own session), SIGKILL after STOP_GRACE."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid):
            return


def _read_state(home: Path) -> ServerState | None:
    """The recorded server; None if there is none or the file is unreadable (then stale)."""
    try:
        return ServerState(**json.loads((home / STATE_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_state(home: Path, state: ServerState) -> None:
    """Record `state` atomically (a reader never sees half a file)."""
    path = home / STATE_FILE
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        partial.write_text(json.dumps(asdict(state), indent=1) + "\n")
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise PrefectApiError(
            f"cannot write the Prefect server's state file {path}: {exc.strerror or exc}"
        ) from exc


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Hold the lock that serializes finding, starting and stopping the server of `home`."""
    path = home / LOCK_FILE
    try:
        home.mkdir(parents=True, exist_ok=True)
        lock = path.open("a")
    except OSError as exc:
        raise PrefectApiError(
            f"cannot write the Prefect server's state in {home}: {exc.strerror or exc}"
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or this process dies
        yield


def _running(home: Path) -> ServerState | None:
    """The recorded server if it runs and answers. A stale record (its process gone, or alive
    but not answering) is removed, its process stopped if it is still our server."""
    state = _read_state(home)
    if state is not None and alive(state.pid) and _healthy(state.url):
        return state
    if state is not None and _is_server(state):
        print(
            f"flor-flows: the background Prefect server at {state.url} (pid {state.pid}) does "
            f"not answer: stopping it (its log: {state.log})",
            file=sys.stderr,
        )
        _terminate(state.pid)
    (home / STATE_FILE).unlink(missing_ok=True)
    return None


def _port(host: str, port: int | None) -> int:
    """`port` if nothing listens on it, or a free one chosen by the system if None."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            sock.bind((host, port or 0))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PrefectApiError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
            raise PrefectApiError(
                f"port {port} on {host} is in use: give another --port, or none to pick a free one"
            ) from exc
        return sock.getsockname()[1]


# An exception line of a traceback: `sqlalchemy.exc.DBAPIError: ... does not exist`
EXCEPTION_LINE = re.compile(r"[A-Za-z_][\w.]*(Error|Exception)(:|$)")


def _last_line(log: Path) -> str:
    """What the server's log says last, for an error message: its last exception line (the
    cause; Prefect logs more lines after it), else its last line; URLs redacted."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line] or ["(empty)"]
    last = next((line for line in reversed(lines) if EXCEPTION_LINE.match(line)), lines[-1])
    return re.sub(r"\S+://\S+", lambda found: redact_url(found[0]), last)[:300]


def _start(
    home: Path, database: str | None, host: str, port: int | None, timeout: float
) -> ServerState:
    """Start `prefect server start` detached and wait until it answers; FlorError if it exits
    or does not answer within `timeout` seconds (then it is stopped)."""
    port = _port(host, port)
    log = home / LOG_FILE
    env = os.environ | server_env(database, host, port) | {"PREFECT_HOME": str(home)}
    command = [*prefect_command(), "server", "start", "--host", host, "--port", str(port)]
    try:
        with log.open("wb") as out:
            server = subprocess.Popen(
                command,
                env=env,
                cwd=home,  # not the caller's project: no prefect.toml of it, no busy directory
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    except OSError as exc:
        raise PrefectApiError(f"cannot start the Prefect server: {exc.strerror or exc}") from exc
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}/api"
    recorded = False
    try:  # a server not recorded could never be found again: it does not outlive this call
        _wait_healthy(server, url, log, timeout)
        _first_read(url)
        state = ServerState(
            pid=server.pid,
            port=port,
            url=url,
            log=str(log),
            database=redact_url(database) if database else f"sqlite (Prefect's, in {home})",
            started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        _write_state(home, state)
        recorded = True
    finally:
        if not recorded:
            _terminate(server.pid)
            server.wait(timeout=5)
    return state


def _first_read(url: str) -> None:
    """Have the server just started answer the request a Prefect client makes first (its
    version, for the compatibility check) now: the server's first answer to it takes about
    0.5 s, which the first command's flow run would wait for otherwise. A server that does
    not answer it is the command's to report."""
    with contextlib.suppress(urllib.error.URLError, OSError):
        urllib.request.urlopen(f"{url}/admin/version", timeout=HEALTH_TIMEOUT).close()


def _wait_healthy(server: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Wait until the server just started answers; FlorError if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while not _healthy(url, timeout=2.0):
        if server.poll() is not None:
            raise PrefectApiError(
                f"the background Prefect server exited (code {server.returncode}) before "
                f"answering: {_last_line(log)} (its log: {log})"
            )
        if time.monotonic() > deadline:
            raise PrefectApiError(
                f"the background Prefect server did not answer within {timeout:g} s: "
                f"{_last_line(log)} (its log: {log})"
            )
        time.sleep(0.2)


def ensure_server(
    database: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout: float = STARTUP_TIMEOUT,
) -> tuple[ServerState, bool]:
    """The background server of PREFECT_HOME, started if none runs; and whether it was started
    now. `database`, `host` and `port` apply only to a server started now."""
    home = prefect_home()
    with _locked(home):
        state = _running(home)
        started = state is None
        if started:
            state = _start(home, database, host, port, timeout)
        start_warm(home, state.pid)
        return state, started


def warm_socket(home: Path) -> Path:
    """The socket of the warm process of PREFECT_HOME `home`."""
    return home / WARM_SOCKET


def start_warm(home: Path, server_pid: int) -> None:
    """Start the warm process (warm.py) for the background server `server_pid` of `home`,
    detached, unless one runs. It lives as long as that server; its output goes to WARM_LOG."""
    if _warm_pid(home) is not None:
        return
    with (home / WARM_LOG).open("ab") as log:
        warm = subprocess.Popen(
            [sys.executable, "-m", "flor_flows.warm", str(home), str(server_pid)],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (home / WARM_PID).write_text(f"{warm.pid}\n")


def _wait_warm(home: Path, timeout: float = WARM_TIMEOUT) -> None:
    """Wait until the warm process of `home` listens, or has ended, or `timeout` passed (a
    command that finds it not ready yet runs itself)."""
    pid = _recorded_warm_pid(home)  # not `_warm_pid`: one still starting may show no command line
    if pid is None:
        return
    deadline = time.monotonic() + timeout
    while not warm_socket(home).exists() and alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def stop_warm(home: Path) -> None:
    """Stop the warm process of `home`, if one runs, and remove its files."""
    pid = _warm_pid(home)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for name in (WARM_PID, WARM_SOCKET):
        (home / name).unlink(missing_ok=True)


def _recorded_warm_pid(home: Path) -> int | None:
    """The pid WARM_PID records; None if there is none."""
    try:
        return int((home / WARM_PID).read_text())
    except (OSError, ValueError):
        return None


def _warm_pid(home: Path) -> int | None:
    """The warm process of `home` if it runs: one of ours, per its command line."""
    pid = _recorded_warm_pid(home)
    if pid is None:
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return pid if alive(pid) and b"flor_flows.warm" in command else None


def announce(state: ServerState, started: bool) -> None:
    """Say on stderr, in one line, which server this command uses and how to stop it."""
    ui = state.url.removesuffix("/api")
    if started:
        print(
            f"flor-flows: started a Prefect server in the background at {state.url} (UI {ui}, "
            f"log {state.log}); it stays up for the next commands; stop it with: {STOP_HINT}",
            file=sys.stderr,
        )
    else:
        print(
            f"flor-flows: using the background Prefect server at {state.url} (pid {state.pid}); "
            f"stop it with: {STOP_HINT}",
            file=sys.stderr,
        )


def stop_server() -> ServerState | None:
    """Stop the background server of PREFECT_HOME; the one stopped, None if none was running."""
    home = prefect_home()
    if not (home / STATE_FILE).exists():
        return None
    with _locked(home):
        state = _read_state(home)
        running = state is not None and _is_server(state)
        if running:
            _terminate(state.pid)
        (home / STATE_FILE).unlink(missing_ok=True)
        stop_warm(home)
    return state if running else None


def server_status() -> tuple[ServerState | None, bool]:
    """The recorded server of PREFECT_HOME (None if none) and whether it answers. Reads only."""
    state = _read_state(prefect_home())
    return state, state is not None and alive(state.pid) and _healthy(state.url)


def server_action(action: str, database: str | None, host: str, port: int | None) -> int:
    """`flor-flows server start|stop|status`: the exit code. `start` prints the API's URL on
    stdout (for `export PREFECT_API_URL=$(flor-flows server start)`); `status` exits 1 when
    no background server answers."""
    if action == "start":
        state, started = ensure_server(database, host, port)
        announce(state, started)
        _wait_warm(prefect_home())  # so that the next commands are served warm
        print(state.url)
        return 0
    if action == "stop":
        stopped = stop_server()
        print(
            f"stopped the background Prefect server at {stopped.url} (pid {stopped.pid})"
            if stopped
            else f"no background Prefect server was running (PREFECT_HOME={prefect_home()})"
        )
        return 0
    state, up = server_status()
    if state is None:
        print(f"no background Prefect server (PREFECT_HOME={prefect_home()})")
    elif up:
        print(
            f"running at {state.url} (pid {state.pid}, since {state.started_at}, database "
            f"{state.database}, log {state.log})"
        )
    else:
        print(f"not running: the server at {state.url} (pid {state.pid}) does not answer")
    return 0 if up else 1
