"""Replaying historical runs with new log statements.

`prepare_version` materialises one code version and propagates the requested statements
into it (every Python file, followed across renames); `replay` re-executes one run of it
in a child interpreter, in replay mode: the run's own command line and working directory
(in a view of the files as the run saw them), its recorded args and data batches, only the
requested outer iterations, each started from the checkpoint written before it, and the
requested names written under the historical run with `source = replay`. The run's own
statements re-log their values, which are checked against the record (`record.verify`).
Within `sharing_setup` (a backfill), replays fork from a process that imported the script's
libraries once (`forkserver`), shared by the versions that import the same ones, instead of
each importing them again.
"""

from __future__ import annotations

import difflib
import os
import signal
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flor_flows import children, pyast
from flor_flows.config import Settings
from flor_flows.errors import (
    CodeVersionError,
    ReplayDiverged,
    ReplayFailed,
    StoreError,
    Unparsable,
)
from flor_flows.propagate import Propagation, Refusal, propagate_files
from flor_flows.propagate.statements import read
from flor_flows.record import lifecycle
from flor_flows.record.context import ReplaySpec, RunContext
from flor_flows.replay import forkserver
from flor_flows.replay.reach import reachable
from flor_flows.replay.shortcuts import mark
from flor_flows.replay.skipping import carried_state, shortcuts, skippable_loops
from flor_flows.replay.worktree import link_untracked, project_root, python_files, view
from flor_flows.versioning import code

# The entry scripts of the latest runs whose fork servers `prepare` starts: each holds its
# libraries in memory (torch: ~300 MB) until KEPT_IDLE_SECONDS without a replay.
PREPARED = 2


@dataclass(frozen=True)
class Version:
    """A code version, materialised, with the requested statements propagated into it."""

    commit: str
    directory: Path
    propagations: dict[str, Propagation] = field(default_factory=dict)
    diffs: dict[str, str] = field(default_factory=dict)  # path -> unified diff of what changed
    skip_loops: frozenset[str] = frozenset()  # nested loops its replays may skip
    # Per entry script of the runs to replay: None when it reaches the requested statements,
    # else (status, why): "propagation failed", "not applicable" or "replay failed".
    scope: dict[str, tuple[str, str] | None] = field(default_factory=dict)
    # Outer loops whose bodies are marked to be cut short (`replay.shortcuts`): loop name ->
    # whether the head may go as well as the tail.
    shortcuts: dict[str, bool] = field(default_factory=dict)
    # What the requested values read that the outer loop carries outside its checkpoints:
    # where any, its replays run every iteration from the first.
    carried: frozenset[str] = frozenset()

    @property
    def refusals(self) -> list[str]:
        """Every statement propagation refused in this version, prefixed with its file."""
        return [f"{path}: {r}" for path, p in self.propagations.items() for r in p.refusals]

    def outcome(self, entry_script: str) -> tuple[str, str | None]:
        """The status of the runs of `entry_script` in this version, and why."""
        found = self.scope.get(entry_script)
        return ("propagated", None) if found is None else found


def prepare_version(
    root: Path,
    commit: str,
    new_files: dict[str, str],
    names: Iterable[str],
    workdir: Path,
    entry_scripts: Iterable[str] = (),
    settings: Settings | None = None,
) -> Version:
    """Materialise `commit` under `workdir` and insert the `names` statements of `new_files`;
    say for each of `entry_scripts` whether its runs can be replayed for them. `settings`
    locate the version's archive, for a host whose repository does not hold it."""
    names = tuple(names)
    directory = view(root, commit, workdir / commit, settings)
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
            try:
                pyast.compile_source(result.source, str(path))
            except SyntaxError as exc:  # a placement must never break the file
                why = (
                    f"the file does not compile after the insertion: {exc.msg} (line {exc.lineno})"
                )
                result.refusals.extend(Refusal(p.name, why) for p in result.placements)
    link_untracked(root, directory)
    scope = {entry: _scope(entry, replayed, results, names, commit[:10]) for entry in entry_scripts}
    marked = {}
    for shortcut in shortcuts(replayed, names):
        source = mark(replayed[shortcut.path], shortcut)
        if source is not None:
            (directory / shortcut.path).write_text(source)
            replayed[shortcut.path] = source
            marked[shortcut.loop] = shortcut.head
    skip = skippable_loops(replayed, names)
    carried = carried_state(replayed, names)
    return Version(commit, directory, results, diffs, skip, scope, marked, carried)


