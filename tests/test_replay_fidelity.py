"""Replay is exact: old statements reproduce their forward values, new ones those of the new
code run from scratch, at run, epoch and step level; nested loops run only where needed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flor_flows.config import load_settings
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.replay.plan import plan
from flor_flows.replay.skipping import skippable_loops
from tests.conftest import Project, git

OLD = """
import time
import numpy as np
import flor_flows as flor
np.random.seed(flor.arg("seed", 0))
w = np.zeros(3)
flor.log("w_init", float(w.sum()))
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(4)):
        running = 0.0
        for step in flor.loop("step", range(3)):
            print("STEP", flush=True)
            time.sleep(0.4)  # long enough that a split into segments pays off, also under load
            w += np.random.rand(3)
            running += float(w[1])
            flor.log("loss", float(w.sum()))
        flor.log("norm", float(np.linalg.norm(w)))
flor.log("final", float(w.sum()))
"""
NEW = (
    OLD.replace(
        "        running = 0.0\n",
        '        flor.log("start", float(w.sum()))\n        running = 0.0\n',
    )
    .replace(
        '            flor.log("loss", float(w.sum()))\n',
        '            flor.log("loss", float(w.sum()))\n            flor.log("g", float(w[2]))\n',
    )
    .replace(
        '        flor.log("norm", float(np.linalg.norm(w)))\n',
        '        flor.log("norm", float(np.linalg.norm(w)))\n'
        '        flor.log("end", float(w[0]))\n'
        '        flor.log("run_avg", running / 3)\n',
    )
    .replace(
        'flor.log("final", float(w.sum()))\n',
        'flor.log("final", float(w.sum()))\nflor.log("final_max", float(w.max()))\n',
    )
)
Values = dict[tuple[str, int | None, int | None], float]


def _values(project: Project, source: str, names: tuple[str, ...]) -> Values:
    """(name, epoch, step) -> value of the one run in `project` logged with `source`."""
    quoted = ", ".join(f"'{n}'" for n in names)
    rows = project.store().query(
        f"select name, i0, i1, num from logs where source = '{source}' and name in ({quoted})"
    )
    epochs, steps = ([None if pd.isna(v) else int(v) for v in rows[c]] for c in ("i0", "i1"))
    return dict(zip(zip(rows["name"], epochs, steps, strict=True), rows["num"], strict=True))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str, str]:
    """One forward run of OLD (seed 3, a checkpoint every epoch); its commit and run."""
    root = tmp_path_factory.mktemp("fidelity") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text(".flor-flows/\n")
    project = Project(root)
    project.write("train.py", OLD)
    commit = project.commit("old")
    project.run("train.py", "--kwargs", "seed=3", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    return project, commit, project.store().runs()["run_uid"][0]


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Values:
    """NEW run forward from scratch with the same seed: the ground truth of every name."""
    root = tmp_path_factory.mktemp("truth") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    project = Project(root)
    project.write("train.py", NEW)
    project.run("train.py", "--kwargs", "seed=3")
    names = ("w_init", "loss", "norm", "final", "start", "g", "end", "run_avg", "final_max")
    return _values(project, "forward", names)


def _replay(
    recorded: tuple[Project, str, str],
    workdir: Path,
    names: tuple[str, ...],
    source: str = NEW,
    **kw,  # noqa: ANN003
) -> tuple[Values, list[str]]:
    """Replay `names` of the recorded run; the values it stored and the lines it printed."""
    project, commit, uid = recorded
    version = prepare_version(project.root, commit, {"train.py": source}, names, workdir)
    assert not version.refusals
    printed: list[str] = []
    replay(
        version, uid, "train.py", load_settings(project.root), names, on_output=printed.append, **kw
    )
    return _values(project, "replay", names), printed


def _subset(values: Values, names: tuple[str, ...]) -> Values:
    return {key: value for key, value in values.items() if key[0] in names}


def _clear_replays(project: Project) -> None:
    with project.store().engine.begin() as conn:
        conn.exec_driver_sql("delete from logs where source = 'replay'")


@pytest.fixture
def fresh(recorded: tuple[Project, str, str]) -> tuple[Project, str, str]:
    _clear_replays(recorded[0])
    return recorded


def test_old_statements_reproduce_their_forward_values(fresh, tmp_path: Path) -> None:
    project = fresh[0]
    names = ("w_init", "loss", "norm", "final")
    got, printed = _replay(fresh, tmp_path, names, source=OLD)
    forward = _values(project, "forward", names)
    assert len(forward) == 1 + 12 + 4 + 1
    assert got == forward  # run, step and epoch level, exactly
    assert printed.count("STEP") == 12  # `loss` is in the nested loop: it ran


def test_epoch_statements_skip_the_nested_loop_and_match_the_new_code(fresh, truth, tmp_path):
    names = ("start", "end", "norm", "final")
    got, printed = _replay(fresh, tmp_path, names)
    assert "STEP" not in printed  # restored from the checkpoint at the end of each epoch
    assert got == _subset(truth, names) and len(got) == 4 + 4 + 4 + 1


def test_a_name_only_the_nested_loop_computes_makes_it_run(fresh, truth, tmp_path) -> None:
    got, printed = _replay(fresh, tmp_path, ("run_avg",))
    assert printed.count("STEP") == 12  # `running` is in no checkpoint: the loop re-executes
    assert got == _subset(truth, ("run_avg",)) and len(got) == 4


def test_step_statements_match_the_new_code(fresh, truth, tmp_path: Path) -> None:
    got, printed = _replay(fresh, tmp_path, ("g",))
    assert printed.count("STEP") == 12
    assert got == _subset(truth, ("g",)) and len(got) == 12


def test_a_run_level_statement_restores_the_end_state_without_running_loops(
    fresh, truth, tmp_path: Path
) -> None:
    got, printed = _replay(fresh, tmp_path, ("final_max",), iterations=())
    assert "STEP" not in printed
    assert got == _subset(truth, ("final_max",)) and len(got) == 1


def test_segments_together_give_the_whole_run_once(fresh, truth, tmp_path: Path) -> None:
    project, _, uid = fresh
    names = ("g", "final_max")
    items = plan(project.store(), names, workers=2)
    assert [i.run_uid for i in items] == [uid, uid]
    assert [i.run_level for i in items] == [False, True]
    assert sorted(i for item in items for i in item.iterations) == [0, 1, 2, 3]
    for item in items:
        got, _ = _replay(fresh, tmp_path / str(item.iterations), names, **{
            "iterations": item.iterations, "run_level": item.run_level
        })  # fmt: skip
    assert got == _subset(truth, names) and len(got) == 12 + 1  # `final_max` logged once


CHECKPOINTED = """
import flor_flows as flor
with flor.checkpointing(model=net, optimizer=opt):
    for epoch in flor.loop("epoch", range(3)):
        total = 0.0
        for x in flor.loop("step", data):
            loss = f(net, x)
            norm = sum(p.sum() for p in net.parameters())
            total += loss
            opt.step()
        acc = evaluate(net)
        flor.log("acc", acc)
        flor.log("avg", total / 3)
        {after}
