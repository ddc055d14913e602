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

from flor_flows.errors import FlorError
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
        raise FlorError(
            f"unsupported database URL {redact_url(url)!r} for the Prefect server: use "
            "postgresql://user[:password]@host[:port]/dbname or sqlite:///path/to/prefect.db"
        )
    if driver.startswith("sqlite") and rest in ("", "/"):
        raise FlorError(
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


def ephemeral_defaults() -> None:
    """Prefect settings for its ephemeral API, set before prefect is imported: telemetry off
    (offline it only logs errors) and 120 s for a first start, which migrates a new database
    (the default 20 s is not enough on 2 busy cores)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def use_api(background: bool = True) -> None:
    """Choose and check the Prefect API of a command that runs flows.

    PREFECT_API_URL (from the environment or a Prefect profile) always wins. Otherwise, with
    FLOR_FLOWS_PREFECT=background (the default), the background server of PREFECT_HOME is
    found or started (see background.py) and this process's PREFECT_API_URL set to it;
    FLOR_FLOWS_PREFECT=temporary, or `background=False` (a Dask cluster, whose workers
    cannot reach a server on 127.0.0.1), leaves Prefect's temporary server of this process.
    """
    from flor_flows import background as bg

    mode = bg.prefect_mode()
    if background and mode == "background" and not os.environ.get("PREFECT_API_URL"):
        import prefect.context
        from prefect.settings import get_current_settings

        if not get_current_settings().api.url:
            database = os.environ.get("FLOR_FLOWS_SERVER_DATABASE") or None
            state, started = bg.ensure_server(database)
            bg.announce(state, started)
            os.environ["PREFECT_API_URL"] = state.url
            # Prefect read its settings at import: read them again, with the URL
            prefect.context.refresh_global_settings_context()
    check_api()


# Seconds the health check waits for the Prefect API: a server that is up answers /health
# in milliseconds, so a few seconds only separates "down or unreachable" from "slow".
API_CHECK_TIMEOUT = 3.0
START_IT = "start it (flor-flows server)"


def api_problem(timeout: float = API_CHECK_TIMEOUT) -> BaseException | None:
    """Why the Prefect API at PREFECT_API_URL fails its health check; None if it answers or
    none is set. Prefect's own client makes the request (its API key, auth string and TLS
    settings apply) with its retries off, so a dead server is reported at once."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    if not PREFECT_API_URL.value():  # the environment's, or the active Prefect profile's
        return None
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):
        client = get_client(sync_client=True, httpx_settings={"timeout": httpx.Timeout(timeout)})
        with client:
            return client.api_healthcheck()


def check_api(temporary_allowed: bool = True, timeout: float = API_CHECK_TIMEOUT) -> None:
    """Fail at once, with the way out, when PREFECT_API_URL names an API that does not answer.

    Every command that runs a flow calls this first: otherwise Prefect finds out only when
    the flow run starts, after its retries, with a long traceback. Nothing to check without
    PREFECT_API_URL (the flow starts a temporary API; see `use_api` for the background one).
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    problem = api_problem(timeout)
    if problem is None:
        return
    url = PREFECT_API_URL.value()
    where = f"the Prefect API at {redact_url(url)}"
    way_out = START_IT + (
        " or unset PREFECT_API_URL to use a local one" if temporary_allowed else ""
    )
    if isinstance(problem, httpx.HTTPStatusError):
        status = problem.response.status_code
        if status < 500:  # it answers, but not to us: a key, an address or a proxy is wrong
            raise FlorError(
                f"{where} refused its health check (HTTP {status} "
                f"{problem.response.reason_phrase}): check PREFECT_API_URL and PREFECT_API_KEY"
            )
        why = f"HTTP {status} {problem.response.reason_phrase}"
    elif isinstance(problem, httpx.TimeoutException):
        why = f"timed out after {timeout:g} s"
    else:
        why = (
            str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
        )
    raise FlorError(f"{where} does not answer ({why}): {way_out}")
