"""The `flor-flows` commands, one module each (cli.py parses and dispatches).

`train`, `replay`, `propagate`, `server` and `read` (runs, dataframe, query, backfills) are
the commands; `inputs`, `stopping` and `watching` what the flow commands share: their typed
requests, Ctrl-C, and the Prefect API going away.
"""

__all__ = ["inputs", "propagate", "read", "replay", "server", "stopping", "train", "watching"]
