"""A Prefect server that dies during `flor-flows train`: the run goes on, the command ends
short and truthful, and the next `flor-flows train` settles the flow run left Running."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import psutil
import pytest

from flor_flows.store import schema
from tests.conftest import Project

GRACE = 3.0  # seconds after its run ended that a flow run is settled (FLOR_FLOWS_RECONCILE_GRACE)
FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")
EPOCHS = 16

# About 8 s of training; it writes `started` a few epochs in, so the test knows when to strike.
SCRIPT = f"""
import time
from pathlib import Path

import flor_flows as flor

for epoch in flor.loop("epoch", range({EPOCHS})):
    time.sleep(0.5)
    flor.log("loss", 1.0 / (epoch + 1))
    if epoch == 1:
        Path("started").write_text("")
"""
QUICK = """
import flor_flows as flor

flor.log("quick", 1)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.2)
    return found


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
            return response.read().strip() == b"true"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


class Server:
    """`flor-flows server` on the SQLite database in `home` (a copy of a migrated one, see
    tests/conftest.py's `prefect_home`), started and killed at will."""

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home, self.env = home, env
        self.port = _free_port()
        self.api = f"http://127.0.0.1:{self.port}/api"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, log: Path) -> float:
        """Start it and wait until it answers; returns the seconds that took."""
        began = time.monotonic()
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [FLOR_FLOWS, "server", "--port", str(self.port)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # 8-20 s on 2 busy cores (the database is migrated already)
        _wait(lambda: _healthy(self.api) or self.process.poll() is not None, 120, "the server")
        assert self.process.poll() is None, log.read_text()[-3000:]
        return time.monotonic() - began

    def kill(self) -> None:
        """SIGKILL every process group of the server (Prefect's runs in a session of its own)."""
        if self.process is None:
            return
        try:
            groups = {os.getpgid(self.process.pid)}
            for child in psutil.Process(self.process.pid).children(recursive=True):
                groups.add(os.getpgid(child.pid))
        except (psutil.NoSuchProcess, ProcessLookupError):
            groups = set()
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.process.wait(timeout=10)
        _wait(lambda: not _healthy(self.api), 10, "the server to be gone")


def _flow_run_state(api: str, flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state.type.value


@pytest.mark.timeout(300)
def test_a_server_killed_during_train_leaves_a_true_store_and_no_orphan(
    project: Project, tmp_path: Path, prefect_home: Path
) -> None:
    project.write("train.py", SCRIPT)
    project.write("quick.py", QUICK)
    (project.root / ".gitignore").write_text(".flor-flows/\nstarted\n")
    project.commit("a slow and a quick script")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))}
    env |= {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",  # as the rest of the suite; errors still show
    }
    server = Server(prefect_home, env)
    try:
        first_start = server.start(tmp_path / "server-1.log")
        client_env = env | {"PREFECT_API_URL": server.api}
        out, err = tmp_path / "train.out", tmp_path / "train.err"
        with out.open("w") as stdout, err.open("w") as stderr:
            train = subprocess.Popen(
                [FLOR_FLOWS, "train", "train.py"],
                cwd=project.root,
                env=client_env,
                stdout=stdout,
                stderr=stderr,
            )
        try:
            _wait(
                lambda: (project.root / "started").exists() or train.poll() is not None,
                120,
                "the training script to start",
            )
            assert train.poll() is None, err.read_text()[-3000:]
            killed = time.monotonic()
            server.kill()
            code = train.wait(timeout=90)
            took = time.monotonic() - killed
        finally:
            if train.poll() is None:
                train.kill()
        stderr_lines = err.read_text().splitlines()
        print(f"server start {first_start:.1f} s; train exited {code} {took:.1f} s after the kill")
        print("\n".join(stderr_lines))
        assert code == 0, err.read_text()[-3000:]
        assert len(stderr_lines) <= 10 and "Traceback" not in err.read_text()
        uid = out.read_text().split()[-1]
        warning = next(line for line in stderr_lines if "went away" in line)
        assert server.api in warning and f"run {uid} completed in the store" in warning
        assert "stays Running" in warning

        store = project.store()
        run = store.runs().set_index("run_uid").loc[uid]
        assert run["status"] == "completed"
        assert store.dataframe(["loss"])["loss"].tolist() == [1.0 / (e + 1) for e in range(EPOCHS)]
        flow_run_id = run["prefect_flow_run_id"]

        # The server again, on the same database: the flow run is still Running there ...
        second_start = server.start(tmp_path / "server-2.log")
        assert _flow_run_state(server.api, flow_run_id) == "RUNNING"
        # ... until the next `flor-flows train` (once the run has ended GRACE ago)
        ended = run["ended_at"].to_pydatetime()
        time.sleep(max(0.0, GRACE - (datetime.now(UTC) - ended).total_seconds()))
        began = time.monotonic()
        quick = subprocess.run(
            [FLOR_FLOWS, "train", "quick.py"],
            cwd=project.root,
            env=client_env | {"FLOR_FLOWS_RECONCILE_GRACE": str(GRACE)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        print(
            f"server restart {second_start:.1f} s; "
            f"reconciling train {time.monotonic() - began:.1f} s"
        )
        assert quick.returncode == 0, quick.stderr[-3000:]
        assert "1 flow run(s) left Running" in quick.stderr
        assert _flow_run_state(server.api, flow_run_id) == "COMPLETED"
    finally:
        server.kill()


# A run of about 3 s; version 2 adds the statement the backfill computes.
CHECKPOINTED = """
import time

import flor_flows as flor

model = {"w": 0.0}
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(6)):
        time.sleep(0.5)
        model["w"] += epoch
        flor.log("loss", 1.0 / (epoch + 1))
"""
NEW_STATEMENT = '        flor.log("w", model["w"])\n'


@pytest.mark.timeout(400)
def test_a_server_killed_during_a_backfill_lets_it_finish_and_the_next_call_settles_it(
    project: Project, tmp_path: Path, prefect_home: Path
) -> None:
    project.write("train.py", CHECKPOINTED)
    project.commit("v1")
    for _ in range(3):
        project.run("train.py")
    project.write("train.py", CHECKPOINTED + NEW_STATEMENT)
    project.commit("v2: log w")
    store = project.store()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))}
    env |= {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
    }
    server = Server(prefect_home, env)
    try:
        server.start(tmp_path / "server-1.log")
        client_env = env | {"PREFECT_API_URL": server.api, "FLOR_FLOWS_RECONCILE_GRACE": str(GRACE)}
        replay = [FLOR_FLOWS, "replay", "--apply", "w", "--max-parallel", "1"]
        err = tmp_path / "replay.err"
        with err.open("w") as stderr:
            backfill = subprocess.Popen(
                replay, cwd=project.root, env=client_env, stdout=subprocess.PIPE, stderr=stderr
            )
        try:
            _wait(
                lambda: _column(store, schema.Replay.id) or backfill.poll() is not None,
                120,
                "the first replay to start",
            )
            assert backfill.poll() is None, err.read_text()[-3000:]
            killed = time.monotonic()
            server.kill()
            out, _ = backfill.communicate(timeout=120)
            took = time.monotonic() - killed
        finally:
            if backfill.poll() is None:
                backfill.kill()
        stderr_lines = err.read_text().splitlines()
        print(f"replay exited {backfill.returncode} {took:.1f} s after the kill")
        print("\n".join(stderr_lines))
        assert backfill.returncode == 0, err.read_text()[-3000:]
        assert len(stderr_lines) <= 10 and "Traceback" not in err.read_text()
        warning = next(line for line in stderr_lines if "went away" in line)
        assert server.api in warning and "3 replayed in the store" in warning

        # Every run was replayed, although the API went away after the first replay began
        runs = store.runs()
        frame = store.dataframe(["w"]).dropna(subset=["w"])
        assert sorted(frame["run_uid"].unique()) == sorted(runs["run_uid"])
        expected = [float(sum(range(e + 1))) for e in range(6)]
        for _, per_run in frame.sort_values("epoch").groupby("run_uid"):
            assert per_run["w"].tolist() == expected
        (backfill_id,) = _column(store, schema.Backfill.id)
        assert set(store.backfill_status(backfill_id).values()) == {"replayed"}
        (flow_run_id,) = set(_column(store, schema.BackfillItem.prefect_flow_run_id))

        # The server again: the backfill's flow run is still Running there ...
        server.start(tmp_path / "server-2.log")
        assert _flow_run_state(server.api, flow_run_id) == "RUNNING"
        time.sleep(GRACE)
        # ... until the next command of the project (here: nothing left to replay)
        again = subprocess.run(
            replay, cwd=project.root, env=client_env, capture_output=True, text=True, timeout=120
        )
        assert again.returncode == 0, again.stderr[-3000:]
        assert "1 flow run(s) left Running" in again.stderr
        assert _flow_run_state(server.api, flow_run_id) == "COMPLETED"
    finally:
        server.kill()


def _column(store: object, column: object) -> list[object]:
    """The values of a store's `column` (a schema attribute), read as a test would."""
    from sqlalchemy import select

    with store.engine.connect() as conn:  # type: ignore[attr-defined]
        return list(conn.scalars(select(column)))
