"""Where a project's state lives: store URL, checkpoint and data locations, object-store options.

Precedence, highest first: environment variables, `[tool.flor-flows]` in the project's
`pyproject.toml`, then project-local defaults under `<project root>/.flor-flows/`.

`storage_options` are handed to fsspec for every URL that is not a local path (endpoint,
region, timeouts). Credentials are never written in them: an option `<name>_env = "VAR"`
takes the value of environment variable VAR in the process that opens the filesystem, and a
literal credential is refused.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flor_flows.errors import ConfigError, NotAGitRepository, StorageOptionsError
from flor_flows.secrets import is_secret

STATE_DIR = ".flor-flows"
# A code version materialised on a host without its repository (a replay worker) is a
# project root of its own: this file in its STATE_DIR holds the commit.
VERSION_MARK = "code-version"
ENV = {
    "store_url": "FLOR_FLOWS_STORE_URL",
    "checkpoint_url": "FLOR_FLOWS_CHECKPOINT_URL",
    "data_url": "FLOR_FLOWS_DATA_URL",
    "checkpoint_policy": "FLOR_FLOWS_CHECKPOINT_POLICY",
    "replay_rtol": "FLOR_FLOWS_REPLAY_RTOL",
    "batch_roots": "FLOR_FLOWS_BATCH_ROOTS",
    "storage_options": "FLOR_FLOWS_STORAGE_OPTIONS",  # JSON, e.g. {"endpoint_url": "..."}
}
ENV_SUFFIX = "_env"  # an option `key_env = "VAR"` is `key` = the value of $VAR
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CREDENTIALS = frozenset({"username", "connection_string", "sas_url"})  # beyond `is_secret`


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
    # Object-store options as JSON (credentials by environment-variable name only).
    storage_options: str = ""

    def fs_options(self) -> dict[str, Any]:
        """The storage options for fsspec, each `<name>_env` replaced by `<name>` with the
        value of its environment variable in this process (read now, never stored)."""
        if not self.storage_options:
            return {}
        return _resolve(json.loads(self.storage_options), "storage_options")

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
        """The project's name: its root directory's."""
        return self.root.name


def _pyproject_settings(root: Path) -> dict[str, str]:
    path = root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        table = tomllib.loads(path.read_text()).get("tool", {}).get("flor-flows", {})
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    unknown = set(table) - set(ENV)
    if unknown:
        raise ConfigError(
            f"{path} [tool.flor-flows] has unknown keys {sorted(unknown)}; known: {sorted(ENV)}"
        )
    return {key: _text(key, value, f"{path} [tool.flor-flows]") for key, value in table.items()}


def _text(key: str, value: Any, where: str) -> str:
    """A `[tool.flor-flows]` value as its setting's text (lists comma-separated)."""
    if key == "storage_options":
        return storage_options_json(value, where)
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def storage_options_json(options: Any, where: str) -> str:
    """`options` (a table) checked and written as JSON text; refuses a literal credential
    (a secret-looking option, a URL with a password) so that none is kept in a file."""
    if not isinstance(options, dict):
        raise StorageOptionsError(f"{where}: storage_options must be a table of options")
    _check(options, "storage_options", where)
    return json.dumps(options, sort_keys=True)


def _check(options: dict[str, Any], prefix: str, where: str) -> None:
    """Raise on a literal credential anywhere in `options` (nested tables included)."""
    for key, value in options.items():
        name = f"{prefix}.{key}"
        if key.endswith(ENV_SUFFIX):
            if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
                raise StorageOptionsError(
                    f"{where}: {name} must name an environment variable (e.g. "
                    f'"MINIO_SECRET_KEY"), not hold its value'
                )
        elif isinstance(value, dict):
            _check(value, name, where)
        elif is_secret(key) or key.lower() in _CREDENTIALS or _has_password(value):
            raise StorageOptionsError(
                f"{where}: {name} holds a literal credential; keep it in an environment "
                f'variable and write {key}{ENV_SUFFIX} = "VARIABLE_NAME" instead'
            )


def _has_password(value: Any) -> bool:
    """Whether `value` is a URL with a password in it."""
    try:
        return isinstance(value, str) and urlsplit(value).password is not None
    except ValueError:
        return False


def _resolve(options: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`options` with every `<name>_env` reference replaced by its variable's value."""
    resolved: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            resolved[key] = _resolve(value, f"{prefix}.{key}")
        elif key.endswith(ENV_SUFFIX):
            if value not in os.environ:
                raise StorageOptionsError(
                    f"{prefix}.{key} names the environment variable {value}, which is not set "
                    "in this process: set it on every host that reads or writes the object "
                    "store (flow host, Prefect workers, Dask workers)"
                )
            resolved[key.removesuffix(ENV_SUFFIX)] = os.environ[value]
        else:
            resolved[key] = value
    return resolved


def _storage_options_env(raw: str) -> str:
    """FLOR_FLOWS_STORAGE_OPTIONS (JSON) checked as the pyproject table is."""
    var = ENV["storage_options"]
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise StorageOptionsError(f"{var} is not JSON: {exc}") from None
    return storage_options_json(options, var)


def user_cache(name: str) -> Path:
    """This user's cache `name` on this host: under XDG_CACHE_HOME (else ~/.cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flor-flows" / name


def find_root(start: Path | str | None = None) -> Path:
    """The nearest directory at or above `start` holding `.git` (a file, for worktrees), or
    a code version materialised where its repository is not (marked with `VERSION_MARK`).

    A plain walk, so the training process need not import git to find its project.
    """
    here = Path(start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if (candidate / ".git").exists() or (candidate / STATE_DIR / VERSION_MARK).is_file():
            return candidate
    raise NotAGitRepository(
        f"{here} is not inside a git repository. flor-flows versions each run's code with git: "
        "run `git init` in your project directory (and commit your code)."
    )


def load_settings(root: Path | str | None = None, **overrides: str | None) -> Settings:
    """Settings for the project around `root` (default: the working directory).

    `overrides` (store_url, checkpoint_url, data_url, checkpoint_policy, storage_options as
    a `Settings` holds them) win when not None; a launcher passes them through the run context.
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
            raw = os.environ[var]
            values[key] = _storage_options_env(raw) if key == "storage_options" else raw
    values |= {key: value for key, value in overrides.items() if value is not None}
    try:
        if not float(values.get("replay_rtol", Settings.replay_rtol)) >= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"replay_rtol {values['replay_rtol']!r} is not a relative tolerance (a number >= 0)"
        ) from None
    return Settings(root=root, **values)