def _scope(
    entry: str,
    files: dict[str, str],
    results: dict[str, Propagation],
    names: tuple[str, ...],
    version: str,
) -> tuple[str, str] | None:
    """Whether the runs of `entry` can be replayed for `names` (None) or why not."""
    if entry not in files:
        return ("replay failed", f"{entry} is not in code version {version}")
    reached = reachable(files, entry)
    refused = [
        f"{path}: {r}" for path in sorted(reached & results.keys()) for r in results[path].refusals
    ]
    if refused:
        return ("propagation failed", "; ".join(refused))
    logged: set[str] = set()
    for path in reached:
        try:
            logged |= read(files[path]).logs().keys()
        except Unparsable:
            continue
    if not logged.intersection(names):
        # a new file that logs them but that no file of this version was: said, not hidden
        unplaced = sorted({r.reason for p, found in results.items() if p not in files for r in found.refusals})  # fmt: skip
        return (
            "not applicable",
            f"{entry} (with the modules it imports) logs none of {', '.join(names)} "
            f"in version {version}" + "".join(f"; {why}" for why in unplaced),
        )
    return None


def sharing_setup() -> AbstractContextManager[None]:
    """While open, replays on this worker pay their script's library imports once per set of
    libraries: they fork from a process that made them (`forkserver`), stopped when this
    closes unless the warm process keeps it for its next commands."""
    return forkserver.scope()


def start_setup(settings: Settings, commit: str, entry_script: str) -> bool:
    """Start the fork server the first replay of `entry_script` at `commit` will fork from
    now, while its flow run starts, when the warm process keeps servers (`forkserver.keep`)
    and the working tree's script imports the same libraries (it is started from it): the
    first command of a session then waits less for them. Whether it was started."""
    if not forkserver.keeping():  # nothing to start: spare the repository read
        return False
    script = settings.root / entry_script
    try:
        source = code.read_file(settings.root, commit, str(script))
    except CodeVersionError:  # a host without the repository: the replay starts it
        return False
    return forkserver.prestart(script, source, (settings.root,), children.child_env())


