"""Workers without a shared filesystem (issue 16): a backfill on Dask workers that cannot see
the repository, with checkpoints, data copies and code archives on an S3-compatible server
(moto) and the store on PostgreSQL, replays to the ground truth and leaves nothing behind.

Each worker runs in a mount namespace of its own (`unshare`, as root) in which the flow
host's directory, with the repository in it, is an empty tmpfs; it has its own working
directory, temporary directory and cache.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import distributed
import pandas as pd
import prefect_dask
import pytest

from flor_flows.replay import worktree
from flor_flows.replay.backfill import BackfillRequest
from flor_flows.store import Store
from tests import s3server
from tests.conftest import Project, git
from tests.s3server import S3Server

V1 = """
import numpy as np
import flor_flows as flor
seed = flor.arg("seed", 0)
rows = np.loadtxt(flor.data("batch", "data/batch.csv"), delimiter=",")
np.random.seed(seed)
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w += np.random.rand(3) * rows.sum(axis=0)
        flor.log("loss", float(w.sum()))
"""
V2 = re.sub(r"\bw\b", "weights", V1)  # a rename: the new statement follows it
NEW = V2.replace(
    '        flor.log("loss", float(weights.sum()))\n',
    '        flor.log("loss", float(weights.sum()))\n'
    '        flor.log("w_max", float(weights.max()))\n',
)


def _can_hide_paths() -> bool:
    """Whether this process may make mount namespaces (root on Linux, as in CI)."""
    probe = ["unshare", "--mount", "--propagation", "private", "true"]
    try:
        return subprocess.run(probe, capture_output=True, check=False).returncode == 0
    except FileNotFoundError:
        return False


@dataclass(frozen=True)
class Worker:
    process: subprocess.Popen[bytes]
    tmp: Path  # its TMPDIR
    cache: Path  # its XDG_CACHE_HOME


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """The object store, and its credentials in the environment every process inherits."""
    for key, value in s3server.credentials_env().items():
        monkeypatch.setenv(key, value)
    with s3server.running() as server:
        yield server


def _start_worker(scheduler: str, hide: Path, home: Path) -> Worker:
    """A Dask worker process to which `hide` is an empty directory."""
    hide.mkdir(parents=True, exist_ok=True)
    for sub in ("cwd", "tmp", "cache"):
        (home / sub).mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
    env |= {"TMPDIR": str(home / "tmp"), "XDG_CACHE_HOME": str(home / "cache")}
    script = (
        'mount -t tmpfs tmpfs "$1" && cd "$2" && exec "$3" -m distributed.cli.dask_worker "$4" '
        '--nthreads 1 --no-nanny --no-dashboard --local-directory "$2"'
    )
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    command += [str(hide), str(home / "cwd"), sys.executable, scheduler]
    with (home / "log").open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    return Worker(process, home / "tmp", home / "cache")


@pytest.fixture
def workers(s3: S3Server, tmp_path: Path) -> Iterator[tuple[distributed.Client, list[Worker]]]:
    """A scheduler here and two workers that cannot see `tmp_path / "host"`."""
    with (
        distributed.LocalCluster(n_workers=0, dashboard_address=None) as cluster,
        distributed.Client(cluster) as client,
    ):
        started = [
            _start_worker(cluster.scheduler_address, tmp_path / "host", tmp_path / f"worker-{i}")
            for i in range(2)
        ]
        try:
            _wait_for(client, started)
            yield client, started
        finally:
            for worker in started:
                worker.process.terminate()
            for worker in started:
                worker.process.wait(timeout=60)


def _wait_for(client: distributed.Client, started: list[Worker], timeout: float = 120) -> None:
    """Until every worker of `started` is connected (polled); a worker that exits fails."""
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info()["workers"]) < len(started):
        for worker in started:
            if worker.process.poll() is not None:
                log = (worker.tmp.parent / "log").read_text()
                raise RuntimeError(f"a worker exited ({worker.process.returncode}):\n{log}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(started)} workers did not connect in {timeout} s")
        time.sleep(0.1)


def _history(root: Path, config: dict[str, str]) -> Project:
    """A repository with two code versions and a run of each; the second uncommitted."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    project = Project(root)
    project.write(".gitignore", ".flor-flows/\ndata/\n")
    project.write("data/batch.csv", "1,2,3\n4,5,6\n")
    project.write("train.py", V1)
    project.commit("v1")
    project.run("train.py", "--kwargs", "seed=1", env=config)
    project.write("train.py", V2)
    project.run("train.py", "--kwargs", "seed=2", env=config)
    return project


