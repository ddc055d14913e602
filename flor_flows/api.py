"""Which Prefect API a command uses, and whether it answers.

PREFECT_API_URL (environment or Prefect profile) always wins; without it, the background
server of PREFECT_HOME (background.py) or Prefect's temporary one per process
(FLOR_FLOWS_PREFECT=temporary). Every command that runs a flow checks the API first, so a
dead one is one line at once, not a traceback after Prefect's retries.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from flor_flows import background as bg
from flor_flows.errors import PrefectApiError
from flor_flows.secrets import redact_url


def ephemeral_defaults() -> None:
    """Prefect settings for its ephemeral API, set before prefect is imported: telemetry off
    (offline it only logs errors) and 120 s for a first start, which migrates a new database
    (the default 20 s is not enough on 2 busy cores)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")


def prefect_settings(section: str, **changes: object) -> AbstractContextManager[object]:
    """A context with this context's Prefect settings but `changes` in `section` (e.g.
    "client", max_retries=1); cheap, unlike `temporary_settings`, which builds them again
    from every source (~0.3 s a call)."""
    from prefect.context import SettingsContext, get_settings_context

    context = get_settings_context()
    changed = getattr(context.settings, section).model_copy(update=changes)
    settings = context.settings.model_copy(update={section: changed})
    return SettingsContext(profile=context.profile, settings=settings)


def use_api(background: bool = True) -> None:
    """Choose and check the Prefect API of a command that runs flows.

    PREFECT_API_URL (from the environment or a Prefect profile) always wins. Otherwise, with
    FLOR_FLOWS_PREFECT=background (the default), the background server of PREFECT_HOME is
    found or started (see background.py) and this process's PREFECT_API_URL set to it;
    FLOR_FLOWS_PREFECT=temporary, or `background=False` (a Dask cluster, whose workers
    cannot reach a server on 127.0.0.1), leaves Prefect's temporary server of this process.
    """
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
# A command checks its API before it reads the store and again once it has chosen it: an
# API that answered this process within this many seconds is not asked again.
CHECKED_FOR = 10.0
_answered: dict[str, float] = {}  # API URL -> when it last answered this process


@contextlib.contextmanager
def health_check(
    timeout: float = API_CHECK_TIMEOUT,
) -> Iterator[Callable[[], BaseException | None]]:
    """A check of the Prefect API at PREFECT_API_URL: why its health check fails, None if it
    answers or none is set. Prefect's own client makes the requests (its API key, auth
    string and TLS settings apply) with its retries off, so a dead server is reported at
    once; one client serves every check made in the block (each new one builds a TLS
    context: ~0.1 s of CPU)."""
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # the environment's, or the active Prefect profile's
        yield lambda: None
        return
    with prefect_settings("client", max_retries=0):
        client = get_client(sync_client=True, httpx_settings={"timeout": httpx.Timeout(timeout)})
        with client:
            yield client.api_healthcheck


def api_problem(timeout: float = API_CHECK_TIMEOUT) -> BaseException | None:
    """Why the Prefect API at PREFECT_API_URL fails its health check (`health_check`); None
    if it answers or none is set."""
    with health_check(timeout) as check:
        return check()


def check_api(temporary_allowed: bool = True, timeout: float = API_CHECK_TIMEOUT) -> None:
    """Fail at once, with the way out, when PREFECT_API_URL names an API that does not answer.

    Every command that runs a flow calls this first: otherwise Prefect finds out only when
    the flow run starts, after its retries, with a long traceback. Nothing to check without
    PREFECT_API_URL (the flow starts a temporary API; see `use_api` for the background one).
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url and time.monotonic() - _answered.get(url, -CHECKED_FOR) < CHECKED_FOR:
        return
    problem = api_problem(timeout)
    if problem is None:
        if url:
            _answered[url] = time.monotonic()
        return
    where = f"the Prefect API at {redact_url(url)}"
    way_out = START_IT + (
        " or unset PREFECT_API_URL to use a local one" if temporary_allowed else ""
    )
    if isinstance(problem, httpx.HTTPStatusError):
        status = problem.response.status_code
        if status < 500:  # it answers, but not to us: a key, an address or a proxy is wrong
            raise PrefectApiError(
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
    raise PrefectApiError(f"{where} does not answer ({why}): {way_out}")
