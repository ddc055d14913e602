"""The run in progress: the record API's state in the training process and the writer process.

`run` and `session` hold a run's state and hooks, `buffer` sends its values to the `writer`
process, which owns the store; `context` is the hand-off from the launcher (record or replay)."""

__all__ = [
    "buffer",
    "checkpointer",
    "context",
    "frames",
    "options",
    "replay",
    "run",
    "session",
    "spill",
    "verify",
    "writer",
]
