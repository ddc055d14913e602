"""The replay engine: new statements propagated into six code versions, replayed from
checkpoints in private copies, equal to running the new code from scratch."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flor_flows import children
from flor_flows.config import load_settings
from flor_flows.errors import ReplayFailed
from flor_flows.replay import engine
from flor_flows.replay.engine import prepare_version, replay
from tests.conftest import Project, git

BODY = """
import numpy as np
import flor_flows as flor
np.random.seed(flor.arg("seed", 0))
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(5)):
        for step in flor.loop("step", range(4)):
            w += np.random.rand(3)
            flor.log("loss", float(w.sum()))
"""
VERSIONS = [
    BODY,
    re.sub(r"\bw\b", "weights", BODY),  # renamed
    # the epoch body moved into a function
    BODY.replace(
        "w = np.zeros(3)\n",
        "w = np.zeros(3)\n\n\ndef run_epoch(w):\n"
        "    for step in flor.loop('step', range(4)):\n"
        "        w += np.random.rand(3)\n"
        "        flor.log('loss', float(w.sum()))\n\n\n",
    ).replace(
        '        for step in flor.loop("step", range(4)):\n'
        "            w += np.random.rand(3)\n"
        '            flor.log("loss", float(w.sum()))\n',
        "        run_epoch(w)\n",
    ),
]
VERSIONS.append(  # a main() wrapper around the version with the function
    VERSIONS[2]
    .replace('np.random.seed(flor.arg("seed", 0))\n', "")
    .replace(
        "with flor.checkpointing",
        "def main():\n    np.random.seed(flor.arg('seed', 0))\n    with flor.checkpointing",
    )
    .replace("\n    for epoch", "\n        for epoch")
    .replace("\n        run_epoch(w)", "\n            run_epoch(w)")
    + "\n\nif __name__ == '__main__':\n    main()\n"
)
VERSIONS.append(VERSIONS[3].replace("range(5)", "list(range(5))"))  # the epoch loop rewritten
VERSIONS.append(  # an unrelated statement and comments
    VERSIONS[4]
    .replace("def run_epoch(w):\n", "def run_epoch(w):\n    # one pass\n")
    .replace(
        "            run_epoch(w)",
        "            run_epoch(w)  # train\n            flor.log('norm', float(np.linalg.norm(w)))",
    )
)
NEW = (
    VERSIONS[5]
    .replace(
        "            run_epoch(w)  # train\n",
        "            flor.log('w_start', float(w.sum()))\n            run_epoch(w)  # train\n",
    )
    .replace(
        "            flor.log('norm', float(np.linalg.norm(w)))\n",
        "            flor.log('norm', float(np.linalg.norm(w)))\n            flor.log('w_end', float(w[0]))\n",
    )
)
NAMES = ("w_start", "w_end")


def test_the_version_texts_are_what_the_test_means() -> None:
    assert len(set(VERSIONS)) == 6
    for source in [*VERSIONS, NEW]:
        compile(source, "version", "exec")
    assert "w_start" in NEW and "w_end" in NEW and "def main" in NEW


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, pd.DataFrame, pd.DataFrame]:
    """Six versions, one run each (seed k), and the ground truth of the new code per seed."""
    root = tmp_path_factory.mktemp("replay") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text(".flor-flows/\n")
    project = Project(root)
    every = {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}
    for seed, source in enumerate(VERSIONS, start=1):
        project.write("train.py", source)
        project.commit(f"v{seed}")
        project.run("train.py", "--kwargs", f"seed={seed}", env=every)
    runs = project.store().runs()
    truth_root = tmp_path_factory.mktemp("truth") / "proj"
    truth_root.mkdir()
    git(truth_root, "init", "-q", "-b", "main")
    truth = Project(truth_root)
    truth.write("train.py", NEW)
    for seed in range(1, 7):
        truth.run("train.py", "--kwargs", f"seed={seed}")
    expected = truth.store().dataframe(list(NAMES))
    return project, runs, expected


def _replay_all(project: Project, runs: pd.DataFrame, workdir: Path, **kw) -> None:  # noqa: ANN003
    settings = load_settings(project.root)
    for run in runs.itertuples():
        version = prepare_version(project.root, run.code_version, {"train.py": NEW}, NAMES, workdir)
        assert not version.refusals
        replay(
            version, run.run_uid, run.entry_script, settings, NAMES, on_output=lambda _: None, **kw
        )


def test_six_versions_replay_to_the_ground_truth(history, tmp_path: Path) -> None:
    project, runs, expected = history
    before = git(project.root, "status", "--porcelain")
    _replay_all(project, runs, tmp_path)
    assert git(project.root, "status", "--porcelain") == before  # the user's tree untouched
    got = project.store().dataframe(list(NAMES))
    got = got[got["w_start"].notna()].sort_values(["seed", "epoch"]).reset_index(drop=True)
    want = expected.sort_values(["seed", "epoch"]).reset_index(drop=True)
    assert got["seed"].tolist() == want["seed"].tolist() and len(got) == 6 * 5
    assert got["w_start"].tolist() == pytest.approx(want["w_start"].tolist())
    assert got["w_end"].tolist() == pytest.approx(want["w_end"].tolist())
    losses = project.store().dataframe(["loss"])
    assert losses["loss"].notna().all() and "loss@replay" not in losses  # forward rows untouched


MARKED = """
import os
import numpy as np
import flor_flows as flor