def prepare(settings: Settings) -> list[str]:
    """Start now the fork servers that replays of the project's latest runs will fork from
    (their entry scripts in the working tree, at most PREPARED), where the warm process keeps
    servers (`forkserver.keep`), and wait until they are ready: what to say of each. The
    first command of a session then waits for no library; `flor-flows server start` in a
    project does this. StoreError if no run can be replayed yet."""
    from flor_flows.store import recorded
    from flor_flows.store.history import candidates

    if not forkserver.keeping():
        return [
            "flor-flows: nothing prepared: fork servers are kept by the warm process of a "
            "background server (`flor-flows server start`), unless FLOR_FLOWS_REPLAY_FORK=0"
        ]
    runs = candidates(recorded(settings.store_url), None)
    latest = list(dict.fromkeys(reversed(runs["entry_script"].tolist())))[:PREPARED]
    if not latest:
        raise StoreError("no finished run with a code version to replay yet")
    env = children.child_env()
    return [
        forkserver.prepare(entry, settings.root / entry, (settings.root,), env)
        if (settings.root / entry).is_file()
        else f"flor-flows: nothing prepared for {entry}: it is not in the working tree"
        for entry in latest
    ]


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
) -> children.Outcome:
    """Re-execute run `run_uid` in `version` and record `names`; raises `ReplayFailed`.

    `iterations` are the outer iterations to replay (None: all; empty: run level only);
    `run_level` False leaves the statements outside the outer loop to another segment.
    The replayed values carry their provenance: code version, statements, flow run.
    """
    from flor_flows.store import open_store

    store = open_store(settings.store_url)
    record = store.run_record(run_uid)
    script = version.directory / entry_script
    if not script.is_file():
        raise ReplayFailed(f"{entry_script} is not in code version {version.commit[:10]}")
    invocation = record["invocation"] or {}  # runs recorded before it was kept: verified
    cwd = Path(os.path.normpath(version.directory / invocation.get("cwd", ".")))
    if not cwd.is_dir():
        raise ReplayFailed(
            f"run {run_uid} ran in {invocation.get('cwd')!r}, which code version "
            f"{version.commit[:10]} does not have"
        )
    label = f"{entry_script} at {version.commit[:10]}"
    roots = (version.directory, settings.root)  # the project's own code is never pre-imported
    env = children.child_env()
    # First the fork server (started now if need be: the script's imports, shared by the
    # replays that fork from it), then the replay's record: its times are the replay's own.
    spawn = forkserver.spawner(label, script, cwd, roots, env, on_output)
    replay_id = lifecycle.start_replay(
        store,
        record["id"],
        code_commit=version.commit,
        statements_sha256=statements_sha256,
        prefect_flow_run_id=flow_run_id,
    )
    argv = tuple(invocation.get("argv", ()))
    run = children.Launch(run_uid, settings, cwd, script, entry_script, argv=argv)
    context = RunContext(
        mode="replay",
        run_uid=run_uid,
        store_url=settings.store_url,
        checkpoint_url=settings.checkpoint_url,
        data_url=settings.data_url,
        storage_options=settings.storage_options or None,
        project_root=str(project_root(settings.root, version.directory)),
        replay=ReplaySpec(
            apply=tuple(names),
            iterations=iterations,
            replay_id=replay_id,
            skip_loops=tuple(sorted(version.skip_loops)),
            shortcuts=tuple(sorted(version.shortcuts.items())),
            run_level=run_level,
            from_start=bool(version.carried),
        ),
    )
    outcome = children.run(run, context, on_output, spawn=spawn)
    what = f"replay of run {run_uid} ({label})"
    verified = store.replay_outcome(replay_id)
    # A script that exits in error replays well only where its writer found the run raised
    # the same (a failed run, faithfully replayed).
    if outcome.returncode != 0 and verified["status"] != "completed":
        lifecycle.finish_replay(store, replay_id, "failed")
        raise ReplayFailed(f"{what} {_failure(outcome)}")
    if verified["status"] == "diverged":
        raise ReplayDiverged(f"{what} diverged: {verified['error']}")
    if verified["status"] != "completed":  # e.g. its writer kept the outcome on local disk
        raise ReplayFailed(
            f"{what} ended, but the store has its outcome as {verified['status']!r}, not "
            f"completed; the last lines of its stderr:\n{outcome.stderr_tail}"
        )
    return outcome


def _failure(outcome: children.Outcome) -> str:
    """Why a replay process failed: flor-flows' own error, said in one line (the whole
    output went to `on_output`), else its exit code and the end of its stderr."""
    lines = outcome.stderr_tail.splitlines()
    last = next((k for k in range(len(lines) - 1, -1, -1) if lines[k].startswith("Traceback")), 0)
    ours = [k for k in range(last, len(lines)) if lines[k].startswith("flor_flows.errors.")]
    if ours:
        kind, _, message = " ".join(lines[ours[-1] :]).partition(": ")
        return f"failed: {message} ({kind.rpartition('.')[2]})"
    ended = f"exited with code {outcome.returncode}"
    if outcome.returncode < 0:  # killed: say by what
        number = -outcome.returncode
        try:
            ended = f"was killed by signal {number} ({signal.Signals(number).name})"
        except ValueError:  # a real-time signal has no name
            ended = f"was killed by signal {number}"
    tail = outcome.stderr_tail.strip()
    return (
        f"{ended}; the last lines of its stderr:\n{tail}" if tail else f"{ended}, printing nothing"
    )
