"""The store failing under a running training (issue 12): training goes on, nothing is lost."""

from __future__ import annotations

import psycopg

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
