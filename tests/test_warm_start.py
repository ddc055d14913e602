"""Warm start: a run continues from the final checkpoint of the run it resumes from."""

from __future__ import annotations

import pandas as pd

from flor_flows.record.context import ReplaySpec, RunContext
from tests.conftest import Project

SCRIPT = """
import numpy as np
import flor_flows as flor
w = np.zeros(3)
resumed = flor.warm_start(w=w)
flor.log("resumed", resumed or "")
flor.log("w_start", float(w.sum()))
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(flor.arg("epochs", 6))):
        w += 1.0
        flor.log("w", float(w.sum()))
"""


def _uids(project: Project) -> list[str]:
    return project.store().runs()["run_uid"].tolist()


def test_the_final_iteration_is_always_checkpointed(project: Project) -> None:
    """The adaptive policy skips cheap-to-recompute iterations, but never the last one."""
    project.write("train.py", SCRIPT)
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "adaptive:0.000001"})
    written = project.store().query("select iteration from checkpoints order by id")
    written = written["iteration"].tolist()
    # Warm-up checkpoints (the second one only if the first write had finished), then the end.
    assert written in ([0, 1, 5], [0, 5])


def test_warm_start_loads_the_previous_final_state_and_records_lineage(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py")
    (first,) = _uids(project)
    context = RunContext(resumed_from=first)
    project.run("train.py", env=context.to_env())
    second = _uids(project)[1]

    df = project.store().dataframe(["resumed", "w_start", "w"])
    runs = project.store().runs().set_index("run_uid")
    assert runs.loc[second, "resumed_from"] == first
    assert pd.isna(runs.loc[first, "resumed_from"])
    start = df.groupby("run_uid")[["resumed", "w_start"]].first()
    assert start.loc[first].tolist() == ["", 0.0]
    assert start.loc[second].tolist() == [first, 18.0]  # 6 epochs x 3 weights of the first run
    assert df.loc[df["run_uid"] == second, "w"].max() == 36.0


def test_no_warm_start_unless_the_launcher_asks(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py")
    project.run("train.py")
    df = project.store().dataframe(["w_start"])
    assert df["w_start"].tolist() == [0.0, 0.0]


def test_a_replay_starts_from_the_same_warm_start(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py")
    (first,) = _uids(project)
    project.run("train.py", env=RunContext(resumed_from=first).to_env())
    second = _uids(project)[1]
    replay = RunContext(mode="replay", run_uid=second, replay=ReplaySpec(apply=("w_start",)))
    project.run("train.py", env=replay.to_env())
    df = project.store().dataframe(["w_start"])
    row = df.loc[df["run_uid"] == second].iloc[0]
    assert row["w_start"] == 18.0 and row["w_start@replay"] == 18.0


def test_an_incompatible_checkpoint_is_a_clear_error(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py")
    (first,) = _uids(project)
    project.write("other.py", SCRIPT.replace("np.zeros(3)", "np.zeros(4)"))  # another shape
    proc = project.run("other.py", env=RunContext(resumed_from=first).to_env(), check=False)
    assert proc.returncode != 0
    assert "cannot restore 'w' from the checkpoint" in proc.stderr


def test_warm_start_from_an_unknown_run_fails_clearly(project: Project) -> None:
    project.write("train.py", SCRIPT)
    missing = "no-such-run"
    proc = project.run("train.py", env=RunContext(resumed_from=missing).to_env(), check=False)
    assert proc.returncode != 0
    assert f"no run '{missing}'" in proc.stderr
