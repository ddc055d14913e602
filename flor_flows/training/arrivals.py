"""Arriving data batches: find them at a watched location, hand each out exactly once.

A batch is claimed in the store before it is trained on, so two retraining runs that
overlap never take the same batch; a run that fails gives back what it did not consume.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from flor_flows.config import Settings
from flor_flows.errors import ArrivalsBlocked, DataError
from flor_flows.store import open_store
from flor_flows.versioning import storage
from flor_flows.versioning.data import resolve

_TIME_KEYS = ("mtime", "LastModified", "last_modified", "updated", "created")


def _arrived_at(info: dict[str, Any]) -> float:
    """When a file landed, as far as its filesystem says (0 when it says nothing)."""
    for key in _TIME_KEYS:
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, int | float):
            return float(value)
    return 0.0


def arrived(
    project: Path, pattern: str, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The files matching `pattern` (an fsspec glob) in arrival order: time, then name."""
    url, what = resolve(project, pattern), "cannot list arriving batches at"
    fs, path = storage.filesystem(url, storage_options, DataError, what)
    with storage.failures(DataError, what, url):
        found = fs.glob(path, detail=True)
    files = sorted(
        (_arrived_at(info), name) for name, info in found.items() if info.get("type") == "file"
    )
    local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
    return [name if local else fs.unstrip_protocol(name) for _, name in files]


def claim(settings: Settings, project: Path, pattern: str, claim_id: str, limit: int) -> list[str]:
    """Claim up to `limit` batches that no earlier or concurrent run took, oldest first."""
    store = open_store(settings.store_url)
    project_id = store.project_id(settings.project_name, settings.root)
    found = arrived(project, pattern, settings.fs_options())
    return store.claim_arrivals(project_id, found, claim_id, limit)


def wait_turn(settings: Settings, claim_id: str, timeout: float, poll: float = 1.0) -> None:
    """Wait until batches claimed earlier by overlapping runs are trained on (or given back).

    Claims hand each batch to one run; this keeps training in arrival order across runs, so
    a run warm-starts from the model that saw every earlier batch.
    """
    store = open_store(settings.store_url)
    project_id = store.project_id(settings.project_name, settings.root)
    deadline = time.monotonic() + timeout
    while (ahead := store.arrivals_ahead(project_id, claim_id)) > 0:
        if time.monotonic() > deadline:
            raise ArrivalsBlocked(
                f"{ahead} batch(es) claimed earlier by another retraining run are still not "
                f"trained on after {timeout:.0f} s"
            )
        time.sleep(poll)


def consume(settings: Settings, uri: str, claim_id: str, run_uid: str) -> None:
    """Record that run `run_uid` trained on the claimed batch `uri`."""
    store = open_store(settings.store_url)
    project_id = store.project_id(settings.project_name, settings.root)
    store.consume_arrival(project_id, uri, claim_id, run_uid)


def release(settings: Settings, claim_id: str) -> int:
    """Give back the batches of `claim_id` that no run trained on; returns how many."""
    return open_store(settings.store_url).release_arrivals(claim_id)
