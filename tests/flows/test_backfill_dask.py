"""The backfill flow on a Dask cluster: store on PostgreSQL, checkpoints on an fsspec URL.

A local cluster of two worker processes stands in for a real one; the tasks get there
through prefect-dask's task runner, as they would on any cluster, and the test checks
from the scheduler's side that the replays really ran in its workers.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import distributed
import pandas as pd
import prefect_dask
import pytest

from flor_flows.config import load_settings
from flor_flows.replay.backfill import BackfillRequest
from flor_flows.store import Store
from tests.conftest import Project, git

V1 = """
import numpy as np
import flor_flows as flor
seed = flor.arg("seed", 0)
scale = flor.arg("scale", 2.0)
np.random.seed(seed)
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w += np.random.rand(3)
        flor.log("loss", float(w.sum()))
"""
V2 = re.sub(r"\bw\b", "weights", V1)  # a rename: the statement follows it
NEW = V2.replace(
    '        flor.log("loss", float(weights.sum()))\n',
    '        flor.log("loss", float(weights.sum()))\n'
    '        flor.log("scaled", scale * float(weights.max()))\n',
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[distributed.Client]:
    """Two worker processes of one thread each; no FLOR_FLOWS_* variables in their env."""
    with pytest.MonkeyPatch.context() as env:
        for key in [k for k in os.environ if k.startswith("FLOR_FLOWS_")]:
            env.delenv(key)
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.fixture
def history(project: Project, postgres_url: str, tmp_path: Path) -> Project:
    """Two code versions with a run each; store on PostgreSQL, checkpoints at a file:// URL."""
    checkpoints = f"file://{tmp_path / 'checkpoints'}"
    project.write(
        "pyproject.toml",
        f"""
        [tool.flor-flows]
        store_url = "{postgres_url}"
        checkpoint_url = "{checkpoints}"
        checkpoint_policy = "every"
        """,
    )
    for seed, source in enumerate([V1, V2], start=1):
        project.write("train.py", source)
        project.commit(f"v{seed}")
        project.run("train.py", "--kwargs", f"seed={seed}")
    assert len(list((tmp_path / "checkpoints").rglob("*.ckpt"))) == 6  # 2 runs x 3 epochs
    assert not (project.root / ".flor-flows" / "checkpoints").exists()
    return project


def _replays_in(tasks: list[dict], client: distributed.Client) -> dict[str, str]:
    """{dask key: worker address} of the replay tasks the scheduler saw done by its workers.

    Tasks run in the flow's own process never reach the scheduler's task stream.
    """
    workers = set(client.scheduler_info()["workers"])
    found = {t["key"]: t["worker"] for t in tasks if str(t["key"]).startswith("replay_run-")}
    assert set(found.values()) <= workers
    assert all(t["status"] == "OK" for t in tasks)
    return found


def _rows(table: pd.DataFrame) -> list[dict]:
    columns = ["seed", "epoch", "loss", "scaled"]
    return table.sort_values(columns)[columns].to_dict("records")


def test_a_backfill_runs_in_dask_workers(
    history: Project, postgres_url: str, cluster: distributed.Client, tmp_path: Path
) -> None:
    from flows.backfill import backfill

    history.write("train.py", NEW)  # today's working tree, not committed
    request = BackfillRequest(project=str(history.root), names=["scaled"], max_parallel=2)
    runner = prefect_dask.DaskTaskRunner(address=cluster.scheduler.address)
    with distributed.get_task_stream(cluster) as stream:
        state = backfill.with_options(task_runner=runner)(request, return_state=True)
    assert state.is_completed(), state.message
    assert "2 of 2 runs replayed" in state.message
    assert len(_replays_in(stream.data, cluster)) == 2

    store = Store(postgres_url)
    replayed = store.dataframe(["scaled", "loss"])
    assert len(replayed) == 6 and replayed["scaled"].notna().all()
    clone = tmp_path / "elsewhere" / history.root.name  # a new clone finds them in the store
    git(tmp_path, "clone", "-q", str(history.root), str(clone))
    in_clone = Store(load_settings(clone).store_url).dataframe(["scaled"])
    assert in_clone["scaled"].tolist() == replayed["scaled"].tolist()

    # the ground truth: today's code run from scratch, with the same arguments
    history.commit("today's code")
    for seed in (1, 2):
        history.run("train.py", "--kwargs", f"seed={seed}")
    fresh = store.dataframe(["scaled", "loss"])
    fresh = fresh[~fresh["run_uid"].isin(set(replayed["run_uid"]))]
    assert len(fresh) == 6
    assert _rows(replayed) == _rows(fresh)


def test_replay_dask_option(
    history: Project,
    postgres_url: str,
    cluster: distributed.Client,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flor_flows.cli import main

    history.write("train.py", NEW)
    args = ["replay", "--apply", "scaled", "--project-dir", str(history.root)]
    with distributed.get_task_stream(cluster) as stream:
        code = main([*args, "--dask", cluster.scheduler.address])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "2 of 2 runs replayed" in out.out
    assert len(_replays_in(stream.data, cluster)) == 2
    assert Store(postgres_url).dataframe(["scaled"])["scaled"].notna().sum() == 6


def test_replay_dask_option_errors(
    project: Project, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flor_flows.cli import main

    args = ["replay", "--apply", "x", "--project-dir", str(project.root), "--dask", "tcp://h:1"]
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(args) == 2
    assert "set PREFECT_API_URL" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "prefect_dask", None)  # as if not installed
    assert main(args) == 2
    assert "pip install 'flor-flows[dask]'" in capsys.readouterr().err
