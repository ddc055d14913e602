"""A replay is the original process again, bounded by the record, and verified.

Scripts here are written the way users write them: argparse options given on the command
line, data read at a relative path outside the repository, no `flor.arg`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from flor_flows.config import load_settings
from flor_flows.errors import ReplayDiverged
from flor_flows.replay.engine import prepare_version, replay
from tests.conftest import Project, git

# The smallest reproduction, plus data read from ../data (outside the repository).
SCRIPT = """
import argparse
import flor_flows as flor
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1.0)
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()
offset = float(open("../data/offset.txt").read())
state = {"w": offset}
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(args.epochs)):
        w = state["w"] + args.lr
        state["w"] = w
        flor.log("w", w)
"""
# It reads `w`, which the epoch computes: the replay runs the epoch, and re-logs `w`.
NEW = SCRIPT + '        flor.log("w2", w * 2)\n'


@pytest.fixture
def recorded(project: Project) -> tuple[Project, str]:
    """One run of SCRIPT trained with `--lr 0.5 --epochs 2`, data beside the repository."""
    data = project.root.parent / "data"
    data.mkdir()
    (data / "offset.txt").write_text("100")
    project.write("train.py", SCRIPT)
    project.commit("train")
    project.run("train.py", "--lr", "0.5", "--epochs", "2")
    uid = project.store().runs()["run_uid"].iloc[-1]
    return project, uid


def _replay(project: Project, uid: str, workdir: Path, names=("w2",), source=NEW):  # noqa: ANN001, ANN202
    settings = load_settings(project.root)
    run = project.store().runs().set_index("run_uid").loc[uid]
    version = prepare_version(
        project.root, run.code_version, {"train.py": source}, names, workdir, ["train.py"]
    )
    assert version.outcome("train.py") == ("propagated", None)
    return replay(version, uid, "train.py", settings, names, on_output=lambda line: None)


def _values(project: Project, name: str, source: str = "replay") -> list[tuple[int, float]]:
    rows = project.store().query(
        f"SELECT i0, num FROM logs WHERE name = '{name}' AND source = '{source}' ORDER BY id"
    )
    return [(int(i), float(v)) for i, v in rows.itertuples(index=False)]


def test_the_command_line_and_the_working_directory_are_recorded(recorded) -> None:  # noqa: ANN001
    project, uid = recorded
    run = project.store().run_record(uid)
    assert run["invocation"]["argv"] == ["--lr", "0.5", "--epochs", "2"]
    assert run["invocation"]["cwd"] == "."
    assert run["invocation"]["python"].count(".") == 2
    # argparse options are the run's args: in the run table and usable in --where
    assert run["args"] == {"lr": 0.5, "epochs": 2}
    assert project.store().runs().set_index("run_uid").loc[uid, "lr"] == 0.5


def test_a_replay_runs_the_original_command_over_the_recorded_epochs_only(
    recorded, tmp_path: Path
) -> None:  # noqa: ANN001
    """lr 0.5 (not the default 1.0), 2 epochs (not the default 5), ../data found."""
    project, uid = recorded
    _replay(project, uid, tmp_path / "work")
    assert _values(project, "w2") == [(0, 201.0), (1, 202.0)]
    outcome = project.store().query("SELECT status, checked, error FROM replays").iloc[-1]
    assert (outcome.status, outcome.checked, outcome.error) == ("completed", 2, None)


def test_replaying_again_replaces_the_values(recorded, tmp_path: Path) -> None:  # noqa: ANN001
    project, uid = recorded
    _replay(project, uid, tmp_path / "one")
    _replay(project, uid, tmp_path / "two")
    assert _values(project, "w2") == [(0, 201.0), (1, 202.0)]
    assert len(project.store().query("SELECT id FROM replays")) == 2


def test_a_failed_run_replays_up_to_its_last_recorded_iteration(
    project: Project, tmp_path: Path
) -> None:
    crashing = SCRIPT.replace("../data/offset.txt", "offset.txt") + (
        "        if epoch == 2:\n            raise RuntimeError('out of memory')\n"
    )
    project.write("offset.txt", "0")
    project.write("train.py", crashing)
    project.commit("crashes in epoch 2")
    assert project.run("train.py", check=False).returncode == 1
    uid = project.store().runs()["run_uid"].iloc[-1]
    new = crashing.replace(
        "        if epoch == 2", '        flor.log("w2", state["w"] * 2)\n        if epoch == 2'
    )
    _replay(project, uid, tmp_path / "work", source=new)  # it raises where the run did
    outcome = project.store().query("SELECT status, error FROM replays").iloc[-1]
    assert (outcome.status, outcome.error) == (
        "completed", "raised as its run did: RuntimeError: out of memory"
    )  # fmt: skip
    # epochs 3 and 4 (the default is 5) never ran, so no replay computes them
    assert [i for i, _ in _values(project, "w2")] == [0, 1, 2]


def test_a_run_without_its_command_line_is_not_trusted(recorded, tmp_path: Path) -> None:  # noqa: ANN001
    project, uid = recorded
    with project.store().engine.begin() as conn:  # as recorded before flor-flows kept it
        conn.execute(text("UPDATE runs SET invocation = NULL"))
    with pytest.raises(ReplayDiverged, match="recorded no command line"):
        _replay(project, uid, tmp_path / "work")
    assert project.store().dataframe(["w2"])["w2"].isna().all()


NOISY = """
import random
import flor_flows as flor
state = {"w": 0.0}
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(3)):
        w = state["w"] + 1
        state["w"] = w
        flor.log("noise", random.random())  # unseeded: another value in every process
