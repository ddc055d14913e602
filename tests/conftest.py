"""Shared fixtures: real git projects in temp dirs, scripts run as real child processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "t@example.com",
}  # fmt: skip


def git(root: Path, *args: str) -> str:
    env = os.environ | GIT_ENV
    return subprocess.run(
        ["git", *args], cwd=root, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


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

    def run(
        self, script: str, *args: str, env: dict[str, str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `script` (a path in the project) with this interpreter, as a user would."""
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLOR_FLOWS_")}
        full_env |= env or {}
        proc = subprocess.run(
            [sys.executable, script, *args],
            cwd=self.root,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def store(self):  # noqa: ANN201
        from flor_flows.store import Store

        return Store(self.store_url)


@pytest.fixture
def project(tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "README.md").write_text("demo project\n")
    (root / ".gitignore").write_text(".flor-flows/\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return Project(root)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("FLOR_FLOWS_"):
            monkeypatch.delenv(key)
