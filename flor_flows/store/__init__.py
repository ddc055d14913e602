"""The relational store: schema, the `Store` class and the wide-table query."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import make_url

from flor_flows.config import load_settings
from flor_flows.errors import StoreError
from flor_flows.store.store import Store, open_store

__all__ = ["Store", "open_store", "project_store", "reader"]


def project_store(root: Path | None = None) -> Store:
    """The store configured for the project around `root` (default: the working directory)."""
    return open_store(load_settings(root).store_url)


def reader(url: str) -> Store:
    """The store at `url` for reading: created by nothing, read-only where this process
    cannot write its file (a store on read-only storage or of another user)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return open_store(url)
    path = Path(parsed.database)
    if not path.exists():
        raise StoreError(f"no runs recorded yet: there is no store at {path}")
    writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
    return open_store(url, readonly=not writable)
