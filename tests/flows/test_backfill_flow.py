"""The backfill flow as real Prefect flow runs: plan, propagate per version, replay per run."""

from __future__ import annotations

import json
import re

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flor_flows.replay.backfill import BackfillRequest, resolve
from flows.backfill import backfill
from tests.conftest import Project

V1 = """
import numpy as np
import flor_flows as flor
seed = flor.arg("seed", 0)
np.random.seed(seed)
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(4)):
        w += np.random.rand(3)
        flor.log("loss", float(w.sum()))
"""
V2 = V1.replace("w = np.zeros(3)\n", "w = np.zeros(3)\nscale = flor.arg('scale', 2.0)\n")
V3 = re.sub(r"\bw\b", "weights", V2)
# today: two new statements; `scaled` reads `scale`, which v1 lacks; `ratio` divides by seed - 2
NEW = V3.replace(
    '        flor.log("loss", float(weights.sum()))\n',
    '        flor.log("loss", float(weights.sum()))\n'
    '        flor.log("scaled", scale * float(weights.sum()))\n',
)
NEW_RATIO = NEW.replace(
    '        flor.log("scaled"',
    '        flor.log("ratio", float(weights[0]) / (seed - 2))\n        flor.log("scaled"',
)


@pytest.fixture
def history(project: Project) -> Project:
    every = {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}
    for seed, source in enumerate([V1, V2, V3, V3 + "# unchanged code, a new commit\n"], start=1):
        project.write("train.py", source)
        project.commit(f"v{seed}")
        project.run("train.py", "--kwargs", f"seed={seed}", env=every)
    return project


def _artifacts(state) -> dict:  # noqa: ANN001
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    return {a.key: a for a in found}


def test_a_backfill_fills_every_version_it_can_and_reports_the_rest(history: Project) -> None:
    history.write("train.py", NEW)  # today's working tree, not committed
    request = BackfillRequest(project=str(history.root), names=["scaled"])
    state = backfill(request, return_state=True)
    assert state.is_failed()  # v1's run could not get the statement
    assert "3 of 4 runs replayed" in state.message and "'scale' is not defined" in state.message

    table = history.store().dataframe(["scaled", "loss"])
    filled = table.groupby("seed")["scaled"].apply(lambda s: s.notna().all())
    assert filled.to_dict() == {1: False, 2: True, 3: True, 4: True}
    rows = table[table["seed"] > 1]
    assert rows["scaled"].tolist() == pytest.approx((2.0 * rows["loss"]).tolist())

    artifacts = _artifacts(state)
    assert {"proj-backfill-plan", "proj-backfill-progress", "proj-backfill-result"} <= set(
        artifacts
    )
    assert len(json.loads(artifacts["proj-backfill-plan"].data)) == 4
    diffs = [a.data for key, a in artifacts.items() if key.startswith("proj-backfill-diff-")]
    assert len(diffs) == 4 and any('+        flor.log("scaled"' in d for d in diffs)

    again = backfill(request, return_state=True)  # the same request: only the failure again
    assert "0 of 1 runs replayed" in again.message


def test_a_failing_replay_is_reported_while_the_others_complete(history: Project) -> None:
    history.write("train.py", NEW_RATIO)
    state = backfill(
        BackfillRequest(project=str(history.root), names=["ratio"], max_parallel=2),
        return_state=True,
    )
    assert state.is_failed() and "ZeroDivisionError" in state.message
    ratios = history.store().dataframe(["ratio"]).groupby("seed")["ratio"].count()
    assert ratios.to_dict() == {1: 4, 3: 4, 4: 4}  # seed 2 divides by zero


def test_a_long_run_is_replayed_in_segments_that_count_as_one(project: Project) -> None:
    slow = (
        V1.replace("import numpy", "import time\nimport numpy")
        .replace(
            "        w += np.random.rand(3)\n",
            "        time.sleep(0.5)\n        w += np.random.rand(3)\n",
        )
        .replace(
            'flor.log("loss", float(w.sum()))',
            'now = float(w.sum())\n        flor.log("loss", now)',
        )
    )
    project.write("train.py", slow)
    project.commit("slow")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    project.write(
        "train.py",
        # `twice` reads `now`, which the epoch computes: each replayed epoch runs in full
        slow.replace(
            '        flor.log("loss", now)\n',
            '        flor.log("loss", now)\n        flor.log("twice", 2 * now)\n',
        )
        + 'flor.log("total", float(w.sum()))\n',
    )
    request = BackfillRequest(project=str(project.root), names=["twice", "total"], max_parallel=2)
    state = backfill(request, return_state=True)
    assert state.is_completed() and state.message == "1 of 1 runs replayed"
    segments = json.loads(_artifacts(state)["proj-backfill-plan"].data)
    assert [s["iterations"] for s in segments] == [[0, 1], [2, 3]]  # two workers, two halves
    first, second = (s["fork_server_seconds"] for s in segments)  # the first one waits for it
    assert first > 0 and second == 0
    table = project.store().dataframe(["loss", "twice", "total"])
    assert table["twice"].tolist() == pytest.approx((2 * table["loss"]).tolist())
    assert table["total"].nunique() == 1 and table["total"].iloc[0] == table["loss"].iloc[-1]
    runs = project.store().query("select status from backfill_items")
    assert runs["status"].tolist() == ["replayed"]
    again = backfill(request, return_state=True)
    assert again.message == "0 replays planned; nothing run"  # the values are there


def test_all_again_after_it_finished_replays_again_and_a_stopped_one_resumes(
    project: Project,
) -> None:
    project.write("train.py", V1)
    project.commit("v1")
    for seed in (1, 2):
        project.run("train.py", "--kwargs", f"seed={seed}", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})  # fmt: skip
    project.write("train.py", V1.replace('flor.log("loss"', 'flor.log("sq", float(w @ w))\n        flor.log("loss"'))  # fmt: skip
    request = BackfillRequest(project=str(project.root), names=["sq"], only_missing=False)
    store = project.store()
    for attempt in (1, 2):  # `--all` twice: computed twice
        state = backfill(request, return_state=True)
        assert state.is_completed() and state.message == "2 of 2 runs replayed"
        assert len(store.query("SELECT id FROM replays")) == 2 * attempt
    # a third `--all` that stopped after one run (as a crash leaves it): its retry resumes it
    third = resolve(request)
    store.backfill_id(third.key, third.names)
    store.set_backfill_status(store.find_backfill(third.key), third.items[0].run_uid, "replayed")
    state = backfill(request, return_state=True)
    assert state.is_completed() and len(store.query("SELECT id FROM replays")) == 5
