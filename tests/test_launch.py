"""Launching a training script from outside: what happens when the launcher is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.conftest import Project

LAUNCHER = """
import signal, sys
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # as Prefect does on cancellation
from flor_flows import children
from flor_flows.training import launch
from flor_flows.training.request import TrainingRequest
request = TrainingRequest(project=sys.argv[1], warm_start=False)
run = launch.new_launch(request)
context = launch.context_of(run, request, launch.snapshot_code(run), {}, None, None)
children.run(run, context, on_output=lambda line: print(line, flush=True))
"""

SLOW = """
import time
import flor_flows as flor
for epoch in flor.loop("epoch", range(1000)):
    flor.log("loss", 1.0 / (epoch + 1))
    if epoch == 1:
        print("training", flush=True)
    time.sleep(0.1)
"""


def test_stopping_the_launcher_stops_the_script_and_fails_its_run(project: Project) -> None:
    project.write("train.py", SLOW)
    project.commit("slow")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(project.root)],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout.readline().strip() == "training"
    launcher.send_signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 143

    deadline = time.monotonic() + 30
    while (runs := project.store().runs())["status"].iloc[0] == "running":
        assert time.monotonic() < deadline, "the run never ended"
        time.sleep(0.2)
    run = runs.iloc[0]
    assert run["status"] == "failed" and "SIGTERM" in run["error"]
    assert len(project.store().dataframe(["loss"])) >= 2  # what it logged is kept
    script_alive = subprocess.run(["pgrep", "-f", str(project.root / "train.py")])
    assert script_alive.returncode == 1  # no orphaned training process


def test_batches_are_read_only_under_the_project_or_configured_roots(
    project: Project, tmp_path, monkeypatch
) -> None:  # noqa: ANN001
    import pytest

    from flor_flows.errors import DataError
    from flor_flows.training import launch
    from flor_flows.training.request import TrainingRequest

    project.write("train.py", "import flor_flows as flor\n")
    project.write("data/b.csv", "x\n1\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "b.csv").write_text("x\n2\n")
    run = launch.new_launch(TrainingRequest(project=str(project.root), script="train.py"))
    assert launch.register_batches(run, {"batch": "data/b.csv"})["batch"].bytes == 4
    for uri in ("/etc/passwd", str(outside / "b.csv"), "data/../../elsewhere/b.csv"):
        with pytest.raises(DataError, match="outside the project and the configured batch roots"):
            launch.register_batches(run, {"batch": uri})
    monkeypatch.setenv("FLOR_FLOWS_BATCH_ROOTS", f"{outside}, s3://bucket/incoming/")
    run = launch.new_launch(TrainingRequest(project=str(project.root), script="train.py"))
    assert launch.register_batches(run, {"batch": str(outside / "b.csv")})["batch"].bytes == 4
    assert not run.settings.batch_allowed("s3://other-bucket/b.csv")
    assert run.settings.batch_allowed("s3://bucket/incoming/b.csv")
