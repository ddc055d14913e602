"""Where a project's state lives: store URL, checkpoint and data locations.

Precedence, highest first: environment variables, `[tool.flor-flows]` in the project's
`pyproject.toml`, then project-local defaults under `<project root>/.flor-flows/`.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from flor_flows.errors import FlorError, NotAGitRepository

STATE_DIR = ".flor-flows"
ENV = {
    "store_url": "FLOR_FLOWS_STORE_URL",
    "checkpoint_url": "FLOR_FLOWS_CHECKPOINT_URL",
    "data_url": "FLOR_FLOWS_DATA_URL",
    "checkpoint_policy": "FLOR_FLOWS_CHECKPOINT_POLICY",
    "replay_rtol": "FLOR_FLOWS_REPLAY_RTOL",
    "batch_roots": "FLOR_FLOWS_BATCH_ROOTS",
}


@dataclass(frozen=True)
class Settings:
    """Resolved locations for one project."""

    root: Path
    store_url: str
    checkpoint_url: str
    data_url: str
    checkpoint_policy: str  # "adaptive", "adaptive:<epsilon>" or "every"
    # Verification of replays: how far a re-logged float may be from the recorded one.
    replay_rtol: str = "1e-6"
    # Where training flow runs may read batches from: local directories and URL prefixes,
    # comma-separated; empty: local files under the project only (any URL of a filesystem).
    batch_roots: str = ""

    def batch_allowed(self, uri: str) -> bool:
        """Whether a training flow run may read batch `uri` (a served deployment takes its
        batches from anyone who reaches the server: not any file of the host)."""
        roots = [r.strip() for r in self.batch_roots.split(",") if r.strip()]
        if "://" in uri and not uri.startswith("file://"):
            return not roots or any(uri.startswith(r) for r in roots if "://" in r)
        path = Path(uri.removeprefix("file://")).resolve()
        local = [Path(r).expanduser().resolve() for r in roots if "://" not in r]
        return any(path.is_relative_to(root) for root in [self.root, *local])

    @property
    def project_name(self) -> str:
        return self.root.name


def _pyproject_settings(root: Path) -> dict[str, str]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text()).get("tool", {}).get("flor-flows", {})
    except tomllib.TOMLDecodeError as exc:
        raise FlorError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(table) - set(ENV)
    if unknown:
        raise FlorError(
            f"{path} [tool.flor-flows] has unknown keys {sorted(unknown)}; known: {sorted(ENV)}"
        )
    return {
        key: ",".join(map(str, value)) if isinstance(value, list) else str(value)
        for key, value in table.items()
    }


def find_root(start: Path | str | None = None) -> Path:
    """The nearest directory at or above `start` holding `.git` (a file, for worktrees).

    A plain walk, so the training process need not import git to find its project.
    """
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists():
            return candidate
    raise NotAGitRepository(
        f"{here} is not inside a git repository. flor-flows versions each run's code with git: "
        "run `git init` in your project directory (and commit your code)."
    )


def load_settings(root: Path | str | None = None, **overrides: str | None) -> Settings:
    """Settings for the project around `root` (default: the working directory).

    `overrides` (store_url, checkpoint_url, data_url, checkpoint_policy) win when not None;
    a launcher passes them through the run context.
    """
    root = find_root(root)
    state = root / STATE_DIR
    defaults = {
        "store_url": f"sqlite:///{state / 'store.db'}",
        "checkpoint_url": str(state / "checkpoints"),
        "data_url": str(state / "data"),
        "checkpoint_policy": "adaptive",
    }
    values = defaults | _pyproject_settings(root)
    for key, var in ENV.items():
        if os.environ.get(var):
            values[key] = os.environ[var]
    values |= {key: value for key, value in overrides.items() if value is not None}
    try:
        if not float(values.get("replay_rtol", Settings.replay_rtol)) >= 0:
            raise ValueError
    except ValueError:
        raise FlorError(
            f"replay_rtol {values['replay_rtol']!r} is not a relative tolerance (a number >= 0)"
        ) from None
    return Settings(root=root, **values)