"""


@pytest.mark.parametrize(
    ("names", "after", "skippable"),
    [
        (["acc"], "pass", True),  # reads only the checkpointed model
        (["avg"], "pass", False),  # `total` is computed in the loop and no checkpoint holds it
        (["acc"], "sched.step()", False),  # the state at the epoch's end is not the loop's end
        (["acc"], "net.mul_(0.5)", False),  # an in-place change of a checkpointed object
        (["acc"], "net.head = None", False),
        (["acc"], "opt = None", False),
        (["acc"], "model_view = net.eval()", True),  # a call that changes no state it holds
        (["acc"], "acc = max(float(p) for p in net)", True),  # `p` is the generator's own
    ],
)
def test_which_nested_loops_may_be_skipped(names, after, skippable) -> None:
    files = {"train.py": CHECKPOINTED.format(after=after)}
    assert (skippable_loops(files, names) == {"step"}) is skippable


def test_loops_that_hold_a_requested_statement_are_not_skipped() -> None:
    files = {"train.py": NEW}
    assert skippable_loops(files, ["g"]) == set()  # in the loop
    assert skippable_loops(files, ["end", "start"]) == {"step"}
    wrapped = {
        "train.py": "import flor_flows as flor\n"
        "from helpers import inner\n"
        "with flor.checkpointing(w=w):\n"
        "    for e in flor.loop('epoch', range(2)):\n"
        "        last = inner(w)\n"
        "        flor.log('e', float(w[0]))\n"
        "        flor.log('last', last)\n",
        "helpers.py": "import flor_flows as flor\n"
        "def inner(w):\n"
        "    for s in flor.loop('step', range(2)):\n"
        "        w += 1\n"
        "        flor.log('s', float(w[1]))\n"
        "    return float(w[2])\n",
    }
    assert skippable_loops(wrapped, ["e"]) == {"step"}
    assert skippable_loops(wrapped, ["s"]) == set()  # in the function's loop
    assert skippable_loops(wrapped, ["last"]) == set()  # bound from the function's result
    assert skippable_loops({"a.py": "def broken(:\n"}, ["e"]) == set()
