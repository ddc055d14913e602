"""The run in progress: the record API's state in the training process and the writer process.

`run` and `session` hold a run's state and hooks (`replay_loop`: its outer loop in a replay),
`buffer` sends its values to the `writer` process, which owns the store; `lifecycle` writes a
run's row and status, in one place; `context` is the hand-off from the launcher."""

__all__ = [
    "buffer",
    "checkpointer",
    "context",
    "frames",
    "lifecycle",
    "options",
    "replay",
    "replay_loop",
    "run",
    "session",
    "spill",
    "verify",
    "writer",
]
