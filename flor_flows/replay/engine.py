"""Replaying historical runs with new log statements.

`prepare_version` materialises one code version and propagates the requested statements
into it (every Python file, followed across renames); `replay` re-executes one run of it
in a child interpreter, in replay mode: its recorded args and data batches, only the
requested outer iterations, each started from the checkpoint written before it, and the
requested names written under the historical run with `source = replay`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flor_flows.config import Settings
from flor_flows.errors import FlorError
from flor_flows.propagate import Propagation, propagate_files
from flor_flows.record.context import ReplaySpec, RunContext
from flor_flows.replay.skipping import skippable_loops
from flor_flows.replay.worktree import materialize, python_files
from flor_flows.training import launch


class ReplayFailed(FlorError):
    """A replay's child process exited with an error (the message ends with its stderr tail)."""


@dataclass(frozen=True)
class Version:
    """A code version, materialised, with the requested statements propagated into it."""

    commit: str
    directory: Path
    propagations: dict[str, Propagation] = field(default_factory=dict)
    diffs: dict[str, str] = field(default_factory=dict)  # path -> unified diff of what changed
    skip_loops: frozenset[str] = frozenset()  # nested loops its replays may skip

    @property
    def refusals(self) -> list[str]:
        return [f"{path}: {r}" for path, p in self.propagations.items() for r in p.refusals]

    @property
    def ok(self) -> bool:
        return not self.refusals


def prepare_version(
    root: Path, commit: str, new_files: dict[str, str], names: Iterable[str], workdir: Path
) -> Version:
    """Materialise `commit` under `workdir` and insert the `names` statements of `new_files`."""
    names = tuple(names)
    directory = materialize(root, commit, workdir / commit)
    old_files = python_files(directory)
    results = propagate_files(new_files, old_files, names, version=commit[:10])
    replayed = dict(old_files)
    diffs = {}
    for path, result in results.items():
        if result.placements:
            (directory / path).write_text(result.source)
            replayed[path] = result.source
            lines = difflib.unified_diff(
                old_files[path].splitlines(keepends=True),
                result.source.splitlines(keepends=True),
                f"a/{path}",
                f"b/{path}",
            )
            diffs[path] = "".join(lines)
    return Version(commit, directory, results, diffs, skippable_loops(replayed, names))


def replay(
    version: Version,
    run_uid: str,
    entry_script: str,
    settings: Settings,
    names: Iterable[str],
    iterations: tuple[int, ...] | None = None,
    on_output: Callable[[str], Any] = print,
    statements_sha256: str | None = None,
    flow_run_id: str | None = None,
    run_level: bool = True,
) -> launch.Outcome:
    """Re-execute run `run_uid` in `version` and record `names`; raises `ReplayFailed`.

    `iterations` are the outer iterations to replay (None: all; empty: run level only);
    `run_level` False leaves the statements outside the outer loop to another segment.
    The replayed values carry their provenance: code version, statements, flow run.
    """
    from flor_flows.store import open_store

    store = open_store(settings.store_url)
    replay_id = store.start_replay(
        store.run_id(run_uid),
        code_commit=version.commit,
        statements_sha256=statements_sha256,
        prefect_flow_run_id=flow_run_id,
    )
    script = version.directory / entry_script
    if not script.is_file():
        raise ReplayFailed(f"{entry_script} is not in code version {version.commit[:10]}")
    context = RunContext(
        mode="replay",
        run_uid=run_uid,
        store_url=settings.store_url,
        checkpoint_url=settings.checkpoint_url,
        data_url=settings.data_url,
        project_root=str(settings.root),
        replay=ReplaySpec(
            apply=tuple(names),
            iterations=iterations,
            replay_id=replay_id,
            skip_loops=tuple(sorted(version.skip_loops)),
            run_level=run_level,
        ),
    )
    run = launch.Launch(run_uid, settings, version.directory, script, entry_script)
    outcome = launch.run(run, context, on_output)
    if outcome.returncode != 0:
        store.finish_replay(replay_id, "failed")
        raise ReplayFailed(
            f"replay of run {run_uid} ({entry_script} at {version.commit[:10]}) exited with "
            f"code {outcome.returncode}; the last lines of its stderr:\n{outcome.stderr_tail}"
        )
    return outcome
