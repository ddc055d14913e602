"""flor-flows: multiversion hindsight logging for continuous training, on Prefect.

Drop-in for FlorDB's record API: `import flor_flows as flor`. Importing is cheap; the store,
git and pandas load on first use. `--kwargs k=v` and `--data name=URI` are taken out of
`sys.argv` here, so a script's own argparse never sees them; the rest of the command line
and the working directory are recorded with the run, and the options the script parses
with argparse become the run's args.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from flor_flows.record import context as _context
from flor_flows.record import options as _options
from flor_flows.record import session as _session

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "arg", "checkpointing", "commit", "data", "dataframe", "iteration", "log", "loop", "query",
    "warm_start",
]  # fmt: skip
__version__ = "0.1.0"

T = TypeVar("T")


def _is_cli() -> bool:
    """Whether this process is a flor-flows command, whose `--kwargs` flags are its own."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    orig = sys.orig_argv
    module = orig[orig.index("-m") + 1] if "-m" in orig[:-1] else None
    return program == "flor-flows" or module in ("flor_flows.cli", "deployments.serve")


if _is_cli():
    _ctx = _context.RunContext.from_env()
else:
    _ctx, sys.argv[1:] = _context.current(sys.argv[1:])
    _options.install(lambda parsed: _session.current().parsed_options(parsed))
_session.configure(_ctx)


def log(name: str, value: T) -> T:
    """Record `value` under `name` in the current loop context; returns `value`."""
    return _session.current().log(name, value)


def arg(name: str, default: Any = None) -> Any:
    """A hyperparameter: `--kwargs name=v` cast to the default's type, else `default`.

    In a replay it returns the value the historical run used.
    """
    return _session.current().arg(name, default)


def data(name: str, uri: str) -> str:
    """Declare and version a data batch (any fsspec URL); returns a local path to read it from.

    `--data name=URI` (or the training flow) overrides `uri`; a replay gets the recorded copy.
    """
    return _session.current().data(name, uri)


def loop(name: str, iterable: Iterable[T]) -> Iterator[T]:
    """Iterate lazily, recording each item as iteration 0, 1, ... of loop `name`."""
    return _session.current().loop(name, iterable)


def iteration(name: str, idx: int | None, value: Any) -> AbstractContextManager[Any]:
    """One user-driven iteration of loop `name` (a request, a document), as a `with` block."""
    return _session.current().iteration(name, idx, value)


def checkpointing(**objects: Any) -> AbstractContextManager[None]:
    """Checkpoint `objects` at the iteration boundaries of the outer `flor.loop` inside."""
    return _session.current().checkpoint_objects(objects)


def warm_start(**objects: Any) -> str | None:
    """Load `objects` (a model, an optimizer) from the final checkpoint of the previous run.

    Only when the launcher asked for it (the training flow's `warm_start`); the RNG states
    are left alone. Returns the uid of the run it continued from, or None. A replay
    restores the same checkpoint its historical run started from.
    """
    return _session.current().warm_start(objects)


def _replay_head() -> bool:
    """Inserted by a replay in its copy of the code (`replay.shortcuts`): whether to run the
    head of this outer iteration. Not for scripts."""
    return _session.current().runs_head()


def _replay_tail() -> bool:
    """Inserted by a replay likewise: whether to run the tail of this outer iteration."""
    return _session.current().runs_tail()


def commit() -> None:
    """End the current run now (it also ends at exit); the next call starts a new run."""
    _session.commit()


def dataframe(*names: str, include_diverged: bool = False) -> pd.DataFrame:
    """The wide table over every run and version; with no names, one row per run.

    Values of replays that diverged from their run's record are left out unless asked for.
    """
    return _store().dataframe(names, include_diverged=include_diverged)


def query(sql: str) -> pd.DataFrame:
    """Run SQL on the store (the escape hatch for what `dataframe` does not show)."""
    return _store().query(sql)


def _store() -> Any:
    """The store to read: the current run's (flushed first, so its values show), else the project's."""
    from flor_flows.config import load_settings
    from flor_flows.errors import StoreError
    from flor_flows.store import open_store, project_store, reader

    run = _session.active()
    if run is None:
        try:
            return reader(load_settings().store_url)  # read-only where it cannot be written
        except StoreError:
            return project_store()  # none yet: an empty one
    run.buffer.sync()
    return open_store(run.settings.store_url)
