"""Training a script as people write it: its own argparse options, no flor.data batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flor_flows.training.request import TrainingRequest
from flows.training import NO_BATCH, train
from tests.conftest import Project

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")

ARGPARSE_SCRIPT = """
import argparse

import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()

weight = 1.0
for epoch in flor.loop("epoch", range(args.epochs)):
    weight -= args.lr * weight
    flor.log("lr", args.lr)
    flor.log("weight", weight)
"""


@pytest.fixture
def argparse_project(project: Project) -> Project:
    project.write("train.py", ARGPARSE_SCRIPT)
    project.commit("an argparse script")
    return project


def _logged(project: Project, uid: str) -> list[tuple[int, float, float]]:
    frame = project.store().dataframe(["lr", "weight"])
    frame = frame[frame["run_uid"] == uid].sort_values("epoch")
    return list(zip(frame["epoch"], frame["lr"], frame["weight"], strict=True))


def test_cli_passes_everything_after_the_separator_to_the_script(
    argparse_project: Project, prefect_api: str
) -> None:
    done = subprocess.run(
        [FLOR_FLOWS, "train", "train.py", "--", "--epochs", "2", "--lr", "0.5"],
        cwd=argparse_project.root,
        env=os.environ | {"PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    uid = done.stdout.strip().splitlines()[-1]
    assert _logged(argparse_project, uid) == [(0, 0.5, 0.5), (1, 0.5, 0.25)]
    run = argparse_project.store().runs().set_index("run_uid").loc[uid]
    assert run["status"] == "completed"
    assert not [c for c in run.index if c.startswith("data.")]  # no batch was registered


def test_python_api_takes_argv_and_says_there_was_no_batch(argparse_project: Project) -> None:
    request = TrainingRequest(
        project=str(argparse_project.root), argv=["--epochs", "3", "--lr", "0.25"]
    )
    assert request.batch is None and request.batches() == {}
    state = train(request, return_state=True)
    assert state.is_completed(), state.message
    uid = state.result()
    assert NO_BATCH in state.message and uid in state.message
    assert _logged(argparse_project, uid) == [
        (0, 0.25, 0.75),
        (1, 0.25, 0.5625),
        (2, 0.25, 0.421875),
    ]


def test_the_script_defaults_apply_without_argv(argparse_project: Project) -> None:
    state = train(TrainingRequest(project=str(argparse_project.root)), return_state=True)
    assert state.is_completed(), state.message
    assert [lr for _, lr, _ in _logged(argparse_project, state.result())] == [0.1] * 5
