"""`Run`: one execution of a training script, in record or replay mode.

The training thread only appends to in-memory queues; `buffer.py` streams them to a writer
process that owns the store and git (see `writer.py`). The outer loop of a replay follows
its plan in `replay_loop.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flor_flows import values
from flor_flows.config import STATE_DIR, load_settings
from flor_flows.errors import ArgumentError, DataError, UsageError
from flor_flows.record import frames, replay
from flor_flows.record.buffer import Buffer
from flor_flows.record.context import RunContext
from flor_flows.record.frames import ROOT, Frame
from flor_flows.record.replay_loop import Measures, ReplayLoop

if TYPE_CHECKING:
    from flor_flows.record.checkpointer import Checkpointer

_IMMUTABLE = frozenset({float, int, str, bool, type(None)})
_TRUE, _FALSE = ("yes", "y", "true", "t", "1"), ("no", "n", "false", "f", "0")


def new_uid() -> str:
    """A sortable, unique run id: UTC start time plus random hex."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


def cast(name: str, raw: str, default: Any) -> Any:
    """Cast a command-line string to the type of the arg's default."""
    kind = type(default)
    if kind is bool:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ArgumentError(
            f"--kwargs {name}={raw!r}: expected a boolean (yes/no, true/false, 1/0)"
        )
    if default is None or kind is str:
        return raw
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(
            f"--kwargs {name}={raw!r}: cannot convert to {kind.__name__} like its default {default!r}"
        ) from exc