def _rows(table: pd.DataFrame) -> list[dict]:
    columns = ["seed", "epoch", "loss", "w_max"]
    return table.sort_values(columns)[columns].to_dict("records")


def test_workers_without_the_repository_replay_and_leave_nothing_behind(
    s3: S3Server,
    postgres_url: str,
    workers: tuple[distributed.Client, list[Worker]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # not skipped where it cannot run: a machine without it has not tested this at all
    assert _can_hide_paths(), "this test needs `unshare --mount` (root, as in CI)"
    from flows.backfill import backfill

    client, started = workers
    bucket = s3.bucket()
    config = {
        "FLOR_FLOWS_STORE_URL": postgres_url,
        "FLOR_FLOWS_CHECKPOINT_URL": f"s3://{bucket}/checkpoints",
        "FLOR_FLOWS_DATA_URL": f"s3://{bucket}/data",
        "FLOR_FLOWS_CHECKPOINT_POLICY": "every",
        "FLOR_FLOWS_STORAGE_OPTIONS": json.dumps(s3.options()),
    }
    for key, value in config.items():  # the flow host's settings; the workers get none
        monkeypatch.setenv(key, value)
    project = _history(tmp_path / "host" / "proj", config)
    commits = Store(postgres_url).runs()["code_version"].tolist()
    project.write("train.py", NEW)  # today's working tree, not committed

    request = BackfillRequest(project=str(project.root), names=["w_max"], max_parallel=2)
    runner = prefect_dask.DaskTaskRunner(address=client.scheduler.address)
    with distributed.get_task_stream(client) as stream:
        state = backfill.with_options(task_runner=runner)(request, return_state=True)
    assert state.is_completed(), state.message
    assert "2 of 2 runs replayed" in state.message
    done = {t["key"]: t["worker"] for t in stream.data if str(t["key"]).startswith("replay_run-")}
    assert len(done) == 2 and set(done.values()) <= set(client.scheduler_info()["workers"])

    # the workers materialised the versions from the archives (their caches keep them) and
    # removed every materialised directory; the flow host's own is gone as well
    cached = {p.name for w in started for p in (w.cache / "flor-flows" / "code-versions").glob("*")}
    assert cached and cached <= {f"{c}.tar" for c in commits}
    for worker in started:
        assert list(worker.tmp.iterdir()) == [], list(worker.tmp.iterdir())
    mine = f"{worktree.WORKSPACE_PREFIX}{os.getpid()}-"
    assert not list(Path(tempfile.gettempdir()).glob(f"{mine}*"))

    # the ground truth: today's code run from scratch, with the same arguments
    store = Store(postgres_url)
    replayed = store.dataframe(["loss", "w_max"])
    assert len(replayed) == 6 and replayed["w_max"].notna().all()
    project.commit("today's code")
    for seed in (1, 2):
        project.run("train.py", "--kwargs", f"seed={seed}", env=config)
    fresh = store.dataframe(["loss", "w_max"])
    fresh = fresh[~fresh["run_uid"].isin(set(replayed["run_uid"]))]
    assert _rows(replayed) == _rows(fresh)


def test_a_workspace_is_removed_however_its_block_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with worktree.workspace() as directory:
        (directory / "v" / "train.py").parent.mkdir()
        assert worktree.owned(directory / "v")
    assert not directory.exists() and not worktree.owned(directory / "v")
    with pytest.raises(KeyboardInterrupt), worktree.workspace() as directory:
        raise KeyboardInterrupt  # a cancelled task
    assert not directory.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    leftover = tmp_path / f"{worktree.WORKSPACE_PREFIX}{dead}-abc" / "v"
    leftover.mkdir(parents=True)  # a killed worker's
    alive = tmp_path / f"{worktree.WORKSPACE_PREFIX}{os.getppid()}-abc"
    alive.mkdir()  # a running one's
    with worktree.workspace():
        pass
    assert not leftover.parent.exists() and alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [alive.name]
