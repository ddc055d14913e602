"""The training flow as real Prefect flow runs: versioning, lineage, failures, artifacts."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flor_flows.training.request import TrainingRequest
from flows.training import train
from tests.conftest import Project, git

BATCH = "data/batches/2026-11-0{}.csv"


def _train(project: Project, day: int, **fields: Any):  # noqa: ANN202 - a Prefect State
    fields.setdefault("args", {"epochs": "2"})
    request = TrainingRequest(project=str(project.root), batch=BATCH.format(day), **fields)
    return train(request, return_state=True)


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found}


def _table(artifact: Any) -> list[dict[str, Any]]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def test_a_training_flow_run_versions_everything_and_publishes_tables(digits: Project) -> None:
    state = _train(digits, 1)
    assert state.is_completed(), state.message
    uid = state.result()
    flow_run_id = state.state_details.flow_run_id

    store = digits.store()
    run = store.runs().set_index("run_uid").loc[uid]
    assert run["status"] == "completed"
    assert run["prefect_flow_run_id"] == str(flow_run_id)
    assert run["code_version"] == git(digits.root, "rev-parse", f"refs/flor/runs/{uid}")
    assert run["data.batch"].endswith("2026-11-01.csv")
    assert run["epochs"] == 2

    artifacts = _artifacts(flow_run_id)
    assert {"proj-metrics", "proj-checkpoints", "proj-data", "proj-summary"} <= set(artifacts)
    metrics = _table(artifacts["proj-metrics"])  # one row per epoch, steps summarised
    losses = store.dataframe(["loss"]).groupby("epoch")["loss"]
    assert [row["epoch"] for row in metrics] == [0, 1]
    assert [row["loss (mean)"] for row in metrics] == pytest.approx(losses.mean(), rel=1e-4)
    assert [row["loss (last)"] for row in metrics] == pytest.approx(losses.last(), rel=1e-4)
    assert all(row["acc"] is not None for row in metrics)

    checkpoints = _table(artifacts["proj-checkpoints"])
    stored = store.query("select uri, sha256, bytes from checkpoints")
    assert [c["uri"] for c in checkpoints] == stored["uri"].tolist()
    assert checkpoints[-1]["iteration"] == 1 and all(c["bytes"] > 0 for c in checkpoints)

    data = {row["name"]: row for row in _table(artifacts["proj-data"])}
    batch_bytes = (digits.root / BATCH.format(1)).read_bytes()
    assert data["batch"]["sha256"] == hashlib.sha256(batch_bytes).hexdigest()
    assert data["batch"]["bytes"] == len(batch_bytes)
    assert set(data) == {"batch", "test"}

    summary = artifacts["proj-summary"].data
    assert run["code_version"] in summary and "trained from scratch" in summary
    assert "`epochs=2`" in summary


def test_runs_warm_start_from_the_latest_successful_run(digits: Project) -> None:
    first = _train(digits, 1)
    second = _train(digits, 2)
    fresh = _train(digits, 3, warm_start=False)
    uids = [s.result() for s in (first, second, fresh)]
    runs = digits.store().runs().set_index("run_uid")
    assert runs.loc[uids[1], "resumed_from"] == uids[0]
    assert pd.isna(runs.loc[uids[2], "resumed_from"])
    summary = _artifacts(second.state_details.flow_run_id)["proj-summary"].data
    assert f"warm-started from run `{uids[0]}`" in summary
    assert str(first.state_details.flow_run_id) in summary  # the parent's flow run


def test_a_failing_script_fails_the_flow_run_and_keeps_its_logs(digits: Project) -> None:
    digits.write(
        "train.py",
        """
        import flor_flows as flor
        for epoch in flor.loop("epoch", range(5)):
            flor.log("loss", 1.0 / (epoch + 1))
            if epoch == 2:
                raise RuntimeError("loss diverged at epoch 2")
        """,
    )
    digits.commit("a diverging script")
    state = _train(digits, 1)
    assert state.is_failed()
    assert "loss diverged at epoch 2" in state.message
    assert "train.py exited with code 1" in state.message

    run = digits.store().runs().iloc[-1]
    assert run["status"] == "failed" and "loss diverged at epoch 2" in run["error"]
    logs = digits.store().dataframe(["loss"])
    assert logs["loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    summary = _artifacts(state.state_details.flow_run_id)["proj-summary"].data
    assert ": failed" in summary and "## Error" in summary


def test_a_script_that_dies_before_recording_is_in_the_history(digits: Project) -> None:
    digits.write("train.py", "import sys\nsys.exit('no GPU found')\n")
    digits.commit("a script that gives up")
    state = _train(digits, 1)
    assert state.is_failed() and "no GPU found" in state.message

    run = digits.store().runs().iloc[-1]
    assert run["status"] == "failed" and "no GPU found" in run["error"]
    assert run["code_version"] == git(digits.root, "rev-parse", f"refs/flor/runs/{run['run_uid']}")
    assert run["data.batch"].endswith("2026-11-01.csv")


def test_a_missing_batch_fails_before_the_script_runs(digits: Project) -> None:
    state = train(
        TrainingRequest(project=str(digits.root), batch="data/batches/nope.csv"), return_state=True
    )
    assert state.is_failed() and "does not exist" in state.message
    assert digits.store().runs().empty
