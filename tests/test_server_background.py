"""`flor-flows` commands on a background Prefect server: started once by the first command
that runs a flow, reused by the next ones, shown and stopped by `flor-flows server`."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from flor_flows import background
from flor_flows.api import use_api
from flor_flows.errors import FlorError
from flor_flows.process import alive
from tests.conftest import Project, seed_prefect_home

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")
SCRIPT = """
import flor_flows as flor

w = 1.0
for epoch in flor.loop("epoch", range(3)):
    w = w * 0.5
    flor.log("w", w)
"""
STARTED = re.compile(r"started a Prefect server in the background at (\S+) ")


def _servers(home: Path) -> list[psutil.Process]:
    """The live `prefect server start` processes started with PREFECT_HOME=`home`."""
    found = []
    for proc in psutil.process_iter():
        try:
            ours = proc.environ().get("PREFECT_HOME") == str(home)
            server = "server start" in " ".join(proc.cmdline())
            if ours and server and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """A PREFECT_HOME of the test's own; any server left with it is killed at the end."""
    home = (tmp_path / "prefect-home").resolve()
    try:
        yield home
    finally:
        for proc in _servers(home):
            os.killpg(proc.pid, signal.SIGKILL)


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no PREFECT_API_URL, no FLOR_FLOWS_PREFECT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))}
    return env | {
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        **extra,
    }


def _cli(
    *args: str, home: Path, cwd: Path | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOR_FLOWS, *args],
        cwd=cwd,
        env=_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=400,  # a first server start migrates its database: up to a minute on 2 busy cores
    )


def _api(url: str, path: str, body: dict | None = None) -> object:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{url}{path}", data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _healthy(url: str) -> bool:
    try:
        return _api(url, "/health") is True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _wait(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.2)


def _state(home: Path) -> dict:
    return json.loads((home / background.STATE_FILE).read_text())


@pytest.mark.timeout(900)
def test_train_starts_a_background_server_that_replay_reuses_until_stopped(
    project: Project, home: Path, migrated_prefect_db: Path
) -> None:
    seed_prefect_home(home, migrated_prefect_db)  # a real first start, without the migration
    project.write("train.py", SCRIPT)
    project.commit("train.py")
    train = _cli("train", "train.py", home=home, cwd=project.root)
    assert train.returncode == 0, train.stderr[-3000:]
    (url,) = STARTED.findall(train.stderr)
    state = _state(home)
    assert state["url"] == url and psutil.pid_exists(state["pid"]) and _healthy(url)
    # the training flow run is on that server
    flow_run_id = project.store().runs()["prefect_flow_run_id"].item()
    assert _api(url, f"/flow_runs/{flow_run_id}")["state_type"] == "COMPLETED"

    project.write("train.py", SCRIPT + '    flor.log("w2", w * 2)\n')
    replay = _cli("replay", "--apply", "w2", home=home, cwd=project.root)
    assert replay.returncode == 0, replay.stderr[-3000:]
    assert "started" not in replay.stderr
    (line,) = [line for line in replay.stderr.splitlines() if "Prefect server" in line]
    assert f"using the background Prefect server at {url} (pid {state['pid']})" in line
    assert line.endswith("stop it with: flor-flows server stop")
    assert _state(home) == state
    assert [p.pid for p in _servers(home)] == [state["pid"]]
    assert project.store().dataframe(["w2"])["w2"].tolist() == [1.0, 0.5, 0.25]
    runs = _api(url, "/flow_runs/filter", {"sort": "START_TIME_ASC"})
    assert [r["name"].split("-")[0] for r in runs] == ["train", "backfill"]

    status = _cli("server", "status", home=home)
    assert status.returncode == 0, status.stderr
    assert f"running at {url} (pid {state['pid']}" in status.stdout
    stop = _cli("server", "stop", home=home)
    assert stop.returncode == 0, stop.stderr
    assert f"stopped the background Prefect server at {url}" in stop.stdout
    _wait(lambda: not _servers(home), 20, "the server to be gone")
    assert not _healthy(url) and not (home / background.STATE_FILE).exists()
    assert _cli("server", "status", home=home).returncode == 1


