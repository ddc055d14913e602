"""The store failing under a running training or replay (issue 12): training goes on, nothing
is lost, and a replay whose outcome the store did not take is not reported replayed."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from flor_flows.config import load_settings
from flor_flows.errors import ReplayFailed
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.store import Store
from tests.conftest import Project

# At step 20 the script cuts the store off: it drops every other connection to the store's
# database and, with `lock`, refuses new ones, as a restarting or unreachable server would.
SCRIPT = """
import sys, time
import psycopg
import flor_flows as flor
from flor_flows.record import session
database, lock = sys.argv[1], sys.argv[2] == "lock"
session.current().buffer.wait_ready()  # the run is open in the store
for step in flor.loop("step", range(40)):
    flor.log("x", step)
    if step == 20:
        session.current().buffer.sync()  # steps 0-20 are in the store before the cut
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            if lock:
                admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (database,),
            )
    time.sleep(0.05)
print("trained to the end")
"""


def _admin(sql: str) -> None:
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(sql)


def test_a_dropped_connection_costs_nothing(project: Project, postgres_url: str) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    project.write("train.py", SCRIPT)
    project.commit("train")
    proc = project.run("train.py", database, "drop", env={"FLOR_FLOWS_STORE_URL": postgres_url})
    assert "trained to the end" in proc.stdout
    store = Store(postgres_url)
    assert store.dataframe(["x"])["x"].tolist() == list(range(40))
    assert store.runs()["status"].tolist() == ["completed"]


def test_a_store_down_past_the_end_is_written_by_the_next_run(
    project: Project, postgres_url: str
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    project.write("train.py", SCRIPT)
    project.commit("train")
    env = {"FLOR_FLOWS_STORE_URL": postgres_url, "FLOR_FLOWS_STORE_PATIENCE": "2"}
    try:
        proc = project.run("train.py", database, "lock", env=env)
    finally:
        _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    assert "trained to the end" in proc.stdout  # the training never noticed
    assert "the store is unreachable" in proc.stderr
    assert "the next run that opens the store writes them" in proc.stderr
    kept = list((project.root / ".flor-flows" / "spill").glob("*.spill"))
    assert len(kept) == 1
    store = Store(postgres_url)
    assert store.dataframe(["x"])["x"].tolist() == list(range(21))  # before the cut
    project.write("other.py", "import flor_flows as flor\nflor.log('y', 1)\n")
    project.commit("other")
    project.run("other.py", env={"FLOR_FLOWS_STORE_URL": postgres_url})
    assert not kept[0].exists()
    assert store.dataframe(["x"])["x"].tolist() == list(range(40))  # each value once
    assert store.runs()["status"].tolist() == ["completed", "completed"]


# Its replays, with CUT_STORE set, cut the store off once everything but the outcome is in.
REPLAYED = """
import os
import numpy as np
import psycopg
import flor_flows as flor
from flor_flows.record import session
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w += epoch
        flor.log("loss", float(w.sum()))
if os.environ.get("CUT_STORE"):
    session.current().buffer.sync()
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
        database = os.environ["CUT_STORE"]
        admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            (database,),
        )
"""


def test_a_replay_whose_outcome_waits_on_disk_is_not_reported_replayed(
    project: Project, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = postgres_url.rsplit("/", 1)[1]
    env = {"FLOR_FLOWS_STORE_URL": postgres_url, "FLOR_FLOWS_STORE_PATIENCE": "2",
           "FLOR_FLOWS_CHECKPOINT_POLICY": "every"}  # fmt: skip
    for name, value in env.items():  # the replay's, from this process
        monkeypatch.setenv(name, value)
    project.write("train.py", REPLAYED)
    commit = project.commit("train")
    project.run("train.py", env=env)
    new = REPLAYED.replace(
        '        flor.log("loss", float(w.sum()))\n',
        '        flor.log("loss", float(w.sum()))\n        flor.log("w0", float(w[0]))\n',
    )
    version = prepare_version(project.root, commit, {"train.py": new}, ("w0",), tmp_path / "v")
    uid = Store(postgres_url).runs()["run_uid"][0]

    def reopen_once_kept(line: str) -> None:  # the store is back before the engine asks it
        if "the next run that opens the store writes them" in line:
            _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')

    monkeypatch.setenv("CUT_STORE", database)
    try:
        with pytest.raises(ReplayFailed, match="its outcome as 'running', not completed"):
            replay(version, uid, "train.py", load_settings(project.root), ("w0",),
                   on_output=reopen_once_kept)  # fmt: skip
    finally:
        _admin(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
    monkeypatch.delenv("CUT_STORE")
    store = Store(postgres_url)
    assert store.query("SELECT status FROM replays")["status"].tolist() == ["running"]
    project.write("other.py", "import flor_flows as flor\nflor.log('y', 1)\n")
    project.commit("other")
    project.run("other.py", env=env)  # its writer writes what the replay's kept on disk
    replays = store.query("SELECT status, read_bytes, read_seconds FROM replays")
    assert replays["status"].tolist() == ["completed"]
    assert replays["read_bytes"][0] > 0 and replays["read_seconds"][0] > 0  # the reads, too
    assert store.dataframe(["w0"])["w0"].tolist() == [0.0, 1.0, 3.0]