"""


def test_a_nondeterministic_run_diverges_and_its_values_are_kept_apart(
    project: Project, tmp_path: Path
) -> None:
    project.write("train.py", NOISY)
    project.commit("noisy")
    project.run("train.py")
    uid = project.store().runs()["run_uid"].iloc[-1]
    new = NOISY + '        flor.log("w2", w * 2)\n'
    with pytest.raises(ReplayDiverged, match=r"noise at epoch=0: recorded 0\.\d+, replayed 0\.\d+"):
        _replay(project, uid, tmp_path / "work", source=new)
    replays = project.store().query("SELECT status, error FROM replays")
    assert replays["status"].tolist() == ["diverged"]
    assert replays["error"].iloc[0].startswith("noise at epoch=0: recorded")
    # stored, but not shown as trusted
    assert [v for _, v in _values(project, "w2")] == [2.0, 4.0, 6.0]
    assert project.store().dataframe(["w2"])["w2"].isna().all()
    shown = project.store().dataframe(["w2"], include_diverged=True)
    assert shown["w2"].tolist() == [2.0, 4.0, 6.0]


def test_a_run_from_a_subdirectory_replays_there(project: Project, tmp_path: Path) -> None:
    """cwd inside the repository; an untracked data file next to the script."""
    source = SCRIPT.replace("../data/offset.txt", "offset.txt")
    project.write("src/train.py", source)
    project.commit("train in src/")
    (project.root / "src" / "offset.txt").write_text("10")  # untracked
    subprocess.run(
        [sys.executable, "train.py", "--lr", "2", "--epochs", "1"],
        cwd=project.root / "src",
        check=True,
        capture_output=True,
    )
    store = project.store()
    uid = store.runs()["run_uid"].iloc[-1]
    assert store.run_record(uid)["invocation"]["cwd"] == "src"
    settings = load_settings(project.root)
    run = store.runs().set_index("run_uid").loc[uid]
    new = source + '        flor.log("w2", state["w"] * 2)\n'
    version = prepare_version(
        project.root, run.code_version, {"src/train.py": new}, ["w2"], tmp_path, ["src/train.py"]
    )
    replay(version, uid, "src/train.py", settings, ["w2"], on_output=lambda line: None)
    assert _values(project, "w2") == [(0, 24.0)]
    assert git(project.root, "status", "--porcelain") == "?? src/offset.txt"


def test_runs_of_another_script_are_not_applicable(project: Project, tmp_path: Path) -> None:
    project.write("train.py", NOISY)
    project.write("evaluate.py", "import model\nprint('no logs here')\n")
    project.write("model.py", "X = 1\n")
    project.commit("two scripts")
    commit = git(project.root, "rev-parse", "HEAD")
    files = {"train.py": NOISY + '        flor.log("w2", 1)\n', "evaluate.py": "import model\n"}
    files["report.py"] = 'import flor_flows as flor\nflor.log("w2", 2)\n'  # a new file
    version = prepare_version(
        project.root, commit, files, ["w2"], tmp_path, ["train.py", "evaluate.py", "gone.py"]
    )
    assert version.outcome("train.py") == ("propagated", None)
    status, why = version.outcome("evaluate.py")
    assert status == "not applicable" and "logs none of w2" in why
    # the new file that logs it was no file of that version: said, in case it was
    assert why.endswith(f"; report.py has no counterpart in version {commit[:10]}")
    assert version.outcome("gone.py")[0] == "replay failed"


def test_the_view_links_untracked_files_and_the_parents_siblings(
    project: Project, tmp_path: Path
) -> None:
    from flor_flows.replay.worktree import link_untracked, view

    project.write("train.py", "print(1)\n")
    commit = project.commit("v1")
    project.write("train.py", "print(2)\n")  # an uncommitted edit: not in the version
    project.write("later.py", "print(3)\n")
    project.commit("v2")
    (project.root / "data").mkdir()
    (project.root / "data" / "x.csv").write_text("1\n")
    (project.root.parent / "beside.txt").write_text("here")
    tree = view(project.root, commit, tmp_path / "view")
    link_untracked(project.root, tree)
    assert tree == tmp_path / "view" / project.root.relative_to("/")
    assert (tree / "train.py").read_text() == "print(1)\n"
    assert not (tree / "later.py").exists()  # tracked now, not in that version
    assert (tree / "data" / "x.csv").read_text() == "1\n"
    assert (tree.parent / "beside.txt").read_text() == "here"  # ../beside.txt as the run saw it
    assert git(project.root, "status", "--porcelain") == "?? data/"  # nothing written there


def test_values_logged_several_times_in_one_context_are_all_shown(project: Project) -> None:
    """A plain `for` over batches inside a flor.loop epoch: every value, in order."""
    project.write(
        "train.py",
        """
        import flor_flows as flor
        for epoch in flor.loop("epoch", range(2)):
            for batch in range(3):
                flor.log("loss", 10.0 * epoch + batch)
            flor.log("acc", epoch / 10)
        """,
    )
    project.commit("plain inner loop")
    project.run("train.py")
    table = project.store().dataframe(["loss", "acc"])
    assert table[["epoch", "seq", "loss", "acc"]].values.tolist() == [
        [0, 0, 0.0, 0.0], [0, 1, 1.0, 0.0], [0, 2, 2.0, 0.0],
        [1, 0, 10.0, 0.1], [1, 1, 11.0, 0.1], [1, 2, 12.0, 0.1],
    ]  # fmt: skip


def test_a_dry_run_plans_and_writes_nothing(recorded) -> None:  # noqa: ANN001
    project, uid = recorded
    project.write("train.py", NEW)
    store = project.store()
    before = {t: store.query(f"SELECT COUNT(*) AS n FROM {t}")["n"][0] for t in ("backfills", "backfill_items", "replays", "logs")}  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", "replay", "--apply", "w2", "--dry-run"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert uid in proc.stdout and "1 replay(s)" in proc.stdout
    after = {t: store.query(f"SELECT COUNT(*) AS n FROM {t}")["n"][0] for t in before}
    assert after == before and before["backfills"] == 0


def test_a_dry_run_checks_each_version_it_plans(project: Project) -> None:
    """The plan shows, per run, whether its version takes the statement, before any replay."""
    old = SCRIPT.replace("../data/offset.txt", "offset.txt")
    project.write("offset.txt", "0")
    project.write("train.py", old)
    project.write("other.py", NOISY)
    project.commit("v1")
    project.run("train.py", "--epochs", "1")
    project.run("other.py")
    today = old.replace('state = {"w": offset}', 'state = {"w": offset}\nscale = 3.0') + (
        '        flor.log("w3", state["w"] * scale)\n'
    )
    project.write("train.py", today)
    project.commit("v2: a scale")
    project.run("train.py", "--epochs", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", "replay", "--apply", "w3", "--dry-run", "--all"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[-1] == "propagation"
    runs = project.store().runs()
    checks = {uid: next(line for line in lines if line.startswith(uid)) for uid in runs["run_uid"]}
    first, other, latest = (checks[uid] for uid in runs["run_uid"])
    assert "refused: train.py: w3: name 'scale' is not defined" in first
    assert "not applicable: other.py (with the modules it imports) logs none of w3" in other
    assert latest.endswith(" ok")


def test_a_propagated_file_that_does_not_compile_is_refused(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last check before a replay: whatever propagation wrote must compile."""
    from flor_flows.propagate import Placement, Propagation
    from flor_flows.replay import engine

    project.write("train.py", NOISY)
    commit = project.commit("noisy")
    broken = Propagation(
        NOISY + "        flor.log('w2', (\n", [Placement("w2", "flor.log('w2', (", 9, 1.0)]
    )
    monkeypatch.setattr(engine, "propagate_files", lambda *a, **k: {"train.py": broken})
    version = engine.prepare_version(project.root, commit, {}, ["w2"], tmp_path, ["train.py"])
    status, why = version.outcome("train.py")
    assert status == "propagation failed"
    assert why.startswith("train.py: w2: the file does not compile after the insertion: ")