class Run(ReplayLoop):
    """The state of the run in progress and the implementation of the record API."""

    def __init__(self, context: RunContext, entry_script: str | None) -> None:
        self.context = context
        self.replaying = context.mode == "replay"
        if self.replaying and not context.run_uid:
            raise UsageError("a replay context needs the uid of the run to replay")
        self.uid = context.run_uid or new_uid()
        spec = context.replay
        self.apply = frozenset(spec.apply) if spec and spec.apply is not None else None
        self.selected = spec.iterations if spec else None
        self.skippable = frozenset(spec.skip_loops) if spec else frozenset()
        self.shortcuts = dict(spec.shortcuts) if spec else {}  # outer loop -> head may go
        self.step: replay.Step | None = None  # replay: the outer iteration running now
        self.run_level = spec.run_level if spec else True
        self.from_start = spec.from_start if spec else False
        self.frame = ROOT
        self.muted = not self.run_level
        self.inner_seconds = 0.0  # of the current outer iteration: time in its nested loops
        self.outer_checkpoint: dict[str, Any] | None = None  # replay: the one ending it
        self.reads = (0, 0.0)  # replay: the checkpoints it restored, bytes and seconds
        self.looped = 0.0  # replay: seconds in its outer loop
        self.args: dict[str, Any] = {}  # flor.arg values
        self.asked: set[str] = set()  # names flor.arg was called with
        self.options: dict[str, Any] = {}  # the script's argparse options
        self.names: set[str] = set()  # logged names, checked once each
        self.batches: dict[str, str] = {}
        self.failure: str | None = None
        self.finished = False
        self.checkpointing: Checkpointer | None = None
        start = context.project_root or (Path(entry_script).parent if entry_script else None)
        self.settings = load_settings(
            start,
            store_url=context.store_url,
            checkpoint_url=context.checkpoint_url,
            data_url=context.data_url,
            storage_options=context.storage_options,
        )
        self.buffer = Buffer(
            dataclasses.replace(context, run_uid=self.uid), self.settings, entry_script, os.getpid()
        )

    # -- API --------------------------------------------------------------------------------
    def log(self, name: str, value: Any) -> Any:
        """`flor.log`: queue `value` under `name` in the current loop context; return it."""
        if name not in self.names:
            self.names.add(_valid_name(name))
        if self.muted:
            return value
        if self.buffer.error is not None:
            raise self.buffer.error
        stored = value if type(value) in _IMMUTABLE else values.Frozen(values.encode(value))
        # A replay re-logs the run's own statements too: those values are checked against
        # the recorded ones (see `verify.Verifier`), the requested ones are stored.
        checking = self.apply is not None and name not in self.apply
        logs = self.buffer.checks if checking else self.buffer.logs
        logs.append((self.frame, name, stored))
        if len(logs) > Buffer.MAX_PENDING:
            self.buffer.flush()  # back-pressure: memory stays bounded at any log rate
        return value

    def arg(self, name: str, default: Any) -> Any:
        """`flor.arg`: the hyperparameter's value, as given, defaulted or recorded (replay)."""
        if name in self.args:
            return self.args[name]
        self.asked.add(name)
        if self.replaying:
            historical = self.buffer.wait_ready()["history"]["args"]
            if name in historical:
                value = historical[name]
            else:
                self.diverge(
                    f"flor.arg({name!r}) was not recorded by run {self.uid}: "
                    f"the replay used the default {default!r}"
                )
                value = default
        elif name in self.context.kwargs:
            value = cast(name, self.context.kwargs[name], default)
        elif default is None:
            raise ArgumentError(
                f"flor.arg({name!r}) has no default and no value was given; "
                f"pass --kwargs {name}=VALUE or give the arg a default"
            )
        else:
            value = default
        self.args[name] = values.plain(value)
        self.buffer.args = self.options | self.args
        return value

    def parsed_options(self, options: dict[str, Any]) -> None:
        """Record the script's argparse options as args; a replay checks them instead."""
        parsed = {k: o for k, v in options.items() if (o := _option(v)) is not _SKIP}
        if self.replaying:
            history = self.buffer.wait_ready()["history"]
            if history.get("invocation") is None:
                self.diverge(
                    f"run {self.uid} recorded no command line: its options were replayed "
                    "with their defaults"
                )
            recorded = history["args"]
            for key, value in parsed.items():
                if key in recorded and recorded[key] != value:
                    self.diverge(
                        f"option {key!r} is {value!r} in the replay but {recorded[key]!r} "
                        f"in run {self.uid}"
                    )
        self.options.update(parsed)
        self.buffer.args = self.options | self.args

    def diverge(self, why: str) -> None:
        """A replay cannot vouch for its values: say why (the first reason is reported)."""
        self.buffer.divergences.append(why)

    def data(self, name: str, uri: str) -> str:
        """`flor.data`: a local path to the batch, versioned now or fetched as recorded."""
        from flor_flows.versioning import data

        if name in self.batches:
            return self.batches[name]
        cache = self.settings.root / STATE_DIR / "cache"
        if self.replaying:
            recorded = self.buffer.wait_ready()["history"]["data"].get(name)
            if recorded is None:
                raise DataError(f"run {self.uid} recorded no data batch named {name!r}")
            location = recorded["stored_uri"] or recorded["uri"]
            path = data.fetch(location, recorded["sha256"], cache, self.settings.fs_options())
        else:
            registered = self.context.registered.get(name)
            if registered is not None:  # the launcher hashed and copied it already
                batch = data.Batch(**registered)
            else:
                uri = self.context.data.get(name, uri)
                options = self.settings.fs_options()
                batch = data.version(name, uri, self.settings.data_url, cache, options)
            self.buffer.data.append(
                {
                    "name": name,
                    "uri": batch.uri,
                    "sha256": batch.sha256,
                    "bytes": batch.bytes,
                    "stored_uri": batch.stored_uri,
                }
            )
            path = batch.local_path
        self.batches[name] = path
        return path

    @contextlib.contextmanager
    def checkpoint_objects(self, objects: dict[str, Any]) -> Iterator[None]:
        """`flor.checkpointing`: checkpoint `objects` at the loop boundaries inside the block."""
        from flor_flows.record.checkpointer import Checkpointer

        previous = self.checkpointing
        self.checkpointing = ckpt = Checkpointer(
            objects, self.frame, self.settings, self.buffer.checkpoints.append
        )
        if not self.replaying:
            ckpt.store.probe()
        try:
            yield
        finally:
            self.checkpointing = previous
            ckpt.close()

    def warm_start(self, objects: dict[str, Any]) -> str | None:
        """Load `objects` from the final checkpoint of the run this one resumes from."""
        from flor_flows.versioning.checkpoints import CheckpointStore, restore

        if not self.replaying and self.context.resumed_from is None:
            return None
        saved = self.buffer.wait_ready()["warm_start"]
        if saved is None:
            return None
        data = CheckpointStore.read(saved["uri"], saved["sha256"], self.settings.fs_options())
        restore(data, objects, rng=False)
        return saved["run_uid"]

    def loop(self, name: str, iterable: Iterable[Any]) -> Iterator[Any]:
        """`flor.loop`: the items, each an iteration of loop `name` (a replay follows its plan)."""
        parent = self.frame
        if self.replaying and parent is ROOT:
            yield from self._replay_outer(name, iterable)
            return
        outer, nested = parent is ROOT, parent.depth == 1  # nested: in an outer iteration
        if nested and self.replaying and name in self.skippable and self._restore_outer():
            return
        entered = time.perf_counter()
        checkpointed = self.checkpointing is not None and self.checkpointing.anchor is parent
        buffer, clock, child, item_value = (
            self.buffer,
            time.perf_counter,
            frames.child,
            frames.item_value,
        )
        try:
            for iteration, item in enumerate(iterable):  # the hot path: kept flat on purpose
                if buffer.error is not None:
                    raise buffer.error
                started = clock()
                if outer:
                    self.inner_seconds = 0.0
                self.frame = child(parent, name, iteration, item_value(iteration, item))
                try:
                    yield item
                finally:  # a `break` or an exception still ends the iteration
                    seconds = clock() - started
                    self._leave(parent, seconds, checkpointed or outer)
                if checkpointed and not self.replaying:
                    self._maybe_checkpoint(name, iteration, seconds)
            if checkpointed and not self.replaying:
                self.checkpointing.loop_ended()
        finally:
            self.frame = parent
            if nested:
                self.inner_seconds += time.perf_counter() - entered

    def _enter(self, name: str, iteration: int | None, item: Any) -> None:
        value = frames.item_value(iteration, item)
        self.frame = frames.child(self.frame, name, iteration, value)

    def _leave(self, parent: Frame, seconds: float, timed: bool) -> None:
        """Close the current iteration, recording its context row when it carries information.

        Iterations of a checkpointed loop (their durations drive replay planning), user-driven
        iterations (`timed`) and iterations over items that are not their index get a row;
        the others are fully described by the loop path stored with each log, so cost none.
        """
        frame = self.frame
        if not self.replaying and (timed or frame.has_values):
            inner = self.inner_seconds if frame.depth == 1 else None
            contexts = self.buffer.contexts
            contexts.append((frame, parent.ctx_id, time.time() - seconds, seconds, inner))
            if len(contexts) > Buffer.MAX_PENDING:
                self.buffer.flush()
        self.frame = parent

    def _maybe_checkpoint(self, name: str, iteration: int, seconds: float) -> None:
        row = {
            "ctx_id": frames.child(self.frame, name, iteration, None).ctx_id,
            "loop_name": name,
            "iteration": iteration,
        }
        self.checkpointing.boundary(self.uid, row, seconds)

    @contextlib.contextmanager
    def iteration(self, name: str, idx: int | None, value: Any) -> Iterator[Any]:
        """`flor.iteration`: one user-driven iteration of loop `name`, timed and recorded."""
        parent = self.frame
        muted = self.muted
        if self.replaying and parent is ROOT and self.selected is not None:
            self.muted = idx not in self.selected
        started = time.perf_counter()
        self._enter(name, idx, value)
        try:
            yield value
        finally:
            self._leave(parent, time.perf_counter() - started, timed=True)
            self.muted = muted

    def commit(self) -> None:
        """Write everything, record the outcome, and end the run."""
        if self.finished:
            return
        self.finished = True
        unused = sorted(set(self.context.kwargs) - self.asked)
        if unused and not self.replaying:
            declared = ", ".join(sorted(self.asked)) or "none"
            print(
                f"flor-flows: warning: --kwargs {', '.join(unused)}: no flor.arg of that name "
                f"was read (declared: {declared})",
                file=sys.stderr,
                flush=True,
            )
        status = "failed" if self.failure else "completed"
        measures = (
            Measures(*self.reads, self.looped, self.buffer.forked) if self.replaying else None
        )
        note = self.buffer.close(status, self.failure, measures)
        if note:
            print(f"flor-flows: warning: {note}", file=sys.stderr, flush=True)


_SKIP = object()
MAX_NAME = 255  # the store's column width for names


def _valid_name(name: Any) -> str:
    """A logged name the store can hold, or a FlorError at the `flor.log` that used it."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"flor.log name must be a non-empty string, got {name!r}")
    if len(name) > MAX_NAME:
        raise UsageError(
            f"flor.log name {name[:40]!r}... is {len(name)} characters; at most {MAX_NAME}"
        )
    if values.storable(name) != name:
        raise UsageError(f"flor.log name {name!r} holds a NUL or a lone surrogate")
    return name


def _option(value: Any) -> Any:
    """An argparse value as an arg: scalars, paths as text, lists of those; else `_SKIP`."""
    if type(value) in _IMMUTABLE:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, list | tuple) and all(type(v) in _IMMUTABLE for v in value):
        return list(value)
    return _SKIP


def entry_script() -> str | None:
    """The script being run, when the process runs one (not `-c`, a REPL or a notebook)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return str(Path(path).resolve()) if path else None
