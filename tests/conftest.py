"""Shared fixtures: real git projects in temp dirs, scripts run as real child processes."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, text

# Prefect reads its settings at import: a private home, no telemetry, before anything imports it.
if "PREFECT_HOME" not in os.environ:
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="flor-flows-prefect-")
    os.environ["FLOR_TESTS_OWN_PREFECT_HOME"] = "1"  # ours (xdist's workers inherit it)
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
# This user's caches (fetched code versions, fork servers' import times): the session's own.
if "FLOR_TESTS_OWN_CACHE" not in os.environ:
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="flor-flows-cache-")
    os.environ["FLOR_TESTS_OWN_CACHE"] = "1"  # xdist's workers inherit it
    atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
PREFECT = str(Path(sys.executable).with_name("prefect"))
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
}  # fmt: skip


def git(root: Path, *args: str) -> str:
    env = os.environ | GIT_ENV
    return subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


def wait_for(condition: Callable[[], object], seconds: float, what: str) -> object:
    """Poll `condition` until it is truthy (returned) or `seconds` pass (a failure naming
    `what`): a test waits for the event itself, never for a fixed time."""
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.05)
    return found


def is_fork_server(process: psutil.Process) -> bool:
    """Whether `process` is a live replay fork server (`flor_flows/replay/forkserver_main.py`)."""
    try:
        running = process.status() != psutil.STATUS_ZOMBIE
        return running and any("forkserver_main.py" in part for part in process.cmdline())
    except psutil.Error:
        return False


@dataclass
class Project:
    root: Path

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.root / '.flor-flows' / 'store.db'}"

    def write(self, name: str, text: str) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def commit(self, message: str = "change") -> str:
        git(self.root, "add", "-A")
        git(self.root, "commit", "-q", "-m", message)
        return git(self.root, "rev-parse", "HEAD")

    def env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """The environment a script runs in: the test's, without flor-flows settings."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
        return full_env | (env or {})

    def run(
        self, script: str, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `script` (a path in the project) with this interpreter, as a user would."""
        proc = subprocess.run(
            [sys.executable, script, *args],
            cwd=self.root,
            env=self.env(env),
            capture_output=True,
            text=True,
            timeout=240,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def start(self, script: str, *args: str) -> subprocess.Popen[str]:
        """Start `script` as `run` would, without waiting: for a test that acts while it runs.
        Its stdin is a pipe it may block on (until the test ends it); its output is captured."""
        return subprocess.Popen(
            [sys.executable, script, *args],
            cwd=self.root,
            env=self.env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def store(self):  # noqa: ANN201
        from flor_flows.store import Store

        return Store(self.store_url)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return new_project(tmp_path / "proj")


def new_project(root: Path) -> Project:
    """A git project at `root` (created) with one commit: what the `project` fixture gives,
    for fixtures of a wider scope."""
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README.md").write_text("demo project\n")
    (root / ".gitignore").write_text(".flor-flows/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return Project(root)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    name = f"flor_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        from flor_flows.store.store import open_store

        open_store.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLOR_FLOWS_"):
            monkeypatch.delenv(key)
    # Prefect's temporary server per command, not a background one that outlives the test
    monkeypatch.setenv("FLOR_FLOWS_PREFECT", "temporary")


# --- Prefect servers of a test's own ----------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_prefect_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Prefect SQLite database migrated once per session (`prefect server database upgrade`),
    shared by the xdist workers: a server started on a copy of it (see `seed_prefect_home`)
    answers in ~8 s instead of ~20-40 s, the time a first start spends migrating."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    template = shared / "prefect-db-template"
    with (shared / "prefect-db-template.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker migrates, the others wait for it
        if not template.is_dir():
            building = shared / f"prefect-db-template.{os.getpid()}"
            env = {
                k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))
            }
            env |= {"PREFECT_HOME": str(building), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
            done = subprocess.run(
                [PREFECT, "server", "database", "upgrade", "-y"],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
            )
            assert done.returncode == 0, done.stdout + done.stderr
            with contextlib.closing(sqlite3.connect(building / "prefect.db")) as db:
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # one file holds it all
            os.replace(building, template)
    return template / "prefect.db"


def seed_prefect_home(home: Path, migrated_db: Path) -> Path:
    """Create the PREFECT_HOME `home` with a copy of the migrated database: the server
    started there is a real one on its own database, only without the migration's wait."""
    home.mkdir(parents=True)
    shutil.copyfile(migrated_db, home / migrated_db.name)
    return home.resolve()


@pytest.fixture(scope="session")
def session_prefect_db(migrated_prefect_db: Path) -> Path:
    """The session's PREFECT_HOME (set above), given the migrated database unless it has one:
    for tests whose commands start Prefect's temporary server there (FLOR_FLOWS_PREFECT=
    temporary), so that the first of them does not migrate it. A PREFECT_HOME the caller
    set is left alone."""
    home = Path(os.environ["PREFECT_HOME"])
    target = home / migrated_prefect_db.name
    if os.environ.get("FLOR_TESTS_OWN_PREFECT_HOME") and not target.exists():
        partial = home / f".{target.name}.{os.getpid()}"
        shutil.copyfile(migrated_prefect_db, partial)
        with contextlib.suppress(FileExistsError):  # a server made one meanwhile: keep it
            os.link(partial, target)  # atomic, never over an existing database
        partial.unlink()
    return target


@pytest.fixture
def prefect_home(tmp_path: Path, migrated_prefect_db: Path) -> Path:
    """tmp_path/prefect-home, seeded with a migrated Prefect database."""
    return seed_prefect_home(tmp_path / "prefect-home", migrated_prefect_db)


# --- the order of the test files ----------------------------------------------------------------

# The slowest files first (the seconds each took, run alone or beside one other file, on 2
# shared cores): `make test` runs the files on two workers (-n 2 --dist loadfile
# --no-loadscope-reorder), each taking the next file in this order when it is free, so a
# long file is not left to start last while the other worker idles. Files not named keep
# their collection order, after these. A stale entry only costs time.
SLOWEST_FIRST = (
    "tests/test_prefect_faults.py",  # 150-200, mostly waiting (the backfill's Prefect retries)
    "tests/flows/test_demo.py",  # 70-200, busy (four trainings and their replays, torch)
    "tests/test_serving.py",  # 100
    "tests/test_server_background.py",  # 80
    "tests/test_warm.py",  # 60-180
    "tests/test_replay_stop.py",  # 55
    "tests/flows/test_retraining_flow.py",  # 65
    "tests/flows/test_training_flow.py",  # 65
    "tests/test_replay_engine.py",  # 60
    "tests/test_record.py",  # 55
    "tests/test_replay_shortcuts.py",  # 55
    "tests/test_bad_input.py",  # 50
    "tests/test_fault_injection.py",  # 50
    "tests/test_replay_contract.py",  # 50
    "tests/test_ui_pages.py",  # 45
    "tests/test_replay_faithful.py",  # 45
    "tests/test_cli_conventions.py",  # 40
    "tests/flows/test_artifacts.py",  # 40
    "tests/test_replay_fidelity.py",  # 40
    "tests/flows/test_real_script_replay.py",  # 35
    "tests/test_deployment_defaults.py",  # 25
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(
        key=lambda item: (rank.get(item.nodeid.split("::")[0], len(rank)), position[id(item)])
    )
