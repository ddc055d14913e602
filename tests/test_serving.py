"""Serving: a real Prefect server on PostgreSQL, `flor-flows serve`, runs started as the UI does.

One server and one serve process for the module: a training run, then backfills of new
statements over it, through the REST call the UI's Run button makes and through the UI's
Run form in a real browser (headless Chromium driven by Playwright).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.digits.batches import write_batches
from flor_flows.errors import FlorError
from flor_flows.server import server_env
from tests.conftest import Project, git

ROOT = Path(__file__).resolve().parents[1]
FLOR_FLOWS = str(Path(sys.executable).with_name("flor-flows"))
POSTGRES = "postgresql://postgres@127.0.0.1:5432"
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
V1 = ROOT / "examples" / "digits" / "versions" / "v1.py"
EPOCHS = 2
BATCH = "data/batches/2026-11-01.csv"
HINDSIGHT = "backfill/hindsight"
CHROMIUM = "/usr/bin/chromium"  # Debian's; CI installs it (.ci/run)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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


def test_prefect_yaml_defines_the_deployments() -> None:
    """The `prefect deploy` recipe: valid for Prefect's model, entrypoints importable."""
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    spec = PrefectYamlModel.model_validate(
        yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    )
    by_name = {d.name: d for d in spec.deployments}
    flows = {name: load_flow_from_entrypoint(d.entrypoint).name for name, d in by_name.items()}
    assert flows == {"on-demand": "train", "scheduled": "retrain", "hindsight": "backfill"}
    scheduled = by_name["scheduled"]
    assert scheduled.schedules[0].cron and scheduled.concurrency_limit.limit == 1
    assert scheduled.parameters["request"]["watch"]
    assert all(d.work_pool.name == "flor-flows" for d in spec.deployments)


