"""`flor-flows replay` as a user types it, each path against ground truth: --dry-run,
--where with --iter, the values still missing, --all --runs, and --from (a branch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Project, git

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")
TRAIN = """
import argparse
import numpy as np
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()
w = np.zeros(1)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(4)):
        w += args.lr * (epoch + 1)
        flor.log("w", float(w[0]))
"""
LINE = '        flor.log("w", float(w[0]))\n'


def _with(statement: str) -> str:
    return TRAIN.replace(LINE, LINE + f"        {statement}\n")


def _truth(lr: float, epoch: int) -> float:
    """w after `epoch`: the script's own arithmetic."""
    return lr * sum(e + 1 for e in range(epoch + 1))


def _replay(project: Project, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [FLOR_FLOWS, "replay", *args],
        cwd=project.root,
        env=os.environ | {"PREFECT_API_URL": api, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _replayed(project: Project, name: str) -> dict[tuple[str, int], float]:
    rows = project.store().query(
        "SELECT r.uid, l.i0, l.num FROM logs l JOIN runs r ON r.id = l.run_id "
        f"WHERE l.name = '{name}' AND l.source = 'replay'"
    )
    return {(uid, int(i0)): num for uid, i0, num in rows.itertuples(index=False)}


@pytest.mark.timeout(900)
def test_replay_paths_from_the_command_line(project: Project, prefect_api: str) -> None:
    project.write("train.py", TRAIN)
    project.commit("train")
    for lr in ("0.5", "0.01"):
        project.run("train.py", "--lr", lr, env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    runs = project.store().runs()
    lr_of = dict(zip(runs["run_uid"], (0.5, 0.01), strict=True))
    fast = runs["run_uid"].iloc[0]
    project.write("train.py", _with('flor.log("double", 2 * float(w[0]))'))

    plan = _replay(project, prefect_api, "--apply", "double", "--dry-run")
    assert all(uid[-6:] in plan.stdout for uid in lr_of), plan.stdout
    assert _replayed(project, "double") == {}  # a dry run writes nothing

    _replay(project, prefect_api, "--apply", "double", "--where", "lr > 0.1", "--iter", "epoch=1,3")
    got = _replayed(project, "double")
    assert sorted(got) == [(fast, 1), (fast, 3)]
    assert all(v == pytest.approx(2 * _truth(lr_of[u], e)) for (u, e), v in got.items())

    _replay(project, prefect_api, "--apply", "double")  # only what is still missing
    got = _replayed(project, "double")
    assert sorted(got) == sorted((uid, e) for uid in lr_of for e in range(4))
    assert all(v == pytest.approx(2 * _truth(lr_of[u], e)) for (u, e), v in got.items())

    _replay(project, prefect_api, "--apply", "double", "--all", "--runs", fast[-6:])  # as shown
    again = project.store().query("SELECT COUNT(*) AS n FROM logs WHERE name = 'double'")
    assert again["n"][0] == 8 and _replayed(project, "double") == got  # replaced, not added
    unknown = subprocess.run(
        [FLOR_FLOWS, "replay", "--apply", "double", "--runs", f"{fast},nosuch", "--dry-run"],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (unknown.returncode, unknown.stderr) == (
        2, "flor-flows: error: run 'nosuch': no run has this uid (`flor-flows runs` lists them)\n"
    )  # fmt: skip

    # the statement from a branch, the working tree back at the recorded code
    git(project.root, "checkout", "-q", "-b", "hindsight")
    project.write("train.py", _with('flor.log("triple", 3 * float(w[0]))'))
    project.commit("triple")
    git(project.root, "checkout", "-q", "main")
    assert "triple" not in (project.root / "train.py").read_text()
    _replay(project, prefect_api, "--apply", "triple", "--from", "hindsight", "--iter", "epoch=last")  # fmt: skip
    got = _replayed(project, "triple")
    assert sorted(got) == sorted((uid, 3) for uid in lr_of)
    assert all(v == pytest.approx(3 * _truth(lr_of[u], e)) for (u, e), v in got.items())
