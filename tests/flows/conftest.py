"""Flow tests: real Prefect flow runs against one test server per session."""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Project, git

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "digits"


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[str]:
    """A Prefect server for the session (heartbeats off: they add ~1 s to every flow run)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        temporary_settings,
    )
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield PREFECT_API_URL.value()


def write_batches(dest: Path, n_batches: int) -> list[Path]:
    spec = importlib.util.spec_from_file_location("digits_batches", EXAMPLE / "batches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_batches(dest, n_batches=n_batches)


@pytest.fixture
def digits(project: Project) -> Project:
    """A project whose train.py is the digits example v1, with 4 arrival batches in data/."""
    (project.root / ".gitignore").write_text(".flor-flows/\ndata/\n")
    shutil.copyfile(EXAMPLE / "versions" / "v1.py", project.root / "train.py")
    project.commit("train.py v1")
    write_batches(project.root / "data", 4)
    return project


def arrive(project: Project, *names: str) -> None:
    """Move batches into data/incoming/, one second apart in modification time."""
    incoming = project.root / "data" / "incoming"
    incoming.mkdir(exist_ok=True)
    base = 1_800_000_000 + 10 * len(list(incoming.iterdir()))
    for offset, name in enumerate(names):
        target = incoming / name
        shutil.copyfile(project.root / "data" / "batches" / name, target)
        os.utime(target, (base + offset, base + offset))


__all__ = ["arrive", "git", "write_batches"]