def test_new_commands_help() -> None:
    for command, expected in [
        ("server", "PostgreSQL"),
        ("serve", "backfill/hindsight"),
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


# --- a real server, a real serve process, runs started like the UI's Run button -------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api(base: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One JSON call to the Prefect REST API; an HTTP error carries the server's answer."""
    request = urllib.request.Request(
        base + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        exc.add_note(exc.read().decode(errors="replace"))
        raise


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


@dataclass(frozen=True)
class Served:
    """A running Prefect server and a `flor-flows serve` process of `project`."""

    base: str  # the API, http://127.0.0.1:<port>/api
    project: Project
    logs: list[Path]

    @property
    def ui(self) -> str:
        return self.base.removesuffix("/api")

    def deployment(self, name: str) -> dict[str, Any]:
        """The deployment `flow/name`, once serve has registered it."""
        return wait_for(
            name, lambda: api(self.base, "GET", f"/deployments/name/{name}"), 60, self.logs
        )

    def run(self, deployment: dict[str, Any], parameters: dict[str, Any]) -> str:
        """Create a flow run as the UI's Run button does; returns its id."""
        path = f"/deployments/{deployment['id']}/create_flow_run"
        return api(self.base, "POST", path, {"parameters": parameters})["id"]

    def finished(self, flow_run_id: str, what: str, timeout: float) -> dict[str, Any]:
        """The flow run once it reached a final state."""

        def final() -> dict[str, Any] | None:
            run = api(self.base, "GET", f"/flow_runs/{flow_run_id}")
            return run if run["state_type"] in TERMINAL else None

        return wait_for(what, final, timeout, self.logs)


@pytest.fixture(scope="module")
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


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A git project whose train.py is the digits example v1, with 2 batches under data/."""
    project = Project(tmp_path_factory.mktemp("serving") / "proj")
    project.root.mkdir()
    git(project.root, "init", "-q", "-b", "main")
    (project.root / ".gitignore").write_text(".flor-flows/\ndata/\n")
    shutil.copyfile(V1, project.root / "train.py")
    project.commit("train.py v1")
    write_batches(project.root / "data", 2)
    return project


@pytest.fixture(scope="module")
def served(
    digits: Project, database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`flor-flows server` on the database and `flor-flows serve` of the digits project.

    Both must shut down cleanly (exit 0) at the end of the module.
    """
    home = tmp_path_factory.mktemp("prefect")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
    env = env | {"PREFECT_HOME": str(home / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    logs = [home / "server.log", home / "serve.log"]
    server = start(
        [FLOR_FLOWS, "server", "--database", database, "--port", str(port)], env, logs[0]
    )
    serve = None
    try:
        wait_for("the server's health", lambda: api(base, "GET", "/health"), 90, logs)
        serve_env = env | {"PREFECT_API_URL": base, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
        serve = start(
            [FLOR_FLOWS, "serve", "--project-dir", str(digits.root), "--cron", "0 3 * * *"]
            + ["--kwargs", f"epochs={EPOCHS}"],
            serve_env,
            logs[1],
        )
        yield Served(base, digits, logs)
    finally:
        exits = [None if p is None else stop(p) for p in (serve, server)]
    assert exits == [0, 0], "serve and the server must exit cleanly on SIGTERM"


@pytest.fixture(scope="module")
def trained(served: Served) -> dict[str, Any]:
    """The project's historical run: a training flow run started as the UI's Run button does."""
    deployment = served.deployment("train/on-demand")
    request = deployment["parameters"]["request"] | {"batch": BATCH}
    flow_run = served.finished(
        served.run(deployment, {"request": request}), "the training run", 150
    )
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    return flow_run


@pytest.mark.timeout(300)
def test_ui_run_of_served_deployment_trains_and_publishes(
    served: Served, trained: dict[str, Any]
) -> None:
    ui = api(served.ui, "GET", "/ui-settings")
    assert ui["api_url"] == served.base  # the UI finds the API on this port, not on 4200
    deployment = served.deployment("train/on-demand")
    defaults = deployment["parameters"]["request"]
    assert defaults["project"] == str(served.project.root)
    assert defaults["args"] == {"epochs": str(EPOCHS)}
    assert deployment["entrypoint"] == "flows.training.train"
    retrain = served.deployment("retrain/scheduled")
    assert [s["schedule"]["cron"] for s in retrain["schedules"]] == ["0 3 * * *"]
    assert retrain["global_concurrency_limit"]["limit"] == 1
    assert retrain["concurrency_options"]["collision_strategy"] == "ENQUEUE"

    nothing_new = served.run(retrain, {})  # its defaults: nothing arrived
    assert trained["name"] == "train-train.py-2026-11-01.csv"
    retrained = served.finished(nothing_new, "the retraining run", 60)
    assert retrained["state_type"] == "COMPLETED", retrained["state"]
    assert retrained["state"]["message"] == "no new data"

    artifacts = api(
        served.base,
        "POST",
        "/artifacts/filter",
        {"artifacts": {"flow_run_id": {"any_": [trained["id"]]}}},
    )
    by_key = {a["key"]: a for a in artifacts}
    assert {"proj-metrics", "proj-checkpoints", "proj-data", "proj-summary"} <= set(by_key)
    metrics = json.loads(by_key["proj-metrics"]["data"])
    losses = [row["loss (mean)"] for row in metrics if row.get("loss (mean)") is not None]
    assert losses and all(isinstance(loss, float) and loss > 0 for loss in losses)
    data = {row["name"]: row for row in json.loads(by_key["proj-data"]["data"])}
    sha = hashlib.sha256((served.project.root / BATCH).read_bytes()).hexdigest()
    assert data["batch"]["sha256"] == sha
    assert json.loads(by_key["proj-checkpoints"]["data"])
    summary = by_key["proj-summary"]["data"]

    runs = served.project.store().runs()
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "completed" and row["prefect_flow_run_id"] == trained["id"]
    assert f"# Run `{row['run_uid']}`: completed" in summary


# --- backfills of the historical run: new statements in today's working tree ---------------


def add_statement(project: Project, name: str, expression: str) -> None:
    """Today's train.py, not committed: v1 plus `flor.log(name, expression)` in each epoch."""
    anchor = '        acc = flor.log("acc", evaluate(net))\n'
    source = V1.read_text()
    assert anchor in source
    statement = f"        flor.log({name!r}, {expression})\n"
    (project.root / "train.py").write_text(source.replace(anchor, anchor + statement))


def assert_backfilled(
    project: Project, trained: dict[str, Any], name: str, expected: Callable[[float], float]
) -> None:
    """`name` holds a replayed value for each epoch of the historical run, `expected(acc)`."""
    store = project.store()
    runs = store.runs()
    assert runs["prefect_flow_run_id"].tolist() == [trained["id"]]  # no new run
    table = store.dataframe(["acc", name])
    assert table["epoch"].tolist() == list(range(EPOCHS))
    assert table[name].notna().all()
    assert table[name].tolist() == pytest.approx([expected(acc) for acc in table["acc"]])
    sources = store.query(f"SELECT DISTINCT source FROM logs WHERE name = '{name}'")
    assert sources["source"].tolist() == ["replay"]


@pytest.mark.timeout(240)
def test_ui_run_of_backfill_deployment_logs_a_new_statement_in_hindsight(
    served: Served, trained: dict[str, Any]
) -> None:
    hindsight = served.deployment(HINDSIGHT)
    assert hindsight["entrypoint"] == "flows.backfill.backfill"
    defaults = hindsight["parameters"]["request"]
    assert defaults["project"] == str(served.project.root) and "names" not in defaults

    add_statement(served.project, "acc_pct", "100 * acc")
    # The whole request, as the UI's form sends it: the server merges top-level parameters only.
    request = defaults | {"names": ["acc_pct"]}
    flow_run_id = served.run(hindsight, {"request": request, "dry_run": False})
    backfilled = served.finished(flow_run_id, "the backfill run", 180)
    assert backfilled["state_type"] == "COMPLETED", backfilled["state"]
    assert backfilled["name"] == "backfill-acc_pct"
    assert backfilled["state"]["message"] == "1 of 1 runs replayed"
    assert_backfilled(served.project, trained, "acc_pct", lambda acc: 100 * acc)


def submit_run_form(ui: str, deployment_id: str, names: list[str], screenshot: Path) -> None:
    """Open the deployment's Run form in headless Chromium, add `names`, press Submit.

    On failure the page is saved to `screenshot`.
    """
    from playwright.sync_api import sync_playwright  # CI installs it: missing is a failure

    # The form property labelled "Names" (not the `request` property around it).
    label = '.schema-form-property__label:text-is("Names")'
    names_field = f".schema-form-property:has(> .p-label__header {label})"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1600})
        page.set_default_timeout(60_000)
        try:
            page.goto(f"{ui}/deployments/deployment/{deployment_id}/run")
            field = page.locator(names_field)
            for i, name in enumerate(names):
                field.get_by_role("button", name="Add item").click()
                field.locator("textarea").nth(i).fill(name)
            page.get_by_role("button", name="Submit").click()
            # Submitted: the UI goes back to the deployment's page.
            page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment_id}(\?.*)?$"))
        except Exception as exc:
            page.screenshot(path=screenshot, full_page=True)
            exc.add_note(f"screenshot of the page: {screenshot}")
            raise
        finally:
            browser.close()


@pytest.mark.timeout(240)
def test_backfill_run_form_in_a_real_browser(
    served: Served, trained: dict[str, Any], tmp_path: Path
) -> None:
    assert Path(CHROMIUM).is_file(), f"no {CHROMIUM}: install Debian's chromium"
    hindsight = served.deployment(HINDSIGHT)
    add_statement(served.project, "err", "1 - acc")
    submit_run_form(served.ui, hindsight["id"], ["err"], tmp_path / "run-form.png")

    def created() -> dict[str, Any] | None:
        body = {"deployments": {"id": {"any_": [hindsight["id"]]}}}
        runs = api(served.base, "POST", "/flow_runs/filter", body)
        return next((r for r in runs if r["parameters"]["request"]["names"] == ["err"]), None)

    flow_run = wait_for("the flow run the form created", created, 30, served.logs)
    request = hindsight["parameters"]["request"] | {"names": ["err"]}
    assert flow_run["parameters"] == {"request": request, "dry_run": False}
    backfilled = served.finished(flow_run["id"], "the backfill run from the form", 180)
    assert backfilled["state_type"] == "COMPLETED", backfilled["state"]
    assert_backfilled(served.project, trained, "err", lambda acc: 1 - acc)


@pytest.mark.timeout(240)
def test_partial_request_takes_the_served_project(served: Served, trained: dict[str, Any]) -> None:
    """`prefect deployment run backfill/hindsight --params '{"request": {"names": [...]}}'`:
    Prefect replaces the deployment's whole default request, `project` included; the served
    run takes the project from the environment `flor-flows serve` gives it."""
    hindsight = served.deployment(HINDSIGHT)
    add_statement(served.project, "acc_half", "acc / 2")
    flow_run_id = served.run(hindsight, {"request": {"names": ["acc_half"]}})
    backfilled = served.finished(flow_run_id, "the partial request's backfill", 180)
    assert backfilled["state_type"] == "COMPLETED", backfilled["state"]
    assert backfilled["parameters"]["request"] == {"names": ["acc_half"]}
    assert_backfilled(served.project, trained, "acc_half", lambda acc: acc / 2)


@pytest.mark.timeout(120)
def test_bad_form_is_refused_before_work_starts(served: Served, trained: dict[str, Any]) -> None:
    hindsight = served.deployment(HINDSIGHT)
    # What the schema can say, the API refuses: no flow run is created.
    with pytest.raises(urllib.error.HTTPError) as refused:
        served.run(hindsight, {"request": {"names": ["grad norm"]}})
    assert refused.value.code == 409 and "request.names[0]" in refused.value.__notes__[0]
    # What only the --where compiler can judge fails the run at its first step, in one line.
    flow_run_id = served.run(hindsight, {"request": {"names": ["acc_pct"], "where": "acc <"}})
    failed = served.finished(flow_run_id, "the run with a bad where", 60)
    assert failed["state_type"] == "FAILED", failed["state"]
    message = failed["state"]["message"]
    assert "\n - request.where: 'acc <' is not an expression" in message, message
    assert "--where" not in message and "Traceback" not in message
    body = {"flow_runs": {"id": {"any_": [flow_run_id]}}}
    assert api(served.base, "POST", "/task_runs/filter", body) == []  # nothing ran