def mark(what):
    with open(os.environ["MARKS"], "a") as marks:
        print(what, file=marks)


np.random.seed(0)
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(5)):
        mark(epoch)
        w += np.random.rand(3)
        flor.log("loss", float(w.sum()))
"""


def test_a_replay_runs_only_its_selected_iterations_in_the_version_copy(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marks = tmp_path / "marks"
    monkeypatch.setenv("MARKS", str(marks))
    project.write("train.py", MARKED)
    commit = project.commit("v1")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every", "MARKS": str(marks)})
    marks.unlink()
    # today's tree: a new statement that needs the epoch's head, and a line that marks where
    # the script runs from (not a log statement: it stays in today's tree)
    new = MARKED.replace(
        "        mark(epoch)\n", '        mark(epoch)\n        flor.log("w_start", float(w[0]))\n'
    ).replace("np.random.seed(0)\n", 'mark("user tree")\nnp.random.seed(0)\n')
    project.write("train.py", new)
    uid = project.store().runs()["run_uid"][0]
    before = project.store().query("SELECT COALESCE(MAX(id), 0) AS n FROM replays")["n"][0]
    names = ("w_start",)
    version = prepare_version(project.root, commit, {"train.py": new}, names, tmp_path / "v")
    replay(version, uid, "train.py", load_settings(project.root), names, iterations=(3,),
           on_output=lambda _: None)  # fmt: skip
    assert marks.read_text().split() == ["3"]  # epoch 3 alone, in the version's copy
    np.random.seed(0)
    w_after = np.cumsum(np.random.rand(5, 3), axis=0)  # w at the end of each epoch
    got = project.store().query(
        f"SELECT i0, num FROM logs WHERE name = 'w_start' AND replay_id > {before}"
    )
    assert got["i0"].tolist() == [3] and got["num"].tolist() == pytest.approx([w_after[2][0]])


def test_a_failing_replay_is_reported_with_its_stderr(history, tmp_path: Path) -> None:
    project, runs, _ = history
    run = runs.iloc[0]
    broken = NEW.replace("flor.log('w_end', float(w[0]))", "flor.log('w_end', 1 / 0)")
    settings = load_settings(project.root)
    version = prepare_version(
        project.root, run["code_version"], {"train.py": broken}, ("w_end",), tmp_path
    )
    with pytest.raises(ReplayFailed, match="ZeroDivisionError"):
        replay(
            version,
            run["run_uid"],
            run["entry_script"],
            settings,
            ("w_end",),
            on_output=lambda _: None,
        )


def test_a_missing_checkpoint_fails_the_replay_in_one_line(
    project: Project, tmp_path: Path
) -> None:
    project.write("train.py", MARKED.replace("        mark(epoch)\n", ""))
    commit = project.commit("v1")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    uid = project.store().runs()["run_uid"][0]
    (gone,) = (project.root / ".flor-flows" / "checkpoints" / uid).glob("epoch-2.*")
    gone.unlink()
    new = MARKED.replace("        mark(epoch)\n", '        flor.log("w0", float(w[0]))\n')
    version = prepare_version(project.root, commit, {"train.py": new}, ("w0",), tmp_path / "v")
    seen: list[str] = []
    with pytest.raises(ReplayFailed) as failed:
        replay(version, uid, "train.py", load_settings(project.root), ("w0",), iterations=(3,),
               on_output=seen.append)  # fmt: skip
    assert str(failed.value).startswith(
        f"replay of run {uid} (train.py at {commit[:10]}) failed: cannot read checkpoint "
    )
    assert str(failed.value).endswith("(CheckpointError)") and "\n" not in str(failed.value)
    # streamed: where the script met it and the error, not its path through flor-flows
    said = "\n".join(seen)
    assert "Traceback" not in said and "flor_flows/" not in said, said
    assert re.search(r'File ".*train\.py", line \d+, in <module>', said), said
    assert "flor_flows.errors.CheckpointError: cannot read checkpoint " in said
    (error,) = project.store().query("SELECT error FROM replays")["error"]
    assert error.startswith("Traceback (most recent call last):")  # kept whole in the record
    assert "flor_flows/versioning/checkpoints.py" in error


FAILING = """
import numpy as np
import flor_flows as flor
w = np.zeros(2)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(5)):
        w += epoch
        flor.log("loss", float(w.sum()))
        if epoch == 2:
            raise RuntimeError("diverging loss at epoch 2")
