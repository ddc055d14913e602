"""Serving: a real Prefect server on PostgreSQL, `flor-flows serve`, a run started as the UI does."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.digits.batches import write_batches
from flor_flows.errors import FlorError
from flor_flows.server import server_env
from tests.conftest import Project

ROOT = Path(__file__).resolve().parents[1]
FLOR_FLOWS = str(Path(sys.executable).with_name("flor-flows"))
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@db:5432/prefect", "postgresql+asyncpg://u:p@db:5432/prefect"),
        ("postgresql+psycopg://u@db/prefect", "postgresql+asyncpg://u@db/prefect"),
        ("postgres://u@db/prefect?ssl=require", "postgresql+asyncpg://u@db/prefect?ssl=require"),
        ("postgresql+psycopg2://u@db/prefect", "postgresql+asyncpg://u@db/prefect"),
        ("postgresql+asyncpg://u@db/prefect", "postgresql+asyncpg://u@db/prefect"),
        ("sqlite:////srv/prefect.db", "sqlite+aiosqlite:////srv/prefect.db"),
        ("sqlite:///prefect.db", "sqlite+aiosqlite:///prefect.db"),
    ],
)
def test_server_env_converts_to_async_drivers(url: str, expected: str) -> None:
    env = server_env(url, "0.0.0.0", 4300)
    assert env == {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": expected,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": "http://0.0.0.0:4300/api",
    }


def test_server_env_default_database_and_unsupported_urls() -> None:
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in server_env(None, "127.0.0.1", 4200)
    for url in ("mysql://u@db/prefect", "prefect.db", "sqlite://"):
        with pytest.raises(FlorError, match="database"):
            server_env(url, "127.0.0.1", 4200)


def test_prefect_yaml_defines_both_deployments() -> None:
    """The `prefect deploy` recipe: valid for Prefect's model, entrypoints importable."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    spec = PrefectYamlModel.model_validate(
        yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    )
    by_name = {d.name: d for d in spec.deployments}
    assert set(by_name) == {"on-demand", "scheduled"}
    flows = {name: load_flow_from_entrypoint(d.entrypoint).name for name, d in by_name.items()}
    assert flows == {"on-demand": "train", "scheduled": "retrain"}
    scheduled = by_name["scheduled"]
    assert scheduled.schedules[0].cron and scheduled.concurrency_limit.limit == 1
    assert scheduled.parameters["request"]["watch"]
    assert all(d.work_pool.name == "flor-flows" for d in spec.deployments)


def test_new_commands_help() -> None:
    for command, expected in [
        ("server", "PostgreSQL"),
        ("serve", "train/on-demand"),
        ("train", "--no-warm-start"),
    ]:
        helped = subprocess.run(
            [FLOR_FLOWS, command, "--help"], capture_output=True, text=True, timeout=60
        )
        assert helped.returncode == 0 and expected in helped.stdout, helped.stderr


