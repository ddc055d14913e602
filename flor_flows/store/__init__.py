"""The relational store: schema, the `Store` class and the wide-table query."""

from __future__ import annotations

from pathlib import Path

from flor_flows.config import load_settings
from flor_flows.store.store import Store, open_store

__all__ = ["Store", "open_store", "project_store"]


def project_store(root: Path | None = None) -> Store:
    """The store configured for the project around `root` (default: the working directory)."""
    return open_store(load_settings(root).store_url)
