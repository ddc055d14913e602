"""The run context: everything a training process needs to know from outside its script.

It is the single hand-off between a launcher (the training flow, the replay engine, or a
user's shell) and the record API in the child process: the flow and the replay engine
serialise it into one environment variable; a user's shell supplies `--kwargs`/`--data`.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flor_flows.errors import ArgumentError, UsageError

ENV_VAR = "FLOR_FLOWS_CONTEXT"
FLAGS = ("--kwargs", "--data")


@dataclass(frozen=True)
class ReplaySpec:
    """What a replay re-executes: the names to record and the outer iterations to run.

    `iterations` None means every iteration; an empty tuple means none (run-level only).
    `skip_loops` names the nested loops that may be skipped by restoring the checkpoint at
    the end of their outer iteration (see `flor_flows.replay.skipping`); `run_level` False
    mutes the statements outside the outer loop (all segments of a run but one);
    `shortcuts` names the outer loops whose bodies the replayed code marks (see
    `flor_flows.replay.shortcuts`), each with whether its head may be left out.
    """

    apply: tuple[str, ...] | None = None
    iterations: tuple[int, ...] | None = None
    replay_id: int | None = None
    skip_loops: tuple[str, ...] = ()
    run_level: bool = True
    shortcuts: tuple[tuple[str, bool], ...] = ()  # marked outer loops; True: the head may go
    from_start: bool = False  # every iteration runs from the first (`record.replay.from_start`)


@dataclass(frozen=True)
class RunContext:
    """What a training process is told from outside: its mode, run, store and inputs."""

    mode: Literal["record", "replay"] = "record"
    run_uid: str | None = None  # record: preassigned by a launcher; replay: the historical run
    store_url: str | None = None
    checkpoint_url: str | None = None
    data_url: str | None = None
    storage_options: str | None = None  # object-store options (JSON, `Settings.storage_options`)
    flow_run_id: str | None = None
    resumed_from: str | None = None  # uid of the run whose final checkpoint `warm_start` loads
    kwargs: dict[str, str] = field(default_factory=dict)
    data: dict[str, str] = field(default_factory=dict)
    # Set by a launcher that did the versioning itself (the training flow), so the run reuses
    # it: the code snapshot (`CodeVersion` fields) and batches already hashed and copied
    # (name -> `Batch` fields).
    project_root: str | None = None  # the repository, when the script runs from a copy (replay)
    code_version: dict[str, Any] | None = None
    registered: dict[str, dict[str, Any]] = field(default_factory=dict)
    replay: ReplaySpec | None = None
    # How the script was started: its own argv (flor-flows' flags taken out), the working
    # directory and the interpreter version. Captured by the script's process at import.
    invocation: dict[str, Any] | None = None

    def to_env(self) -> dict[str, str]:
        """The environment entry that hands this context to a child process."""
        return {ENV_VAR: json.dumps(asdict(self))}

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str] = os.environ) -> RunContext:
        """The context a launcher handed this process (`to_env`); the default if none."""
        raw = environ.get(ENV_VAR)
        if not raw:
            return cls()
        try:
            fields = json.loads(raw)
            replay = fields.pop("replay", None)
            if replay is not None:
                for key in ("apply", "iterations", "skip_loops"):
                    if replay.get(key) is not None:
                        replay[key] = tuple(replay[key])
                replay["shortcuts"] = tuple(map(tuple, replay.get("shortcuts", ())))
                replay = ReplaySpec(**replay)
            return cls(**fields, replay=replay)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"{ENV_VAR} is not a valid run context: {exc}") from exc


def _pairs(flag: str, items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ArgumentError(f"{flag} expects NAME=VALUE pairs, got {item!r}")
        pairs[key] = value
    return pairs


def split_argv(argv: list[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Separate `--kwargs k=v ...` and `--data name=URI ...` from a script's own arguments.

    Returns the remaining argv (for the script's argparse) and the parsed pairs per flag.
    """
    rest: list[str] = []
    found: dict[str, list[str]] = {flag: [] for flag in FLAGS}
    current: str | None = None
    for arg in argv:
        flag, _, inline = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        if flag in FLAGS:
            current = flag
            if inline:
                found[flag].append(inline)
        elif current and not arg.startswith("-"):
            found[current].append(arg)
        else:
            current = None
            rest.append(arg)
    return rest, {flag: _pairs(flag, items) for flag, items in found.items()}


def current(argv: list[str]) -> tuple[RunContext, list[str]]:
    """The context of this process: the environment's, with command-line pairs merged in,
    and the invocation (the script's own argv, the working directory, the interpreter)."""
    context = RunContext.from_env()
    rest, pairs = split_argv(argv)
    invocation = {"argv": rest, "cwd": os.getcwd(), "python": platform.python_version()}
    merged = asdict(context) | {
        "kwargs": context.kwargs | pairs["--kwargs"],
        "data": context.data | pairs["--data"],
        "replay": context.replay,
        "invocation": invocation,
    }
    return RunContext(**merged), rest
