"""Publishing to a Prefect API that went away costs seconds, not the client's minute; a
command's flow run ends without waiting for a heartbeat thread."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flor_flows import publishing


class _Unavailable(BaseHTTPRequestHandler):
    """Answers every request 503 (a server going down), counting them."""

    requests: list[str] = []

    def _answer(self) -> None:
        type(self).requests.append(f"{self.command} {self.path.partition('?')[0]}")
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *args: object) -> None:
        """Silent."""


@pytest.fixture
def unavailable_api() -> Iterator[list[str]]:
    """The requests a 503-answering server got, with it as this context's Prefect API (set
    over whatever settings context a session fixture of this worker left open)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    _Unavailable.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api"
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield _Unavailable.requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.filterwarnings("ignore:Artifact creation outside:FutureWarning")
def test_a_publish_to_an_unavailable_api_gives_up_after_its_few_retries(
    unavailable_api: list[str],
) -> None:
    from prefect.artifacts import create_table_artifact

    try:
        got = publishing.published(create_table_artifact, [{"a": 1}], key="some-table")
    finally:
        publishing.API_DOWN.clear()
    assert got is None
    # One request (the client's first: its CSRF token) tried 1 + PUBLISH_RETRIES times
    assert len(unavailable_api) == publishing.PUBLISH_RETRIES + 1, unavailable_api
    assert len(set(unavailable_api)) == 1, unavailable_api


@pytest.mark.filterwarnings("ignore:Artifact creation outside:FutureWarning")
def test_nothing_is_sent_while_the_api_is_known_down(unavailable_api: list[str]) -> None:
    from prefect.artifacts import create_table_artifact

    publishing.API_DOWN.set()
    try:
        assert publishing.published(create_table_artifact, [{"a": 1}], key="t") is None
    finally:
        publishing.API_DOWN.clear()
    assert unavailable_api == []


def test_a_commands_flow_run_sends_no_heartbeats_unless_the_user_set_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prefect joins its heartbeat thread at a flow's end (up to a second a command)."""
    from prefect.context import SettingsContext, get_settings_context
    from prefect.settings import Settings, get_current_settings

    from flor_flows.commands.watching import _without_heartbeats

    def frequency() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    def as_configured() -> SettingsContext:  # the environment's settings, as a command has them
        return SettingsContext(profile=get_settings_context().profile, settings=Settings())

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    with as_configured():
        assert frequency() == 180  # Prefect's default ...
        assert _without_heartbeats(frequency) is None  # ... off in a command's flow run
        assert frequency() == 180  # and only there
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")
    with as_configured():
        assert _without_heartbeats(frequency) == 60  # the user's choice stands