def test_serve_needs_a_server(project: Project, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    served = subprocess.run(
        [FLOR_FLOWS, "serve", "--project-dir", str(project.root)],
        env=env | {"PREFECT_HOME": str(tmp_path / "prefect-home")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert served.returncode == 2
    assert "PREFECT_API_URL" in served.stderr and "flor-flows server" in served.stderr


# --- a real server, a real serve process, a run started like the UI's Run button -----------


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh PostgreSQL database for the Prefect server, dropped afterwards."""
    import psycopg

    name = f"flor_flows_serving_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def digits(project: Project) -> Project:
    """A project whose train.py is the digits example v1, with 2 batches under data/."""
    (project.root / ".gitignore").write_text(".flor-flows/\ndata/\n")
    shutil.copyfile(ROOT / "examples" / "digits" / "versions" / "v1.py", project.root / "train.py")
    project.commit("train.py v1")
    write_batches(project.root / "data", 2)
    return project


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One JSON call to the Prefect REST API."""
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(what: str, probe: Any, timeout: float, logs: list[Path]) -> Any:
    """Poll `probe` until it returns something truthy; fail with the processes' logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = probe()
        except (urllib.error.URLError, ConnectionError):
            found = None
        if found:
            return found
        time.sleep(0.5)
    tails = "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in logs)
    pytest.fail(f"timed out after {timeout} s waiting for {what}\n{tails}")


def run_deployment(base: str, deployment_id: str, parameters: dict[str, Any]) -> str:
    """Create a flow run as the UI's Run button does; returns its id."""
    path = f"/deployments/{deployment_id}/create_flow_run"
    return api(base, "POST", path, {"parameters": parameters})["id"]


def finished(base: str, flow_run_id: str) -> dict[str, Any] | None:
    """The flow run once it is in a final state, else None."""
    run = api(base, "GET", f"/flow_runs/{flow_run_id}")
    return run if run["state_type"] in TERMINAL else None


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> int | None:
    """SIGTERM (which `flor-flows server` forwards to Prefect's), then the exit code.

    None if it had to be killed: a killed `flor-flows server` would orphan its server.
    """
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


@pytest.mark.timeout(300)
def test_ui_run_of_served_deployment_trains_and_publishes(
    digits: Project, database: str, tmp_path: Path
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    logs = [tmp_path / "server.log", tmp_path / "serve.log"]
    server = start(
        [FLOR_FLOWS, "server", "--database", database, "--port", str(port)], env, logs[0]
    )
    serve = None
    try:
        wait_for("the server's health", lambda: api(base, "GET", "/health"), 90, logs)
        ui = api(base.removesuffix("/api"), "GET", "/ui-settings")
        assert ui["api_url"] == base  # the UI finds the API on this port, not on 4200
        serve_env = env | {"PREFECT_API_URL": base, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        serve = start(
            [FLOR_FLOWS, "serve", "--project-dir", str(digits.root), "--cron", "0 3 * * *"]
            + ["--kwargs", "epochs=1"],
            serve_env,
            logs[1],
        )
        deployment = wait_for(
            "the train/on-demand deployment",
            lambda: api(base, "GET", "/deployments/name/train/on-demand"),
            60,
            logs,
        )
        defaults = deployment["parameters"]["request"]
        assert defaults["project"] == str(digits.root) and defaults["args"] == {"epochs": "1"}
        assert deployment["entrypoint"] == "flows.training.train"
        retrain = wait_for(
            "the retrain/scheduled deployment",
            lambda: api(base, "GET", "/deployments/name/retrain/scheduled"),
            30,
            logs,
        )
        assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 3 * * *"]
        assert retrain["global_concurrency_limit"]["limit"] == 1
        assert retrain["concurrency_options"]["collision_strategy"] == "ENQUEUE"

        batch = "data/batches/2026-11-01.csv"
        request = defaults | {"batch": batch, "args": {"epochs": "1"}}
        flow_run_id = run_deployment(base, deployment["id"], {"request": request})
        nothing_new = run_deployment(base, retrain["id"], {})  # its defaults: nothing arrived
        trained = wait_for("the training run", lambda: finished(base, flow_run_id), 150, logs)
        assert trained["state_type"] == "COMPLETED", trained["state"]
        assert trained["name"] == "train-train.py-2026-11-01.csv"
        retrained = wait_for("the retraining run", lambda: finished(base, nothing_new), 60, logs)
        assert retrained["state_type"] == "COMPLETED", retrained["state"]
        assert retrained["state"]["message"] == "no new data"

        artifacts = api(
            base,
            "POST",
            "/artifacts/filter",
            {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}},
        )
        by_key = {a["key"]: a for a in artifacts}
        assert set(by_key) == {"proj-metrics", "proj-checkpoints", "proj-data", "proj-summary"}
        metrics = json.loads(by_key["proj-metrics"]["data"])
        losses = [row["loss"] for row in metrics if row.get("loss") is not None]
        assert losses and all(isinstance(loss, float) and loss > 0 for loss in losses)
        data = {row["name"]: row for row in json.loads(by_key["proj-data"]["data"])}
        sha = hashlib.sha256((digits.root / batch).read_bytes()).hexdigest()
        assert data["batch"]["sha256"] == sha
        assert json.loads(by_key["proj-checkpoints"]["data"])
        summary = by_key["proj-summary"]["data"]

        runs = digits.store().runs()
        assert len(runs) == 1
        row = runs.iloc[0]
        assert row["status"] == "completed" and row["prefect_flow_run_id"] == flow_run_id
        assert f"# Run `{row['run_uid']}`: completed" in summary

        assert stop(serve) == 0
        serve = None
        assert stop(server) == 0
    finally:
        for process in (serve, server):
            if process is not None and process.poll() is None:
                stop(process)
