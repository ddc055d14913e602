"""Artifacts people can read: tables per outer iteration, charts, backfill status and names.

Plain-function tests on the store of real recorded runs, then real flow runs (training,
backfill, retraining) whose artifacts and names are read back from the Prefect API.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from flor_flows.replay.backfill import BackfillRequest
from flor_flows.training import artifacts
from flor_flows.training.request import RetrainingRequest, TrainingRequest
from flows.backfill import backfill
from flows.retraining import retrain
from flows.training import train
from tests.conftest import Project

NESTED = """
import numpy as np
import flor_flows as flor
w = np.zeros(2)
rate = flor.arg("rate", 0.1)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        for step in flor.loop("step", range(4)):
            w += rate
            flor.log("loss", 1.0 / (1 + float(w.sum())))
        acc = flor.log("acc", float(w.sum()) / 3)
"""
TWICE = NESTED + '        flor.log("twice", 2 * acc)\n'
EVERY = {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}


def _flow_artifacts(state: Any) -> list[Any]:  # noqa: ANN401 - a Prefect State
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )


def _by_key(state: Any) -> dict[str, Any]:  # noqa: ANN401 - a Prefect State
    return {a.key: a for a in _flow_artifacts(state)}


def _rows(artifact: Any) -> list[dict[str, Any]]:  # noqa: ANN401 - a Prefect artifact
    return json.loads(artifact.data)


def _svg_texts(markdown: str) -> list[str]:
    (data,) = re.findall(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown)
    return re.findall(r">([^<>]+)</text>", base64.b64decode(data).decode())


def _flow_run_name(state: Any) -> str:  # noqa: ANN401 - a Prefect State
    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id).name


def test_metrics_are_one_row_per_epoch_with_nested_values_summarised(project: Project) -> None:
    project.write("train.py", NESTED)
    project.commit("nested")
    project.run("train.py")
    store = project.store()
    uid = store.runs()["run_uid"].iloc[0]

    table = artifacts.metrics_table(artifacts.run_metrics(store, uid), uid)
    assert [list(row) for row in table.rows] == [["epoch", "loss (last)", "loss (mean)", "acc"]] * 3
    steps = store.dataframe(["loss", "acc"])
    assert len(steps) == 12
    means = steps.groupby("epoch")["loss"].mean().tolist()
    lasts = steps.groupby("epoch")["loss"].last().tolist()
    assert [r["loss (mean)"] for r in table.rows] == [float(f"{m:.5g}") for m in means]
    assert [r["loss (last)"] for r in table.rows] == [float(f"{v:.5g}") for v in lasts]
    assert table.rows[2]["acc"] == float(f"{2.4 / 3:.5g}")  # 0.8 to 5 digits, not 0.7999999
    assert "one row per `epoch` (3 rows)" in table.description
    assert "`loss` logged in nested loops" in table.description
    assert "`flor-flows dataframe loss,acc`" in table.description
    assert "rows shown" not in table.description  # nothing left out

    checkpoints = artifacts.checkpoints_table(store, uid)
    assert [list(c) for c in checkpoints][0] == [
        "loop", "iteration", "size", "seconds", "bytes", "uri", "sha256",
    ]  # fmt: skip
    assert [c["iteration"] for c in checkpoints][-1] == 2
    assert all(re.fullmatch(r"\d+ B|\d+\.\d (KiB|MiB)", c["size"]) for c in checkpoints)
    assert all(len(repr(c["seconds"])) <= 8 for c in checkpoints)

    texts = _svg_texts(artifacts.metrics_chart(artifacts.run_metrics(store, uid), uid))
    assert {"loss (mean)", "acc", "epoch"} <= set(texts)


def test_a_long_table_says_how_many_rows_it_shows_and_which(project: Project) -> None:
    project.write(
        "train.py",
        'import flor_flows as flor\nfor epoch in flor.loop("epoch", range(600)):\n'
        '    flor.log("x", epoch / 7)\n',
    )
    project.commit("long")
    project.run("train.py")
    store = project.store()
    uid = store.runs()["run_uid"].iloc[0]
    table = artifacts.metrics_table(artifacts.run_metrics(store, uid), uid)
    assert len(table.rows) == artifacts.MAX_ROWS == 500
    assert "500 of 600 rows shown: the first 250 and the last 250" in table.description
    epochs = [row["epoch"] for row in table.rows]
    assert epochs[:2] == [0, 1] and epochs[249:251] == [249, 350] and epochs[-1] == 599
    assert table.rows[1]["x"] == 0.14286  # 1/7 to 5 significant digits


def test_training_runs_publish_tables_charts_and_the_project_history(project: Project) -> None:
    project.write("train.py", NESTED)
    project.commit("nested")
    request = TrainingRequest(project=str(project.root), script="train.py")
    first, second = (train(request, return_state=True) for _ in range(2))
    assert first.is_completed() and second.is_completed(), second.message
    uids = [first.result(), second.result()]

    found = _by_key(second)
    expected = {"metrics", "metrics-chart", "history", "checkpoints", "data", "summary"}
    assert set(found) == {f"proj-{name}" for name in expected}
    assert all(a.description for a in found.values())
    assert uids[1] in found["proj-metrics"].description
    metrics = _rows(found["proj-metrics"])
    assert [row["epoch"] for row in metrics] == [0, 1, 2]
    assert not any("ctx_id" in row for row in _rows(found["proj-checkpoints"]))

    assert found["proj-metrics-chart"].type == "markdown"
    history = _svg_texts(found["proj-history"].data)
    shorts = [artifacts.short_uid(uid) for uid in uids]
    assert set(shorts) <= set(history) and "acc" in history  # one point per run
    with get_client(sync_client=True) as client:
        (latest,) = client.read_latest_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["proj-history"]))
        )
    assert latest.flow_run_id == second.state_details.flow_run_id


def test_a_backfill_shows_status_result_and_chart_per_code_version(project: Project) -> None:
    project.write("train.py", NESTED)
    commits = [project.commit("v1")]
    project.run("train.py", env=EVERY)
    project.write("train.py", NESTED + "# v2\n")
    commits.append(project.commit("v2"))
    project.run("train.py", env=EVERY)
    project.write("train.py", TWICE)  # today's statement, not committed

    state = backfill(BackfillRequest(project=str(project.root), names=["twice"]), return_state=True)
    assert state.is_completed(), state.message
    assert _flow_run_name(state) == "backfill-twice"
    every = _flow_artifacts(state)
    assert all(a.description for a in every)
    found = {a.key: a for a in every}
    diffs = {f"proj-backfill-diff-{c[:10]}" for c in commits}
    parts = {"plan", "progress", "status", "result", "chart"}
    assert set(found) == {f"proj-backfill-{p}" for p in parts} | diffs

    uids = project.store().runs()["run_uid"].tolist()
    status = _rows(found["proj-backfill-status"])
    assert [row["run"] for row in status] == [artifacts.short_uid(u) for u in uids]
    assert [row["version"] for row in status] == [c[:10] for c in commits]
    assert {row["status"] for row in status} == {"replayed"}
    assert all(row["seconds"] > 0 and row["error"] is None for row in status)
    assert [a.key for a in every].count("proj-backfill-status") == 1  # updated in place
    assert "2 replayed" in found["proj-backfill-status"].description

    result = _rows(found["proj-backfill-result"])
    assert len(result) == 6  # 2 runs x 3 epochs
    assert list(result[0])[:4] == ["run", "version", "epoch", "twice"]
    assert result[0]["version"] == commits[0][:10]
    assert result[5]["twice"] == pytest.approx(2 * 2.4 / 3, rel=1e-4)
    assert "`flor-flows dataframe twice`" in found["proj-backfill-result"].description
    chart = _svg_texts(found["proj-backfill-chart"].data)
    assert f"{artifacts.short_uid(uids[1])} @ {commits[1][:10]}" in chart


def test_retraining_runs_are_named_after_their_batches(project: Project) -> None:
    project.write(
        "train.py",
        'import flor_flows as flor\nrows = open(flor.data("batch", "none.csv")).read().count("\\n")\n'
        'flor.log("rows", rows)\n',
    )
    (project.root / ".gitignore").write_text(".flor-flows/\ndata/\n")
    project.commit("counts rows")
    incoming = project.root / "data" / "incoming"
    incoming.mkdir(parents=True)
    request = RetrainingRequest(project=str(project.root), watch="data/incoming/*.csv")

    (incoming / "2026-11-01.csv").write_text("a\n1\n")
    one = retrain(request, return_state=True)
    assert one.is_completed(), one.message
    assert _flow_run_name(one) == "retrain-2026-11-01.csv"
    (uid,) = one.result()
    assert one.message == f"trained on 2026-11-01.csv (run {uid})"

    (incoming / "2026-11-02.csv").write_text("a\n1\n2\n")
    (incoming / "2026-11-03.csv").write_text("a\n")
    two = retrain(request, return_state=True)
    assert _flow_run_name(two) == "retrain-2-batches"
    assert "2026-11-02.csv (run " in two.message and "2026-11-03.csv (run " in two.message

    idle = retrain(request, return_state=True)
    assert _flow_run_name(idle) == "retrain-no-new-data" and idle.message == "no new data"
