"""The work-pool recipe, deployed for real: `prefect deploy --all` of deployments/prefect.yaml
against a Prefect server, read back through the REST API (issues 16.4, 16.5 and 14.4).

No worker runs here: the flow runs created are only checked by the API's schema validation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project, seed_prefect_home
from tests.test_serving import FLOR_FLOWS, ROOT, api, free_port, start, stop, wait_for

PREFECT = str(Path(sys.executable).with_name("prefect"))


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, migrated_prefect_db: Path
) -> Iterator[tuple[str, Path]]:
    """A Prefect server with the recipe's three deployments of a project; (API, project)."""
    home = tmp_path_factory.mktemp("deployed")
    project = Project(home / "proj")
    project.root.mkdir()
    project.write("train.py", "import flor_flows as flor\n")
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
    env |= {"PREFECT_HOME": str(seed_prefect_home(home / "prefect-home", migrated_prefect_db))}
    env.pop("PREFECT_API_URL", None)
    log = home / "server.log"
    server = start([FLOR_FLOWS, "server", "--port", str(port)], env, log)
    try:
        wait_for("the server's health", lambda: api(base, "GET", "/health"), 90, [log])
        env |= {"PREFECT_API_URL": base, "FLOR_FLOWS_PROJECT_DIR": str(project.root)}
        for command in (
            [PREFECT, "work-pool", "create", "flor-flows", "--type", "process"],
            [PREFECT, "--no-prompt", "deploy", "--all"],
        ):
            done = subprocess.run(
                command,
                cwd=ROOT / "deployments",
                env=env,
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert done.returncode == 0, done.stdout + done.stderr
        yield base, project.root
    finally:
        assert stop(server) == 0


def deployment(base: str, name: str) -> dict[str, Any]:
    return api(base, "GET", f"/deployments/name/{name}")


def test_scheduled_retraining_is_deployed_paused(deployed: tuple[str, Path]) -> None:
    base, _ = deployed
    scheduled = deployment(base, "retrain/scheduled")
    assert scheduled["paused"] is True
    assert [s["schedule"]["cron"] for s in scheduled["schedules"]] == ["*/10 * * * *"]
    assert "prefect deployment resume retrain/scheduled" in scheduled["description"]
    assert deployment(base, "train/on-demand")["paused"] is False


def test_flow_runs_get_the_project_in_their_environment(deployed: tuple[str, Path]) -> None:
    """A partial request (Prefect drops the default `project`) takes it from there."""
    base, project = deployed
    for name in ("train/on-demand", "retrain/scheduled", "backfill/hindsight"):
        found = deployment(base, name)
        assert found["job_variables"]["env"] == {"FLOR_FLOWS_PROJECT_DIR": str(project)}, name
        assert found["parameters"]["request"]["project"] == str(project), name


def test_api_checks_the_form_when_a_run_is_created(deployed: tuple[str, Path]) -> None:
    base, _ = deployed
    on_demand = deployment(base, "train/on-demand")
    path = f"/deployments/{on_demand['id']}/create_flow_run"
    request = on_demand["parameters"]["request"] | {"args": {"lr": 0.01, "nesterov": True}}
    created = api(base, "POST", path, {"parameters": {"request": request}})
    assert created["parameters"]["request"]["args"] == {"lr": 0.01, "nesterov": True}
    bad = on_demand["parameters"]["request"] | {"args": {"learning rate": 0.01}}
    with pytest.raises(urllib.error.HTTPError) as refused:
        api(base, "POST", path, {"parameters": {"request": bad}})
    assert refused.value.code == 409 and "request.args" in refused.value.__notes__[0]