@pytest.mark.timeout(900)
def test_a_stale_state_is_replaced_and_two_starts_at_once_start_one_server(
    home: Path, migrated_prefect_db: Path
) -> None:
    seed_prefect_home(home, migrated_prefect_db)
    gone = subprocess.Popen(["true"])
    gone.wait()
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        stale_port = sock.getsockname()[1]
    stale = {
        "pid": gone.pid,
        "port": stale_port,
        "url": f"http://127.0.0.1:{stale_port}/api",
        "log": str(home / background.LOG_FILE),
        "database": "sqlite",
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    (home / background.STATE_FILE).write_text(json.dumps(stale))

    starts = [
        subprocess.Popen(
            [FLOR_FLOWS, "server", "start"],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [start.communicate(timeout=400) for start in starts]
    assert [start.returncode for start in starts] == [0, 0], [err for _, err in outs]
    urls = {out.strip() for out, _ in outs}
    assert len(urls) == 1 and stale["url"] not in urls
    (url,) = urls
    assert sorted("started" in err for _, err in outs) == [False, True]
    state = _state(home)
    assert state["url"] == url and state["pid"] != gone.pid
    assert [p.pid for p in _servers(home)] == [state["pid"]]

    # A server that is alive but does not answer (stopped here) is killed and replaced.
    os.kill(state["pid"], signal.SIGSTOP)
    again = _cli("server", "start", home=home)
    assert again.returncode == 0, again.stderr
    assert f"at {url} (pid {state['pid']}) does not answer: stopping it" in again.stderr
    assert not alive(state["pid"])
    replaced = _state(home)
    assert replaced["url"] == again.stdout.strip() and replaced["pid"] != state["pid"]
    assert [p.pid for p in _servers(home)] == [replaced["pid"]]

    assert _cli("server", "stop", home=home).returncode == 0
    _wait(lambda: not _servers(home), 20, "the server to be gone")
    assert not (home / background.STATE_FILE).exists()


def test_a_port_in_use_is_one_line_and_starts_nothing(home: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        done = _cli("server", "start", "--port", str(port), home=home)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        f"flor-flows: error: port {port} on 127.0.0.1 is in use: give another --port, or none "
        "to pick a free one"
    ]
    assert not (home / background.STATE_FILE).exists() and not _servers(home)


def test_a_state_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    home = tmp_path / "a-file" / "prefect-home"
    done = _cli("server", "start", home=home)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line == (
        f"flor-flows: error: cannot write the Prefect server's state in {home}: Not a directory"
    )


def test_a_server_that_does_not_answer_in_time_is_stopped(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(home))
    with pytest.raises(FlorError) as raised:
        background.ensure_server(timeout=0.5)
    log = home / background.LOG_FILE
    assert re.fullmatch(
        rf"the background Prefect server did not answer within 0\.5 s: .+ \(its log: "
        rf"{re.escape(str(log))}\)",
        str(raised.value),
    )
    assert not _servers(home) and not (home / background.STATE_FILE).exists()


def test_a_server_that_exits_says_why(home: Path) -> None:
    database = "postgresql://postgres@127.0.0.1:5432/flor_no_such_database"
    done = _cli("server", "start", home=home, FLOR_FLOWS_SERVER_DATABASE=database)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("flor-flows: error: the background Prefect server exited (code ")
    assert 'database "flor_no_such_database" does not exist' in line
    assert line.endswith(f"(its log: {home / background.LOG_FILE})")
    assert not (home / background.STATE_FILE).exists()


def test_temporary_mode_and_an_explicit_api_url_start_no_background_server(
    project: Project, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_HOME", str(home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    use_api()  # FLOR_FLOWS_PREFECT=temporary (the test default): Prefect's own, nothing to do
    assert "PREFECT_API_URL" not in os.environ
    assert not (home / background.LOCK_FILE).exists()
    monkeypatch.setenv("FLOR_FLOWS_PREFECT", "sometimes")
    with pytest.raises(FlorError, match="FLOR_FLOWS_PREFECT='sometimes': use background or"):
        use_api()

    project.write("train.py", SCRIPT)
    project.commit("train.py")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
    done = _cli("train", "train.py", home=home, cwd=project.root, PREFECT_API_URL=dead)
    assert done.returncode == 2
    assert f"the Prefect API at {dead} does not answer" in done.stderr.splitlines()[-1]
    assert not (home / background.STATE_FILE).exists() and not _servers(home)


def test_a_server_started_answers_a_clients_first_request_before_a_command_runs() -> None:
    """The server's first answer to a Prefect client's version check takes ~0.5 s: asked
    while the server starts, not in the first command's flow run; a server that does not
    answer it is left for the command to report."""
    asked: list[str] = []

    class Answer(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            asked.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'"3.9.1"')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        background._first_read(f"http://127.0.0.1:{server.server_port}/api")
    finally:
        server.shutdown()
    assert asked == ["/api/admin/version"]
    with socket.socket() as free:  # nothing listens there: no error
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    background._first_read(f"http://127.0.0.1:{port}/api")
