"""Scheduled retraining: each arrived batch is trained on exactly once, in arrival order."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flor_flows.training.request import RetrainingRequest
from flows.retraining import retrain
from tests.conftest import Project
from tests.flows.conftest import arrive

WATCH = "data/incoming/*.csv"


def _retrain(project: Project):  # noqa: ANN202 - a Prefect State
    request = RetrainingRequest(project=str(project.root), watch=WATCH, args={"epochs": "1"})
    return retrain(request, return_state=True)


def _batches(project: Project) -> list[str]:
    runs = project.store().runs()
    return [Path(uri).name for uri in runs["data.batch"]]


def test_retraining_trains_on_new_batches_in_arrival_order_then_waits(digits: Project) -> None:
    arrive(digits, "2026-11-02.csv", "2026-11-01.csv")  # arrival order, not name order
    state = _retrain(digits)
    assert state.is_completed(), state.message
    first, second = state.result()
    assert _batches(digits) == ["2026-11-02.csv", "2026-11-01.csv"]
    runs = digits.store().runs().set_index("run_uid")
    assert runs.loc[second, "resumed_from"] == first  # each run continues the previous one

    idle = _retrain(digits)
    assert idle.is_completed() and idle.message == "no new data" and idle.result() == []

    arrive(digits, "2026-11-03.csv")
    (third,) = _retrain(digits).result()
    assert _batches(digits)[-1] == "2026-11-03.csv"
    assert digits.store().runs().set_index("run_uid").loc[third, "resumed_from"] == second


def test_a_failed_retraining_gives_its_batches_back(digits: Project) -> None:
    arrive(digits, "2026-11-01.csv", "2026-11-02.csv")
    good = digits.root / "data" / "incoming" / "2026-11-01.csv"
    content = good.read_bytes()
    good.write_text("not,a\ndigits,batch\n")  # a corrupt batch: training on it fails
    os.utime(good, (1_800_000_000, 1_800_000_000))
    failed = _retrain(digits)
    assert failed.is_failed()
    assert digits.store().runs()["status"].tolist() == ["failed"]

    good.write_bytes(content)  # fixed in place: both batches are still due
    os.utime(good, (1_800_000_000, 1_800_000_000))
    assert len(_retrain(digits).result()) == 2
    assert _batches(digits) == ["2026-11-01.csv", "2026-11-01.csv", "2026-11-02.csv"]


def test_two_training_flows_at_once_lose_nothing(digits: Project, prefect_api: str) -> None:
    """Two processes, one store, one Prefect API: every value of both runs arrives."""
    code = (
        "import sys\n"
        "from flows.training import train\n"
        "from flor_flows.training.request import TrainingRequest\n"
        "request = TrainingRequest(project=sys.argv[1], batch=sys.argv[2], args={'epochs': '3'},"
        " warm_start=False)\n"
        "print(train(request))\n"
    )
    env = os.environ | {"PREFECT_API_URL": prefect_api}
    repo = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(digits.root), f"data/batches/2026-11-0{day}.csv"],
            cwd=repo,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for day in (1, 2)
    ]
    outputs = [proc.communicate(timeout=240) for proc in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]

    store = digits.store()
    runs = store.runs()
    assert runs["status"].tolist() == ["completed", "completed"]
    table = store.dataframe(["loss", "acc"])
    for uid, rows in table.groupby("run_uid"):
        batch = runs.set_index("run_uid").loc[uid, "data.batch"]
        samples = len(Path(batch).read_text().splitlines()) - 1
        steps = -(-samples // 32)  # ceil(samples / batch size)
        assert len(rows) == 3 * steps and rows["loss"].notna().all(), uid
        assert rows.groupby("epoch")["acc"].nunique().tolist() == [1, 1, 1]
