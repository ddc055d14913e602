"""What a user sees in the Prefect UI: a real `flor-flows server`, real training and backfill
flow runs against it, and its pages in headless Chromium (Playwright).

The test walks a training run's artifacts and charts, a backfill's status and result, and
the project's history chart; it checks that the charts are displayed images and the key
columns are on the page, and saves a screenshot of each page under $UI_SCREENSHOTS
(default: the test's tmp_path).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Project
from tests.flows.test_artifacts import NESTED, TWICE
from tests.test_serving import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FLOR_FLOWS,
    api,
    free_port,
    start,
    stop,
    wait_for,
)

# Two training runs, then (once today's statement is in train.py) a backfill; prints the
# flow run ids and final states as JSON.
RUNS = """
import json, sys
from flor_flows.replay.backfill import BackfillRequest
from flor_flows.training.request import TrainingRequest
from flows.backfill import backfill
from flows.training import train

project, what = sys.argv[1], sys.argv[2]
if what == "train":
    requests = [TrainingRequest(project=project, args={"rate": r}) for r in (0.05, 0.1)]
    states = [train(request, return_state=True) for request in requests]
else:
    states = [backfill(BackfillRequest(project=project, names=["twice"]), return_state=True)]
print(json.dumps([[str(s.state_details.flow_run_id), s.type.value] for s in states]))
"""


@pytest.fixture
def server(tmp_path: Path, prefect_home: Path) -> Iterator[tuple[str, dict[str, str], list[Path]]]:
    """`flor-flows server` on SQLite in a fresh PREFECT_HOME (a migrated database, see
    tests/conftest.py): its API URL, the clients' env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))}
    env |= {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}/api"
    logs = [tmp_path / "server.log"]
    process = start([FLOR_FLOWS, "server", "--port", str(port)], env, logs[0])
    try:
        wait_for("the server's health", lambda: api(base, "GET", "/health"), 120, logs)
        yield base, env | {"PREFECT_API_URL": base}, logs
    finally:
        stop(process)


def _flow_runs(project: Project, what: str, env: dict[str, str]) -> list[str]:
    """Run the flow runs of `what` (train or backfill) against the server; their ids."""
    done = subprocess.run(
        [sys.executable, "-c", RUNS, str(project.root), what],
        cwd=Path(__file__).resolve().parents[1],
        env=env | {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    states = json.loads(done.stdout.strip().splitlines()[-1])
    assert [state for _, state in states] == ["COMPLETED"] * len(states), done.stderr[-3000:]
    return [flow_run_id for flow_run_id, _ in states]


def _artifacts(base: str, flow_run_id: str) -> dict[str, dict[str, Any]]:
    found = api(
        base, "POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}}
    )
    return {a["key"]: a for a in found}


def _chart_width(page: Any) -> int:  # noqa: ANN401 - a Playwright page
    """The natural width of the page's chart image, once it is displayed (0: broken)."""
    image = page.locator("img[src^='data:image/svg+xml']").first
    image.wait_for()
    image.scroll_into_view_if_needed()
    return page.evaluate("img => img.complete ? img.naturalWidth : -1", image.element_handle())


@pytest.mark.timeout(900)
def test_the_ui_shows_tables_charts_status_and_history(
    project: Project, server: tuple[str, dict[str, str], list[Path]], tmp_path: Path
) -> None:
    from playwright.sync_api import Error, expect, sync_playwright  # CI installs it
    from playwright.sync_api import TimeoutError as Unanswered

    assert Path(CHROMIUM).is_file(), f"no {CHROMIUM}: install Debian's chromium"
    base, env, logs = server
    ui = base.removesuffix("/api")
    shots = Path(os.environ.get("UI_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    project.write("train.py", NESTED)
    project.commit("nested loops")
    first, second = _flow_runs(project, "train", env)
    project.write("train.py", TWICE)
    (backfilled,) = _flow_runs(project, "backfill", env)
    trained, backfill = _artifacts(base, second), _artifacts(base, backfilled)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)

        def visit(artifact: dict[str, Any], name: str, columns: tuple[str, ...] = ()) -> None:
            """Open the artifact's page: its `columns` are table headers on it, or (none
            given) its chart is a displayed image; save a screenshot."""
            page.goto(f"{ui}/artifacts/artifact/{artifact['id']}")
            for column in columns:
                expect(page.locator("th", has_text=column).first).to_be_visible()
            if not columns:
                assert _chart_width(page) > 0, f"the chart of {artifact['key']} is not displayed"
            page.wait_for_load_state("networkidle")
            page.screenshot(path=shots / f"{name}.png")

        try:
            page.goto(f"{ui}/runs/flow-run/{second}")
            page.wait_for_load_state("networkidle")
            card = page.get_by_text("proj-metrics-chart", exact=True).first  # a card, below
            for _ in range(5):  # a click before the page handles it switches no tab: again
                page.get_by_text("Artifacts", exact=True).click()
                try:
                    card.wait_for(state="attached", timeout=10_000)
                    break
                except Unanswered:
                    continue
            card.wait_for(state="attached")
            page.screenshot(path=shots / "training-run-artifacts.png")
            card.scroll_into_view_if_needed()
            expect(card).to_be_visible()

            visit(trained["proj-metrics"], "training-metrics", ("epoch", "loss (mean)", "acc"))
            visit(trained["proj-metrics-chart"], "training-chart")
            visit(trained["proj-history"], "project-history")  # the key's latest version

            plan = ("iterations", "estimated_seconds", "fork_server_seconds")
            visit(backfill["proj-backfill-plan"], "backfill-plan", plan)
            status = ("run", "version", "status", "seconds", "error")
            visit(backfill["proj-backfill-status"], "backfill-status", status)
            expect(page.get_by_text("replayed").first).to_be_visible()
            result = ("run", "version", "epoch", "twice")
            visit(backfill["proj-backfill-result"], "backfill-result", result)
            visit(backfill["proj-backfill-chart"], "backfill-chart")
        except (Error, AssertionError) as exc:
            page.screenshot(path=shots / "failure.png")
            exc.add_note(f"screenshots: {shots}; server log: {logs[0]}")
            raise
        finally:
            browser.close()
    assert first != second
    assert len(list(shots.glob("*.png"))) == 8
