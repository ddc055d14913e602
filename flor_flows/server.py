"""A Prefect server for flor-flows: `prefect server start` with the environment it needs.

Prefect's server needs an async database driver (asyncpg, aiosqlite), so the usual
`postgresql://` and `sqlite:///` URLs are converted; analytics are off (offline servers
log telemetry errors otherwise); and the UI is told where the API is, so it works on any
port, not only 4200.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from flor_flows.errors import PrefectApiError
from flor_flows.secrets import redact_url

ASYNC_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgresql+psycopg": "postgresql+asyncpg",
    "postgresql+psycopg2": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}


def async_database_url(url: str) -> str:
    """`url` with the async driver Prefect's server requires; FlorError if unsupported."""
    scheme, sep, rest = url.partition("://")
    driver = ASYNC_DRIVERS.get(scheme.lower()) if sep else None
    if driver is None:
        raise PrefectApiError(
            f"unsupported database URL {redact_url(url)!r} for the Prefect server: use "
            "postgresql://user[:password]@host[:port]/dbname or sqlite:///path/to/prefect.db"
        )
    if driver.startswith("sqlite") and rest in ("", "/"):
        raise PrefectApiError(
            f"{redact_url(url)!r} names no database file: use sqlite:///path/to/prefect.db"
        )
    return f"{driver}://{rest}"


def server_env(database_url: str | None, host: str, port: int) -> dict[str, str]:
    """The Prefect settings the server runs with (added to the caller's environment).

    No `database_url` leaves Prefect's default: SQLite at `$PREFECT_HOME/prefect.db`.
    """
    env = {
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://{host}:{port}/api",
    }
    if database_url is not None:
        env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = async_database_url(database_url)
    return env


def prefect_command() -> list[str]:
    """The `prefect` CLI of this interpreter's environment."""
    executable = Path(sys.executable).with_name("prefect")
    return [str(executable)] if executable.is_file() else [sys.executable, "-m", "prefect"]


def run_server(database_url: str | None = None, host: str = "127.0.0.1", port: int = 4200) -> int:
    """Run `prefect server start` in the foreground until it exits; returns its exit code.

    The server runs in its own session, so a terminal's Ctrl-C reaches it once, through
    this process: SIGINT and SIGTERM are forwarded to it and it shuts down cleanly. After
    a clean shutdown uvicorn re-raises the signal, so dying of a forwarded signal is exit 0;
    any other death by signal N is 128 + N, as in a shell.
    """
    env = os.environ | server_env(database_url, host, port)
    command = [*prefect_command(), "server", "start", "--host", host, "--port", str(port)]
    server = subprocess.Popen(command, env=env, start_new_session=True)
    forwarded: set[int] = set()

    def forward(signum: int, _frame: FrameType | None) -> None:
        forwarded.add(signum)
        server.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = server.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if returncode < 0:
        return 0 if -returncode in forwarded else 128 - returncode
    return returncode
