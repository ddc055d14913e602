"""The cost model of a replay: how long one takes, and where to split the longest in segments.

Estimates come from what the forward run recorded: its outer iterations' durations, the time
in their nested loops, the run's time outside the loop and the sizes of its checkpoints.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from flor_flows.record.replay import Step, shortcut_steps, steps

if TYPE_CHECKING:
    from flor_flows.replay.plan import Item, RunHistory

# The fixed cost of one replay: a child interpreter, `import flor_flows`, and the writer
# process (its imports of SQLAlchemy and the store, opening and closing the replay) around
# the script. Measured as the median of 10 engine-style replays (iterations=()) of a script
# that only imports flor_flows and logs one value, on a 2-core Linux VM with Python 3.11:
# 0.46 s (`python -c pass` 0.02 s, `import flor_flows` 0.06 s, the writer's imports 0.34 s).
# Rounded up: the script's own imports (numpy, torch) come on top and are not known here.
STARTUP_SECONDS = 0.5
# Restoring a checkpoint reads it, checks its sha256 and copies it into the live objects.
# A 256 MB checkpoint restored at 740 MB/s from the page cache on that VM (sha256 alone:
# 1.8 GB/s), but replays read checkpoints cold, from a disk or an object store, where one
# stream gets 100-300 MB/s: 200 MB/s errs on the slow side.
READ_BYTES_PER_SECOND = 200e6


def estimate(run: RunHistory, iterations: tuple[int, ...] | None, run_level: bool = True) -> float:
    """Seconds a replay of `iterations` of `run` takes, from what its forward run recorded.

    The start-up cost, the run's time outside its outer loop, the recorded time of every
    iteration the replay executes (the selected ones and those re-executed silently from
    the nearest earlier checkpoint, per `replay.steps`, or `replay.shortcut_steps` where the
    replay cuts the body short; less their nested loops where the replay skips those;
    nothing for an iteration that runs only its requested statements) and the reading of
    the checkpoints it restores.
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
    if run_level and final is not None and (final not in targets or cut):
        restored.append(final)  # the state after the loop is that of its last checkpoint
    read = sum(run.checkpoints[i] for i in restored) / READ_BYTES_PER_SECOND
    return STARTUP_SECONDS + run.outside + compute + read


def _executed(run: RunHistory, iterations: tuple[int, ...] | None, run_level: bool) -> list[Step]:
    """The outer iterations a replay of `iterations` executes, as `record.replay` plans them."""
    if run.shortcut is not None and run.iterations:
        last = run.iterations[-1]
        # A free body's head goes or is empty: either way a target costs a checkpoint read.
        return list(shortcut_steps(iterations, run.checkpoints, last, run.shortcut, run_level))
    if iterations is None:
        return [Step(i, "record") for i in run.iterations]
    return [s for s in steps(iterations, run.checkpoints) if s.action != "skip"]


def split(items: list[Item], history: dict[str, RunHistory], workers: int) -> list[Item]:
    """Split the longest replays into segments of their iterations until each worker has one.

    A segment starts from the checkpoint before its first iteration; a split pays off only
    where each half's compute exceeds the fixed cost of one more replay process.
    """
    items = list(items)
    while len(items) < workers:
        longest = max(items, key=lambda item: item.estimated_seconds, default=None)
        halves = _halves(longest, history[longest.run_uid]) if longest else None
        if halves is None:
            return items
        at = items.index(longest)
        items[at : at + 1] = halves
    return items


def _halves(item: Item, run: RunHistory) -> tuple[Item, Item] | None:
    """The item cut in two at the checkpoint that balances the halves' estimates, or None
    where no cut gives each half more compute than one more replay process costs.

    The first half's estimate grows with the cut and the second's shrinks, so the balanced
    cut is found by bisection: O(n log n) estimates of n iterations, not O(n^2).
    """
    pool = list(run.iterations if item.iterations is None else item.iterations)
    cuts = [
        c for c in range(1, len(pool)) if pool[c - 1] in run.checkpoints
    ]  # 2nd half starts there

    def costs(cut: int) -> tuple[float, float]:
        return (
            estimate(run, tuple(pool[:cut]), run_level=False),
            estimate(run, tuple(pool[cut:])),
        )

    low, high = 0, len(cuts)
    while low < high:
        middle = (low + high) // 2
        first, second = costs(cuts[middle])
        if first < second:
            low = middle + 1
        else:
            high = middle
    fixed = STARTUP_SECONDS + run.outside
    best = None
    for cut in (cuts[i] for i in (low - 1, low) if 0 <= i < len(cuts)):
        estimates = costs(cut)
        if min(estimates) - fixed > fixed and (best is None or max(estimates) < max(best[1])):
            best = (cut, estimates)
    if best is None:
        return None
    cut, estimates = best
    return (
        replace(
            item, iterations=tuple(pool[:cut]), estimated_seconds=estimates[0], run_level=False
        ),
        replace(
            item,
            iterations=tuple(pool[cut:]),
            estimated_seconds=estimates[1],
            run_level=item.run_level,
        ),
    )
