"""The store on SQLite and PostgreSQL: configuration, schema checks, concurrent writers."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from flor_flows.errors import FlorError, StoreError
from flor_flows.store import Store
from tests.conftest import Project

SCRIPT = """
import sys
import flor_flows as flor
tag = flor.arg("tag", "a")
for epoch in flor.loop("epoch", range(3)):
    for step in flor.loop("step", range(200)):
        flor.log("loss", epoch + step / 1000)
    flor.log("acc", 0.5 + epoch / 10)
"""


def test_postgres_store_end_to_end(project: Project, postgres_url: str) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py", "--kwargs", "tag=pg", env={"FLOR_FLOWS_STORE_URL": postgres_url})
    store = Store(postgres_url)
    df = store.dataframe(["loss", "acc"])
    assert len(df) == 600 and df["loss"].dtype == "float64"
    assert df.groupby("epoch")["acc"].first().tolist() == pytest.approx([0.5, 0.6, 0.7])
    assert df["tag"].unique().tolist() == ["pg"]
    assert store.runs()["status"].tolist() == ["completed"]
    assert not (project.root / ".flor-flows" / "store.db").exists()
    store.engine.dispose()


def test_two_concurrent_runs_lose_nothing(project: Project, postgres_url: str) -> None:
    project.write("train.py", SCRIPT)
    for url in (project.store_url, postgres_url):
        children = [
            subprocess.Popen(
                [sys.executable, "train.py", "--kwargs", f"tag={tag}"],
                cwd=project.root,
                env={"FLOR_FLOWS_STORE_URL": url, "PATH": "/usr/bin:/bin"},
            )
            for tag in ("x", "y")
        ]
        assert [c.wait(120) for c in children] == [0, 0]
        store = Store(url)
        df = store.dataframe(["loss"])
        assert df.groupby("tag").size().to_dict() == {"x": 600, "y": 600}
        store.engine.dispose()


def test_store_url_from_pyproject(project: Project, tmp_path) -> None:
    target = tmp_path / "elsewhere" / "flor.db"
    project.write("pyproject.toml", f'[tool.flor-flows]\nstore_url = "sqlite:///{target}"\n')
    project.write("t.py", "import flor_flows as flor\nflor.log('x', 1.5)\n")
    project.run("t.py")
    assert Store(f"sqlite:///{target}").dataframe(["x"])["x"].tolist() == [1.5]
    project.write("pyproject.toml", '[tool.flor-flows]\nstore_uri = "typo"\n')
    proc = project.run("t.py", check=False)
    assert proc.returncode != 0 and "unknown keys ['store_uri']" in proc.stderr


def test_a_store_from_another_schema_version_is_refused(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    Store(url).engine.dispose()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE flor_meta SET value = '0' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(StoreError, match="has schema version 0"):
        Store(url)


def test_bad_store_url_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(StoreError, match="cannot"):
        Store("nosuchdialect://x")
    with pytest.raises(StoreError, match="cannot use store"):
        Store("postgresql+psycopg://postgres@127.0.0.1:5432/flor_no_such_database_xyz")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_query_reads_and_can_write_nothing(
    project: Project, postgres_url: str, backend: str
) -> None:
    url = project.store_url if backend == "sqlite" else postgres_url
    project.write("train.py", "import flor_flows as flor\nflor.log('x', 1.0)\n")
    project.commit("x")
    project.run("train.py", env={"FLOR_FLOWS_STORE_URL": url})
    store = Store(url)
    hostile = [
        "DROP TABLE logs",
        "DELETE FROM logs",
        "select 1 as a; DROP TABLE logs CASCADE; COMMIT; select 1 as b",
        "UPDATE runs SET status = 'x'",
        "CREATE TABLE t (x int)",
    ]
    if backend == "sqlite":
        hostile += [f"ATTACH DATABASE '{project.root / 'evil.db'}' AS e", "PRAGMA query_only = OFF"]
    for sql in hostile:
        with pytest.raises(
            StoreError, match=r"^query failed: .*\(queries read, one statement each\)$"
        ):
            store.query(sql)
    assert store.query("SELECT name, num FROM logs").values.tolist() == [["x", 1.0]]
    assert store.runs()["status"].tolist() == ["completed"]
    assert not (project.root / "evil.db").exists()


def test_reading_shows_a_dead_run_failed_and_writes_nothing(project: Project) -> None:
    """A run whose process and writer both died stays `running` in the store; readers show it
    failed without writing, and the next run recorded on this host marks it."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    store = Store(project.store_url)
    project_id = store.project_id("proj", project.root)
    store.start_run(uid="killed", project_id=project_id, entry_script="t.py", pid=int(dead.stdout))
    shown = store.runs().set_index("run_uid").loc["killed"]
    assert (shown.status, shown.error) == ("failed", "process ended without finishing the run")
    with pytest.raises(FlorError, match=r"unknown name\(s\) x; logged names: none"):
        store.dataframe(["x"])
    assert store.query("SELECT status FROM runs")["status"].tolist() == ["running"]  # unchanged
    project.write("train.py", "import flor_flows as flor\nflor.log('x', 1.0)\n")
    project.commit("x")
    project.run("train.py")
    stored = store.query("SELECT uid, status FROM runs ORDER BY id").values.tolist()
    assert stored == [["killed", "failed"], [store.runs()["run_uid"].iloc[-1], "completed"]]
