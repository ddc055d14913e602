"""A replay runs only the part of each iteration its statements need (`record.replay`),
checked against the new code run from scratch on a script written as people write them:
argparse options, `train()` and `test()` functions with plain inner loops, a StepLR
scheduler stepped at the end of each epoch, batches shuffled with the global RNG."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from flor_flows.config import load_settings
from flor_flows.record.replay import Step, shortcut_steps
from flor_flows.replay.backfill import BackfillRequest, resolve
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.replay.skipping import logged, shortcuts
from tests.conftest import Project, git

DATA = Path(__file__).parent / "data" / "shortcuts"
OLD, NEW = (DATA / "v1.py").read_text(), (DATA / "v2.py").read_text()
ARGV = ("--lr", "0.05")
Values = dict[tuple[str, int], float]


def _values(project: Project, source: str, names: tuple[str, ...]) -> Values:
    quoted = ", ".join(f"'{n}'" for n in names)
    rows = project.store().query(
        f"select name, i0, num from logs where source = '{source}' and name in ({quoted})"
    )
    return {(n, int(i)): v for n, i, v in zip(rows["name"], rows["i0"], rows["num"], strict=True)}


def _project(root: Path, source: str) -> Project:
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text(".flor-flows/\n")
    project = Project(root)
    project.write("train.py", source)
    project.commit("train.py")
    return project


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str, str]:
    """One forward run of the old script (a checkpoint every epoch): project, commit, run."""
    project = _project(tmp_path_factory.mktemp("shortcuts") / "proj", OLD)
    commit = git(project.root, "rev-parse", "HEAD")
    project.run("train.py", *ARGV, env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    return project, commit, project.store().runs()["run_uid"][0]


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> Values:
    """The new script run forward from scratch: the ground truth of every new name."""
    project = _project(tmp_path_factory.mktemp("truth") / "proj", NEW)
    project.run("train.py", *ARGV)
    return _values(project, "forward", ("lr_start", "w_start", "loss2", "lr_end", "w_end"))


def _replay(
    recorded: tuple[Project, str, str], workdir: Path, names: tuple[str, ...], **kw: object
) -> tuple[Values, int, dict[str, bool]]:
    """Replay `names`: the values stored, how many times `train()` ran, the shortcuts."""
    project, commit, uid = recorded
    version = prepare_version(project.root, commit, {"train.py": NEW}, names, workdir)
    printed: list[str] = []
    settings = load_settings(project.root)
    replay(version, uid, "train.py", settings, names, on_output=printed.append, **kw)  # type: ignore[arg-type]
    values = _values(project, "replay", names)
    with project.store().engine.begin() as conn:
        conn.exec_driver_sql("delete from logs where source = 'replay'")
    return values, printed.count("TRAIN"), version.shortcuts


def _expected(truth: Values, names: tuple[str, ...], epochs: range | tuple[int, ...]) -> Values:
    return {(n, e): truth[(n, e)] for n in names for e in epochs}


def test_statements_at_the_start_of_the_epoch_skip_the_rest_of_it(
    recorded: tuple[Project, str, str], truth: Values, tmp_path: Path
) -> None:
    names = ("lr_start", "w_start")
    values, trained, marked = _replay(recorded, tmp_path, names)
    assert values == _expected(truth, names, range(6))
    assert marked == {"epoch": False} and trained == 0  # train() and test() never ran


def test_statements_after_the_scheduler_step_run_alone_on_the_epochs_end_state(
    recorded: tuple[Project, str, str], truth: Values, tmp_path: Path
) -> None:
    names = ("lr_end", "w_end")
    values, trained, marked = _replay(recorded, tmp_path, names)
    assert values == _expected(truth, names, range(6))
    assert marked == {"epoch": True} and trained == 0


def test_a_statement_reading_what_the_epoch_computed_runs_up_to_it_in_selected_epochs(
    recorded: tuple[Project, str, str], truth: Values, tmp_path: Path
) -> None:
    names = ("loss2",)  # it reads `loss`, which train() and test() compute
    values, trained, marked = _replay(recorded, tmp_path, names, iterations=(1, 4))
    assert values == _expected(truth, names, (1, 4))
    assert marked == {"epoch": False} and trained == 2


CARRIED = """
import flor_flows as flor
best = 10.0
w = [0.0]
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        flor.log("best", best)
        w[0] += 1
        best = min(best, w[0])
"""
GLOBAL = """
import flor_flows as flor
seen = 0
def count():
    global seen
    seen += 1
w = [0.0]
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        count()
        flor.log("seen", seen)
"""
MUTATED = """
import flor_flows as flor
history = []
w = [0.0]
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w[0] += 1
        history.append(w[0])
        flor.log("n", len(history))
