"""Hindsight replay: historical runs re-executed from their checkpoints with new statements.

`worktree` materialises a code version in a private directory, `engine` propagates the
requested statements into it and replays runs there, and `plan` decides which runs.
"""

__all__ = [
    "artifacts",
    "backfill",
    "costs",
    "engine",
    "forkserver",
    "forkserver_main",
    "history",
    "plan",
    "reach",
    "selection",
    "shortcuts",
    "skipping",
    "where",
    "worktree",
]
