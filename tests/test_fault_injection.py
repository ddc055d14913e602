"""Fault injection (issue 12): kills at random points, a dropped database connection, a full
disk. Each trial counts the values logged before the fault that the store lacks: always 0.

Needs root for the full-disk trial (a small tmpfs is mounted), as CI has.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from flor_flows.store import Store
from tests.conftest import Project

# Logs one value per step and says when, in a file, until it is killed or reaches `steps`.
SCRIPT = """
import sys, time
import flor_flows as flor
from flor_flows.record import session
progress, steps = open(sys.argv[1], "a"), int(sys.argv[2])
session.current().buffer.wait_ready()
print(session.current().buffer._writer.process.pid, flush=True)
for step in flor.loop("step", range(steps)):
    flor.log("x", step)
    flor.log("note", f"step {step} " + "." * 200)
    progress.write(f"{step} {time.time()}\\n")
    progress.flush()
    time.sleep(0.004)
print("trained to the end", flush=True)
"""
ENV = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}


def _start(project: Project, steps: int, env: dict[str, str] | None = None) -> subprocess.Popen:
    progress = project.root / "progress.txt"
    progress.unlink(missing_ok=True)
    return subprocess.Popen(
        [sys.executable, "train.py", str(progress), str(steps)],
        cwd=project.root,
        env=ENV | (env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _logged(project: Project) -> list[tuple[int, float]]:
    lines = (project.root / "progress.txt").read_text().splitlines()
    return [(int(s), float(t)) for s, t in (line.split() for line in lines if " " in line)]


def _wait_for(condition, seconds: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def script(project: Project) -> Project:
    project.write("train.py", SCRIPT)
    project.commit("the script")
    return project


@pytest.mark.parametrize("trial", range(4))
def test_training_killed_at_a_random_point_keeps_what_it_logged(
    script: Project, trial: int
) -> None:
    """SIGKILL of the training process: every value logged a flush (1 s) before is kept."""
    proc = _start(script, steps=100_000)
    proc.stdout.readline()  # the run is open
    time.sleep(random.Random(trial).uniform(0.3, 2.5))
    killed_at = time.time()
    proc.kill()
    proc.wait()
    store = Store(script.store_url)
    assert store.runs()["status"].tolist() == ["failed"]  # shown so at once: its process is gone
    stored_status = lambda: store.query("SELECT status FROM runs")["status"].tolist()  # noqa: E731
    _wait_for(lambda: stored_status() == ["failed"], 30, "its writer to mark the run failed")
    stored = set(store.query("SELECT COALESCE(ival, num) AS v FROM logs WHERE name = 'x'")["v"])
    lost = [s for s, t in _logged(script) if t < killed_at - 1.5 and s not in stored]
    assert lost == []


@pytest.mark.parametrize("trial", range(3))
def test_a_writer_killed_at_a_random_point_loses_nothing(script: Project, trial: int) -> None:
    proc = _start(script, steps=600)
    writer = int(proc.stdout.readline())
    time.sleep(random.Random(100 + trial).uniform(0.1, 1.5))
    os.kill(writer, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "trained to the end" in out, err
    store = Store(script.store_url)
    assert store.dataframe(["x"])["x"].tolist() == list(range(600))  # each once
    assert store.runs()["status"].tolist() == ["completed"]


def test_dropped_database_connections_lose_nothing(script: Project, postgres_url: str) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    proc = _start(script, steps=1500, env={"FLOR_FLOWS_STORE_URL": postgres_url})
    proc.stdout.readline()
    drops = 0
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        while proc.poll() is None and drops < 5:
            time.sleep(random.Random(drops).uniform(0.2, 0.8))
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
            drops += 1
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "trained to the end" in out, err
    assert drops >= 2
    store = Store(postgres_url)
    assert store.dataframe(["x"])["x"].tolist() == list(range(1500))
    assert store.runs()["status"].tolist() == ["completed"]


@pytest.fixture
def small_disk(tmp_path: Path):  # noqa: ANN201
    """A 1 MB filesystem (tmpfs) for the store, grown to 64 MB by calling the fixture's value."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield (
            mount,
            lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True),
        )
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_nothing(script: Project, small_disk) -> None:  # noqa: ANN001
    mount, grow = small_disk
    env = {"FLOR_FLOWS_STORE_URL": f"sqlite:///{mount}/store.db", "FLOR_FLOWS_STORE_PATIENCE": "2"}
    proc = _start(script, steps=3000, env=env)
    writer = int(proc.stdout.readline())
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and "trained to the end" in out, err
    assert "the store is unreachable (database or disk is full)" in err
    store = Store(env["FLOR_FLOWS_STORE_URL"])
    assert len(store.dataframe(["x"])) < 3000  # the disk filled up during the run
    grow()
    script.write("other.py", "import flor_flows as flor\nflor.log('y', 1)\n")
    script.commit("another script")
    _wait_for(lambda: not Path(f"/proc/{writer}").exists(), 30, "the first writer to exit")
    script.run("other.py", env=env)  # its writer writes what the first one kept on disk
    assert store.dataframe(["x"])["x"].tolist() == list(range(3000))
    assert store.runs()["status"].tolist() == ["completed", "completed"]
