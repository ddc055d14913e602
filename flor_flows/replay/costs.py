"""The cost model of a replay: how long one takes, and where to split the longest in segments.

Estimates come from what the forward run recorded (`history.RunHistory`) and how the plan runs:

    seconds = start-up + set-up * slowdown(k, SETUP_CONTENTION) + compute * slowdown(k) + reads
    or, where measured: measured * slowdown(k, SETUP_CONTENTION) + compute * slowdown(k) + reads

- start-up: STARTUP_SECONDS, less the writer's imports for a replay forked from a fork
  server, which hands it a writer process started ahead (`record.spare`).

- set-up: the run's recorded time outside its outer loop (the script's imports, data
  loading and model building, what follows the loop). Replays fork from their script's
  fork server (`forkserver`) and skip what its imports took: as the last servers of that
  script measured them on this host (their median), or the whole set-up before one did.
  The first replay of a script whose server does not run yet waits for it to start before
  it starts (`priced`): a cost of the command, shared by the replays that fork from it.
- compute: the recorded seconds of every outer iteration the replay executes (`_executed`).
- measured: once replays of the run (else of its entry script) measured what they took
  outside their outer loop, forked or fresh (`RunHistory.replay_outside`), that figure of
  this host stands for start-up and set-up in the replays of its kind: it holds what the
  model can only guess, the script's own work after a fork and this host's speed.
- slowdown(k): the recorded run had the host to itself; k replays at once (`workers` at a
  time) on c cores, each using RUN_CORES, get at most c / k cores each and lose CONTENTION
  on top: max(1, k * RUN_CORES / c) * CONTENTION for k > 1, 1 alone. Set-up and compute
  are both CPU work of the script, both stretched; set-ups starting together lose
  SETUP_CONTENTION instead.
- reads: each checkpoint the replay restores, at the speed earlier replays of the run read
  and restored its checkpoints (`RunHistory.read_rate`, measured by each replay; the other
  runs' median where its own never did); before any replay measured one, at the speed the
  run wrote them (its own storage and serialisation, `RunHistory.write_rate`) over
  READ_PER_WRITE; at READ_BYTES_PER_SECOND when the record has no write times.

The host's other users are not seen: every figure assumes the load the run was recorded
under. Splitting a run into segments (`split`) trades one more set-up for halved compute
under more contention, and is done only where that shortens the plan's longest replay.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING

from flor_flows.children import child_env
from flor_flows.record.replay import Step, from_start, shortcut_steps, steps
from flor_flows.replay import forkserver

if TYPE_CHECKING:
    from pathlib import Path

    from flor_flows.replay.history import RunHistory
    from flor_flows.replay.plan import Item

# The fixed cost of one replay: a child interpreter, `import flor_flows`, and the writer
# process (its imports of SQLAlchemy and the store, opening and closing the replay) around
# the script. Measured as the median of 10 engine-style replays (iterations=()) of a script
# that only imports flor_flows and logs one value, on a 2-core Linux VM with Python 3.11:
# 0.46 s (`python -c pass` 0.02 s, `import flor_flows` 0.06 s, the writer's imports 0.34 s).
STARTUP_SECONDS = 0.5
# A forked replay also finds its writer process started (`record.spare`): the writer's
# imports in STARTUP_SECONDS are done.
SPARE_WRITER_SAVED_SECONDS = 0.34
# Restoring a checkpoint (read, sha256, deserialise, copy into the live objects) against
# writing it (copy, serialise, sha256, write), through `versioning.checkpoints` on this VM
# (a torch model with its SGD optimizer, median of 3, page cache): 17 MB 1.0-1.2x, 269 MB
# 1.5-1.8x (write 250-520 MB/s, restore 140-340 MB/s); a CNN with SGD and StepLR, 1.2 MB
# (`bench/run.py --only real_replay`, 2026-12-02, the replay records' measured reads): 0.5x
# (write 341 MB/s, restore 630-670 MB/s over 20 checkpoints). Only until a replay of the
# run measured its own reads: 1.0, between the two.
READ_PER_WRITE = 1.0
# Where the record has no write times: a cold read from a disk or an object store, where one
# stream gets 100-300 MB/s; 200 MB/s errs on the slow side.
READ_BYTES_PER_SECOND = 200e6
# The cores a recorded run kept busy. The record holds no CPU time: 1, as torch with
# `set_num_threads(1)` (the bench's scripts) or a plain Python loop. (Torch on its default
# threads, one per core, is another matter: two such processes on 2 cores took 3.7-13x
# their time alone in `estimate_check.py contention`.)
RUN_CORES = 1
# What replays at once lose beyond sharing the cores: caches, memory bandwidth, their
# writer processes, the flow's and the Prefect server's work for them; set-ups starting
# together (imports, data loading) lose more. Two segments at once against one replay of
# the same epochs on this 2-core VM, `bench/workloads/estimate_check.py` ("contention"
# line: the scripts' epochs / set-up), the rest of the host quiet (< 0.25 core busy):
# x1.04 / x1.03, x1.15 / x1.4, x1.41 / x2.4; one torch epoch (1 thread) two at once
# against alone, `estimate_check.py contention`, median of 7 pairs: x1.07; again on
# 2026-12-02 (`estimate_check.py contention --threads 1 --repeat 5`, a quiet host): x0.98-
# x1.04, median x1.02. Epochs: 1.05 (between the torch pairs' medians); set-ups: 1.4 (the
# median of three).
# With other sessions keeping 1-1.4 cores busy, Linux's autogroup scheduling leaves this
# session's replays about one core together: x1.5-2.3 / x2.0-3.3 (x2.5-3.0 for the torch
# epoch), which no constant can know.
CONTENTION = 1.05
SETUP_CONTENTION = 1.4


def slowdown(concurrent: int, cores: int | None = None, contention: float = CONTENTION) -> float:
    """How much longer a replay's script takes with `concurrent` replays (itself included)
    running on `cores` (default: this host's) than it took alone, losing `contention`."""
    if concurrent <= 1:
        return 1.0
    cores = cores or os.cpu_count() or 1
    return max(1.0, concurrent * RUN_CORES / cores) * contention


def estimate(
    run: RunHistory,
    iterations: tuple[int, ...] | None,
    run_level: bool = True,
    concurrent: int = 1,
    forked: float | None = None,
    cores: int | None = None,
) -> float:
    """Seconds a replay of `iterations` of `run` takes, `concurrent` replays at once (on
    `cores`), in a fresh process (`forked` None) or forked from a ready fork server whose
    imports took `forked` seconds (that much of the set-up is skipped).

    The start-up cost, the run's set-up (less what a fork skips) and the recorded time of
    every iteration the replay executes (the selected ones and those re-executed silently
    from the nearest earlier checkpoint, per `replay.steps`, or `replay.shortcut_steps`
    where the replay cuts the body short; less their nested loops where the replay skips
    those; nothing for an iteration that runs only its requested statements), both
    stretched by `slowdown`, and the reading of the checkpoints it restores.
    """
    executed = _executed(run, iterations, run_level)
    restored = [step.restore for step in executed if step.restore is not None]
    compute = 0.0
    for step in executed:
        if step.head or (step.action == "record" and run.shortcut):
            restored += [step.iteration] if step.head else []
            continue  # only the requested statements run
        compute += run.seconds.get(step.iteration, 0.0)
        if run.skip_nested and step.iteration in run.checkpoints:
            compute -= run.inner.get(step.iteration, 0.0)
            restored.append(step.iteration)
    final = max(run.checkpoints, default=None)
    targets = set(run.iterations if iterations is None else iterations)
    cut = any(step.cut for step in executed)
    if run_level and final is not None and (final not in targets or cut) and not run.from_start:
        restored.append(final)  # the state after the loop is that of its last checkpoint
    read = sum(_read_seconds(run, run.checkpoints[i]) for i in restored)
    stretched = slowdown(concurrent, cores, SETUP_CONTENTION)
    measured = run.replay_outside.get(forked is not None)
    if measured is not None:  # what earlier replays of the kind took outside the loop here
        return measured * stretched + compute * slowdown(concurrent, cores) + read
    setup = run.outside - min(run.outside, forked or 0.0)  # a fork skips the server's imports
    work = setup * stretched + compute * slowdown(concurrent, cores)
    startup = STARTUP_SECONDS - (SPARE_WRITER_SAVED_SECONDS if forked is not None else 0.0)
    return startup + work + read


def _read_seconds(run: RunHistory, size: int) -> float:
    """Seconds to restore a checkpoint of `size` bytes of `run`."""
    if run.read_rate:
        return size / run.read_rate
    if run.write_rate:
        return size / run.write_rate * READ_PER_WRITE
    return size / READ_BYTES_PER_SECOND


def _executed(run: RunHistory, iterations: tuple[int, ...] | None, run_level: bool) -> list[Step]:
    """The outer iterations a replay of `iterations` executes, as `record.replay` plans them."""
    if run.from_start:
        return list(from_start(iterations, run.iterations[-1], run_level)) if run.iterations else []
    if run.shortcut is not None and run.iterations:
        last = run.iterations[-1]
        # A free body's head goes or is empty: either way a target costs a checkpoint read.
        return list(shortcut_steps(iterations, run.checkpoints, last, run.shortcut, run_level))
    if iterations is None:
        return [Step(i, "record") for i in run.iterations]
    return [s for s in steps(iterations, run.checkpoints) if s.action != "skip"]


def split(
    items: list[Item],
    history: dict[str, RunHistory],
    workers: int,
    cores: int | None = None,
    root: Path | None = None,
) -> list[Item]:
    """The plan as it runs, `workers` replays at a time on `cores`: the longest replay split
    into segments of its iterations while that shortens the longest replay of the plan,
    then every item estimated as it runs (`priced`), its script in project `root`.

    A segment starts from the checkpoint before its first iteration and pays the set-up
    again, and more replays at once slow each other (`slowdown`): a split pays off only
    where the compute it halves outweighs both by more than a replay's start-up.
    """
    items = list(items)
    while items and len(items) < workers:
        now = [_seconds(item, history, len(items), cores) for item in items]
        at = now.index(max(now))
        halves = _halves(items[at], history[items[at].run_uid], len(items) + 1, cores)
        if halves is None:
            break
        after = [*items[:at], *halves, *items[at + 1 :]]
        # The new segment is one more process, its start-up CPU work on a shared host: a
        # split must save more than that start-up to be worth one.
        longest = max(_seconds(item, history, len(after), cores) for item in after)
        if longest >= max(now) - STARTUP_SECONDS:
            break
        items = after
    return priced(items, history, workers, cores, root)


def priced(
    items: list[Item],
    history: dict[str, RunHistory],
    workers: int,
    cores: int | None = None,
    root: Path | None = None,
) -> list[Item]:
    """The items with their estimates as they run: min(workers, len(items)) at once, each
    forked from a ready fork server where replays fork here (`forkserver.enabled`). The
    first of each entry script first waits for its server to start, unless one kept from
    an earlier command runs (`Item.server_seconds`). A server serves every version whose
    script imports the same libraries: the versions of one entry script, as a rule.

    A server's imports take what the last servers of the libraries the entry script (in
    project `root`) imports measured on this host (the median, `forkserver.measured`: what
    forking skips); before any did, the run's whole set-up is taken for them, and its start
    for that of a fresh replay (start-up and set-up)."""
    concurrent = min(workers, len(items))
    forked = forkserver.enabled()
    env = child_env()
    kept = {
        entry: forkserver.measured(root / entry, env) if root is not None else None
        for entry in {item.entry_script for item in items}
    }
    seen: set[str] = set()  # entry scripts whose server an earlier item waits for
    out = []
    for item in items:
        run = history[item.run_uid]
        found = kept[item.entry_script]
        imports, running = found or (run.outside, False)
        seconds = estimate(
            run, item.iterations, item.run_level, concurrent, imports if forked else None, cores
        )
        starts = forked and not running and item.entry_script not in seen
        seen.add(item.entry_script)
        server = (imports if found else STARTUP_SECONDS + run.outside) if starts else 0.0
        out.append(
            replace(
                item,
                estimated_seconds=seconds,
                server_seconds=server,
                server_guessed=starts and found is None,
            )
        )
    return out


def _seconds(
    item: Item, history: dict[str, RunHistory], concurrent: int, cores: int | None
) -> float:
    """The item's seconds, `concurrent` at once, on a fresh interpreter."""
    return estimate(history[item.run_uid], item.iterations, item.run_level, concurrent, cores=cores)


def _halves(
    item: Item, run: RunHistory, concurrent: int, cores: int | None
) -> tuple[Item, Item] | None:
    """The item cut in two at the checkpoint that best balances the halves' estimates
    (`concurrent` replays at once), or None where it has no checkpoint to cut at.

    The first half's estimate grows with the cut and the second's shrinks, so the balanced
    cut is found by bisection: O(n log n) estimates of n iterations, not O(n^2).
    """
    pool = list(run.iterations if item.iterations is None else item.iterations)
    # The second starts at a checkpoint (unless every replay of the run starts at the first).
    cuts = [c for c in range(1, len(pool)) if pool[c - 1] in run.checkpoints and not run.from_start]  # fmt: skip

    def costs(cut: int) -> tuple[float, float]:
        first, second = tuple(pool[:cut]), tuple(pool[cut:])
        return (
            estimate(run, first, False, concurrent, cores=cores),
            estimate(run, second, item.run_level, concurrent, cores=cores),
        )

    low, high = 0, len(cuts)
    while low < high:
        middle = (low + high) // 2
        first, second = costs(cuts[middle])
        if first < second:
            low = middle + 1
        else:
            high = middle
    candidates = [cuts[i] for i in (low - 1, low) if 0 <= i < len(cuts)]
    if not candidates:
        return None
    cut = min(candidates, key=lambda c: max(costs(c)))
    return (
        replace(item, iterations=tuple(pool[:cut]), run_level=False),
        replace(item, iterations=tuple(pool[cut:])),
    )
