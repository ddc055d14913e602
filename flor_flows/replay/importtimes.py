"""What fork servers' imports took on this host, kept per user from one process to the next.

A plan prices the wait for a fork server (`replay.forkserver`), and what forking from one
skips, at what the last servers of the same libraries took here. Those measures outlive the
process that started the servers: a new PREFECT_HOME, or a warm process restarted after an
upgrade, prices its first server as measured, not by a guess from the run's set-up. They
are kept per interpreter and set of libraries, under XDG_CACHE_HOME (else ~/.cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import sys
from pathlib import Path

import fsspec

from flor_flows.config import user_cache
from flor_flows.versioning import paths

# Servers whose imports a price takes the median of: one start competes with a command's
# flow run for the cores, another had them to itself.
KEPT = 5


def directory() -> Path:
    """Where this user's measures are kept (`user_cache`)."""
    return user_cache("fork-imports")


def median(imports: tuple[str, ...]) -> float | None:
    """The median seconds of the last KEPT servers of this interpreter that imported
    `imports`; None if none did here."""
    found = _read(_file(imports))
    return statistics.median(found) if found else None


def record(imports: tuple[str, ...], seconds: float) -> None:
    """Keep what a server that imported `imports` took. A cache that cannot be written (a
    read-only or full disk) keeps nothing: the next plan guesses, as before any server ran."""
    path = _file(imports)
    measured = [*_read(path), seconds][-KEPT:]
    state = {"python": sys.executable, "imports": list(imports), "measured": measured}
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        # a reader sees the old measures or the new, whole; a killed writer's part is cleaned
        with paths.atomic(fsspec.filesystem("file"), str(path)) as part:
            Path(part).write_text(json.dumps(state))


def _file(imports: tuple[str, ...]) -> Path:
    digest = hashlib.sha256(repr((sys.executable, imports)).encode()).hexdigest()[:16]
    return directory() / f"{digest}.json"


def _read(path: Path) -> list[float]:
    """The measures kept in `path`, oldest first; none if it is missing or not ours."""
    try:
        return [float(s) for s in json.loads(path.read_text())["measured"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
