"""The relational store: schema, the `Store` class and the wide-table query."""

from __future__ import annotations

import os
from pathlib import Path

from flor_flows.config import load_settings
from flor_flows.errors import StoreError
from flor_flows.store.store import Store, open_store, sqlite_file

__all__ = ["Store", "open_store", "project_store", "reader", "recorded"]


def project_store(root: Path | None = None) -> Store:
    """The store configured for the project around `root` (default: the working directory)."""
    return open_store(load_settings(root).store_url)


def reader(url: str) -> Store:
    """The store at `url` for reading: created by nothing, read-only where this process
    cannot write its file (a store on read-only storage or of another user)."""
    path = _recorded_file(url)
    if path is None:
        return open_store(url)
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return open_store(url, readonly=not writable)


def recorded(url: str) -> Store:
    """The store at `url`, where runs were recorded: a SQLite file is not created here."""
    _recorded_file(url)
    return open_store(url)


def _recorded_file(url: str) -> Path | None:
    """The SQLite file of `url` (None for another database); StoreError if it is not there."""
    path = sqlite_file(url)
    if path is not None and not path.exists():
        raise StoreError(f"no runs recorded yet: there is no store at {path}")
    return path