"""


def test_a_failed_run_replays_when_it_raises_what_the_run_raised(
    project: Project, tmp_path: Path
) -> None:
    project.write("train.py", FAILING)
    commit = project.commit("v1")
    failed = project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}, check=False)
    assert failed.returncode == 1
    uid = project.store().runs()["run_uid"][0]
    settings = load_settings(project.root)
    new = FAILING.replace(
        "        if epoch", '        flor.log("w0", float(w[0]))\n        if epoch'
    )
    version = prepare_version(project.root, commit, {"train.py": new}, ("w0",), tmp_path / "v")
    replay(version, uid, "train.py", settings, ("w0",), on_output=lambda _: None)
    assert project.store().dataframe(["w0"])["w0"].tolist() == [0.0, 1.0, 3.0]
    (replayed,) = project.store().query("SELECT status, error FROM replays").itertuples()
    assert (replayed.status, replayed.error) == (
        "completed", "raised as its run did: RuntimeError: diverging loss at epoch 2"
    )  # fmt: skip
    other = new.replace('flor.log("w0", float(w[0]))', 'flor.log("w0", float(w[0]) / epoch)')
    version = prepare_version(project.root, commit, {"train.py": other}, ("w0",), tmp_path / "o")
    with pytest.raises(ReplayFailed, match="ZeroDivisionError: float division by zero"):
        replay(version, uid, "train.py", settings, ("w0",), on_output=lambda _: None)


RELATIVE = """
import flor_flows as flor
scale = float(open("scale.txt").read())  # a tracked file, by a path relative to the cwd
with open("written.txt", "a") as out:  # and a file the run writes there
    print("ran", file=out)
for epoch in flor.loop("epoch", range(3)):
    flor.log("loss", scale * epoch)
"""


def test_a_replay_resolves_relative_paths_in_the_version_copy(
    project: Project, tmp_path: Path
) -> None:
    """The run's working directory is that of its code version: a tracked file it read is
    read as the version has it (not as the user's tree has it today), and what it writes
    lands in the copy, not in the user's tree."""
    project.write("scale.txt", "2\n")
    project.write("train.py", RELATIVE)
    commit = project.commit("v1")
    project.run("train.py")
    (project.root / "written.txt").unlink()  # the run's output, not part of the project
    project.write("scale.txt", "3\n")  # today's tree: another scale, uncommitted
    new = RELATIVE + '    flor.log("double", 2 * scale * epoch)\n'
    project.write("train.py", new)
    before = git(project.root, "status", "--porcelain")
    uid = project.store().runs()["run_uid"][0]
    names = ("double",)
    version = prepare_version(project.root, commit, {"train.py": new}, names, tmp_path / "v")
    replay(version, uid, "train.py", load_settings(project.root), names, on_output=lambda _: None)
    got = project.store().dataframe(["double"])
    assert got["double"].tolist() == [2 * 2.0 * epoch for epoch in range(3)]  # scale 2, v1's
    assert (version.directory / "written.txt").read_text() == "ran\n"
    assert not (project.root / "written.txt").exists()
    assert git(project.root, "status", "--porcelain") == before


def test_a_replay_process_that_ended_without_a_word_is_said_how() -> None:
    killed = children.Outcome("r", returncode=-9, seconds=1.0, stderr_tail="")
    assert engine._failure(killed) == "was killed by signal 9 (SIGKILL), printing nothing"
    failed = children.Outcome("r", returncode=3, seconds=1.0, stderr_tail="boom\n")
    assert engine._failure(failed) == "exited with code 3; the last lines of its stderr:\nboom"
