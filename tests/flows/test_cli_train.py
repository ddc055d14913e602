"""`flor-flows train`: one training flow run from the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import Project

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")


def _train(project: Project, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PREFECT_API_URL": api}
    return subprocess.run(
        [FLOR_FLOWS, "train", "train.py", *args],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_train_runs_one_flow_with_its_kwargs_and_batch(digits: Project, prefect_api: str) -> None:
    done = _train(
        digits,
        prefect_api,
        "--batch",
        "data/batches/2026-11-02.csv",
        "--kwargs",
        "epochs=1",
        "lr=0.2",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    uid = done.stdout.strip().splitlines()[-1]
    run = digits.store().runs().set_index("run_uid").loc[uid]
    assert run["status"] == "completed" and run["prefect_flow_run_id"]
    assert (run["epochs"], run["lr"]) == (1, 0.2)
    assert run["data.batch"].endswith("data/batches/2026-11-02.csv")


def test_train_reports_failures_and_bad_input(digits: Project, prefect_api: str) -> None:
    missing = _train(digits, prefect_api, "--batch", "data/batches/nope.csv")
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"flor-flows: error: --batch: {digits.root / 'data/batches/nope.csv'} is not a file"
    ]  # at once, before Prefect starts
    malformed = _train(digits, prefect_api, "--batch", "x.csv", "--kwargs", "epochs")
    assert malformed.returncode == 2 and "NAME=VALUE" in malformed.stderr
    assert "Traceback" not in malformed.stderr