"""


@pytest.mark.parametrize(
    ("source", "name", "expected"),
    [
        (CARRIED, "best", None),  # the tail carries `best` into the next epoch
        (CARRIED.replace("best = min", "w[0] = min"), "best", False),  # the tail may go
        (GLOBAL, "seen", None),  # count() sets the global it logs: the head runs, no tail
        (GLOBAL.replace("count()\n", "count()\n        w[0] += 1\n"), "seen", None),
        (MUTATED, "n", None),  # history is changed in the head and not checkpointed
        (MUTATED.replace("w=w", "w=w, history=history"), "n", True),
    ],
)
def test_what_a_body_needs_is_read_from_the_code(
    source: str, name: str, expected: bool | None
) -> None:
    """The shortcut found for `name`: None, or whether the head may go as well."""
    found = shortcuts({"train.py": source}, [name])
    assert (found[0].head if found else None) == expected


def _simulate(plan: list[Step], checkpointed: set[int], last: int, final: bool) -> dict[int, int]:
    """Run a plan on a loop whose state is the number of iterations done: target -> the
    state its requested statements saw (the start state, or the end state for a head)."""
    state: int | None = 0
    seen = {}
    for step in plan:
        if step.restore is not None:
            assert step.restore in checkpointed
            state = step.restore + 1
        if step.head:
            assert step.iteration in checkpointed
            seen[step.iteration] = step.iteration + 1
            state = None
            continue
        assert state == step.iteration, f"{step} starts from the wrong state {state}"
        if step.action == "record":
            seen[step.iteration] = state
        state = None if step.cut else step.iteration + 1
    if final and (state is None or state <= max(checkpointed, default=-1)):
        assert checkpointed and max(checkpointed) >= max(seen, default=0)  # restored after
    return seen


@pytest.mark.parametrize("seed", range(40))
def test_every_shortcut_plan_starts_each_iteration_from_its_true_state(seed: int) -> None:
    rng = random.Random(seed)
    last = rng.randrange(1, 12)
    checkpointed = {i for i in range(last + 1) if rng.random() < 0.5}
    targets = (
        None if rng.random() < 0.3 else sorted(rng.sample(range(last + 1), rng.randint(1, last)))
    )
    head, final = rng.random() < 0.5, rng.random() < 0.5
    plan = list(shortcut_steps(targets, checkpointed, last, head, final))
    seen = _simulate(plan, checkpointed, last, final)
    wanted = list(range(last + 1)) if targets is None else targets
    assert sorted(seen) == wanted
    for target, state in seen.items():
        assert state == (target + 1 if head and target in checkpointed else target)
    iterations = [s.iteration for s in plan]
    assert iterations == sorted(iterations) and len(iterations) == len(set(iterations))
    assert not any(s.head for s in plan) or head


NOISY = """
import random

import flor_flows as flor

state = {"w": 0.0}
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(3)):
        state["w"] += random.random()  # unseeded: another value in every process
        flor.log("w", state["w"])
"""


def test_a_statement_on_checkpointed_state_alone_is_read_from_the_checkpoints(
    project: Project, tmp_path: Path
) -> None:
    """Nothing re-executes, so even an unseeded run gives back exactly its recorded states,
    and nothing of the run's own is there to compare (checked 0, not diverged)."""
    project.write("train.py", NOISY)
    commit = project.commit("noisy")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    store = project.store()
    uid = store.runs()["run_uid"][0]
    recorded = store.dataframe(["w"]).sort_values("epoch")["w"].tolist()
    new = NOISY + '        flor.log("w2", state["w"] * 2)\n'
    version = prepare_version(project.root, commit, {"train.py": new}, ["w2"], tmp_path)
    assert version.shortcuts == {"epoch": True}
    replay(version, uid, "train.py", load_settings(project.root), ["w2"], on_output=print)
    assert store.dataframe(["w2"]).sort_values("epoch")["w2"].tolist() == [2 * w for w in recorded]
    assert store.query("SELECT status, checked FROM replays").values.tolist() == [["completed", 0]]


LOOPED = """
import flor_flows as flor

def main():
    w = [0.0]
    with flor.checkpointing(w=w):
        for epoch in flor.loop("epoch", range(4)):
            w[0] += epoch
            flor.log("w", w[0])
    print("DONE", flush=True)

main()
"""
FINAL = LOOPED.replace('    print("DONE"', '    flor.log("final", w[0] * 10)\n    print("DONE"')


@pytest.mark.parametrize(
    ("names", "expected"), [(["final"], True), (["w"], False), (["final", "w"], False)]
)
def test_names_logged_after_the_training_only_are_read_from_the_code(
    names: list[str], expected: bool
) -> None:
    assert logged({"train.py": FINAL}, names).run_level_only is expected


def test_a_statement_after_the_training_replays_no_epoch_unless_asked(
    project: Project, tmp_path: Path
) -> None:
    project.write("train.py", LOOPED)
    commit = project.commit("looped")
    project.run("train.py")
    project.write("train.py", FINAL)
    project.commit("logs final")
    (item,) = resolve(BackfillRequest(project=str(project.root), names=["final"])).items
    assert item.iterations == ()  # the run level only: the final checkpoint is the end state
    asked = BackfillRequest(project=str(project.root), names=["final"], iterations=["epoch=1"])
    assert [i.iterations for i in resolve(asked).items] == [(1,)]
    version = prepare_version(project.root, commit, {"train.py": FINAL}, ["final"], tmp_path)
    settings = load_settings(project.root)
    uid = item.run_uid
    replay(version, uid, "train.py", settings, ["final"], iterations=(), on_output=print)
    assert project.store().dataframe(["final"])["final"].tolist() == [60.0]  # (0+1+2+3) * 10
