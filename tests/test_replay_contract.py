"""Replay mode (the contract later issues build on), checked against ground truth."""

from __future__ import annotations

import random

import pytest

from flor_flows.record.context import ReplaySpec, RunContext
from flor_flows.record.replay import Step, steps
from tests.conftest import Project


def _truth(last: int) -> list[int]:
    """A toy training: the state at the start of iteration i is a distinct function of every
    iteration before it (truth[i]), truth[0] the state the set-up leaves."""
    truth = [0]
    for i in range(last + 1):
        truth.append(truth[-1] * 31 + i + 7)
    return truth


def _replayed_states(targets: list[int], checkpointed: set[int], last: int) -> dict[int, object]:
    """Run the plan of `steps` on the toy training: the state each target starts from (None
    where the plan executes an iteration from a state it skipped over)."""
    truth, state, seen = _truth(last), 0, {}
    for step in steps(targets, checkpointed, last):
        if step.restore is not None:
            assert step.restore in checkpointed
            state = truth[step.restore + 1]  # the checkpoint written at the end of `restore`
        if step.action == "skip":
            state = None  # not executed: the live state no longer holds
            continue
        if step.action == "record":
            seen[step.iteration] = state
        state = None if state is None else state * 31 + step.iteration + 7
    return seen


def test_every_plan_starts_each_target_from_its_true_state() -> None:
    rng = random.Random(13)
    for _ in range(300):
        last = rng.randrange(0, 12)
        checkpointed = {i for i in range(last + 1) if rng.random() < 0.4}
        targets = sorted(rng.sample(range(last + 1), rng.randrange(0, last + 2)))
        truth = _truth(last)
        states = _replayed_states(targets, checkpointed, last)
        assert sorted(states) == targets, (targets, checkpointed)
        assert all(states[t] == truth[t] for t in targets), (targets, checkpointed, states)
        plan = list(steps(targets, checkpointed, last))
        executed = [s.iteration for s in plan if s.action != "skip"]
        assert not targets or max(executed) == targets[-1]  # nothing after the last target


def test_steps_restore_the_checkpoint_at_the_start_of_each_target() -> None:
    plan = list(steps([5], checkpointed={2, 3}))
    assert plan == [
        Step(0, "skip"), Step(1, "skip"), Step(2, "skip"), Step(3, "skip"),
        Step(4, "silent", restore=3), Step(5, "record"),
    ]  # fmt: skip
    assert list(steps([4], {3})) == [*(Step(i, "skip") for i in range(4)), Step(4, "record", 3)]
    assert list(steps([0, 2], set())) == [Step(0, "record"), Step(1, "silent"), Step(2, "record")]
    assert list(steps([], {0, 1})) == []  # run-level only: the loop runs no iteration
    first = steps(None, {0})
    assert [next(first) for _ in range(3)] == [
        Step(0, "record"),
        Step(1, "record"),
        Step(2, "record"),
    ]


V1 = """
import numpy as np
import flor_flows as flor
rng_seed = flor.arg("seed", 7)
np.random.seed(rng_seed)
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(5)):
        {start}
        for step in flor.loop("step", range(4)):
            w += np.random.rand(3)  # consumes the global RNG: replay must restore it
            flor.log("loss", float(w.sum()))
        {end}
"""
HINDSIGHT = {
    "start": 'flor.log("w_start", float(w.sum()))',
    "end": 'flor.log("w_end", float(w.sum()))',
}


def _replay_env(project: Project, uid: str, apply: tuple[str, ...], iterations) -> dict[str, str]:
    context = RunContext(
        mode="replay", run_uid=uid, replay=ReplaySpec(apply=apply, iterations=iterations)
    )
    return context.to_env()


@pytest.fixture
def recorded(project: Project) -> tuple[Project, str, list]:
    project.write("train.py", V1.format(start="pass", end="pass"))
    project.commit("v1")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    uid = project.store().runs()["run_uid"][0]
    # Ground truth: the hindsight version run forward from scratch, as a separate project state.
    project.write("truth.py", V1.format(**HINDSIGHT))
    project.run("truth.py")
    truth = project.store().dataframe(["w_start", "w_end"])
    truth = truth[truth["run_uid"] != uid]
    return project, uid, truth


