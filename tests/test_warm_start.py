"""Warm start: a run continues from the final checkpoint of the run it resumes from."""

from __future__ import annotations

import pandas as pd
import pytest

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


# The adaptive policy with an epsilon so small that, once its two warm-up checkpoints have
# measured the cost, no iteration is worth one. The script decides when the background
# writes finish, so which boundaries find the writer busy is fixed, not a race.
POLICY = """
import threading
import numpy as np
import flor_flows as flor
from flor_flows.record import session
w = np.zeros(3)
with flor.checkpointing(w=w):
    checkpointer = session.current().checkpointing
    if HELD:  # the first write finishes only once the loop has ended
        release = threading.Event()
        write, loop_ended = checkpointer.store.write, checkpointer.loop_ended
        def held_write(*args):
            assert release.wait(60), "the held checkpoint write was never released"
            return write(*args)
        def end_of_loop():
            release.set()
            loop_ended()
        checkpointer.store.write, checkpointer.loop_ended = held_write, end_of_loop
    for epoch in flor.loop("epoch", range(6)):
        if not HELD:
            checkpointer.collect(wait=True)  # the previous boundary's write has finished
        w += 1.0
"""


@pytest.mark.parametrize(
    ("held", "written"),
    [
        (False, [0, 1, 5]),  # warm-up at iterations 0 and 1, skipped 2-4 by the policy
        (True, [0, 5]),  # the writer busy with iteration 0 at every later boundary
    ],
    ids=["writes-finish", "writer-busy"],
)
def test_the_final_iteration_is_always_checkpointed(
    project: Project, held: bool, written: list[int]
) -> None:
    """The adaptive policy skips iterations (cheap to recompute, or come while a write is in
    flight), but never the last one: a warm start continues from it."""
    project.write("train.py", POLICY.replace("HELD", str(held)))
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "adaptive:0.000001"})
    iterations = project.store().query("select iteration from checkpoints order by id")
    assert iterations["iteration"].tolist() == written


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