def test_replay_from_checkpoints_matches_ground_truth(recorded) -> None:
    project, uid, truth = recorded
    project.write("train.py", V1.format(**HINDSIGHT))  # the statements propagated into v1
    project.run("train.py", env=_replay_env(project, uid, ("w_start", "w_end"), (2, 4)))
    df = project.store().dataframe(["loss", "w_start", "w_end"])
    mine = df[df["run_uid"] == uid]
    epochs = mine.drop_duplicates("epoch").set_index("epoch")
    expected = truth.drop_duplicates("epoch").set_index("epoch")
    for epoch in (2, 4):
        assert epochs.loc[epoch, "w_start"] == expected.loc[epoch, "w_start"]
        assert epochs.loc[epoch, "w_end"] == expected.loc[epoch, "w_end"]
    assert epochs.loc[[0, 1, 3], "w_start"].isna().all()  # not selected: not recorded
    assert mine["loss"].notna().all() and len(mine) == 5 * 4  # forward rows intact, same rows
    replays = project.store().query("select status from replays")
    assert replays["status"].tolist() == ["completed"]


def test_replay_with_sparse_checkpoints_reexecutes_silently(recorded) -> None:
    project, uid, truth = recorded
    store = project.store()
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM checkpoints WHERE iteration IN (1, 2)")
    project.write("train.py", V1.format(**HINDSIGHT))
    project.run("train.py", env=_replay_env(project, uid, ("w_start",), (3,)))
    df = store.dataframe(["w_start"])
    mine = df[df["run_uid"] == uid].dropna(subset=["w_start"])
    expected = truth.drop_duplicates("epoch").set_index("epoch")
    assert mine["epoch"].tolist() == [3]
    assert mine["w_start"].iloc[0] == expected.loc[3, "w_start"]


def test_replay_of_an_existing_statement_is_identical(recorded) -> None:
    project, uid, _ = recorded
    project.run("train.py", env=_replay_env(project, uid, ("loss",), None))
    df = project.store().dataframe(["loss"])
    mine = df[df["run_uid"] == uid]
    assert "loss@replay" in mine.columns
    assert (mine["loss"] == mine["loss@replay"]).all() and len(mine) == 20


def test_replay_args_come_from_history(recorded) -> None:
    project, uid, _ = recorded
    project.write(
        "args.py", "import flor_flows as flor\nflor.log('seed_seen', flor.arg('seed', 0))\n"
    )
    project.run("args.py", env=_replay_env(project, uid, None, None))
    df = project.store().dataframe(["seed_seen"])
    assert df[df["run_uid"] == uid]["seed_seen"].tolist() == [7]


@pytest.mark.parametrize(("ending", "status"), [("", 0), ("raise RuntimeError('late')\n", 1)])
def test_a_replay_exits_once_stored_with_the_scripts_status(recorded, ending, status) -> None:
    project, uid, _ = recorded
    script = "import atexit\natexit.register(print, 'teardown')\n"  # runs before flor's
    script += V1.format(**HINDSIGHT) + "flor.commit()\n" + ending  # committed by the script
    project.write("train.py", script)
    env = _replay_env(project, uid, ("w_end",), (4,))
    proc = project.run("train.py", env=env, check=False)
    assert proc.returncode == status, proc.stderr
    assert "teardown" not in proc.stdout  # the interpreter's teardown is skipped
    replayed = project.store().query("select count(*) as n from logs where source = 'replay'")
    assert replayed["n"][0] == 1  # stored before the exit either way


def test_a_replay_executes_nothing_after_its_last_selected_iteration(recorded) -> None:
    """The epochs a replay runs, as the script itself sees them: none after the last target."""
    project, uid, truth = recorded
    ran = project.root.parent / "epochs-run"
    mark = f"open({str(ran)!r}, 'a').write(str(epoch) + ' ')"
    project.write("train.py", V1.format(start=mark, end=HINDSIGHT["end"]))
    project.run("train.py", env=_replay_env(project, uid, ("w_end",), (1,)))
    assert ran.read_text().split() == ["1"]  # from the checkpoint of epoch 0, then stopped
    df = project.store().dataframe(["w_end"])
    mine = df[df["run_uid"] == uid].dropna(subset=["w_end"]).drop_duplicates("epoch")
    expected = truth.drop_duplicates("epoch").set_index("epoch")
    assert mine["epoch"].tolist() == [1]
    assert mine["w_end"].iloc[0] == expected.loc[1, "w_end"]
