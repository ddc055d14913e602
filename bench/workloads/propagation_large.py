"""The large-script timing of the propagation workload: flor_flows on one real-size case.

LARGE_CASE is timm's train.py (~1,450 lines: nested closures, AMP, distributed and
single-process branches); its median time per version, in-process after the cases ran (so
after libcst's first parse), is reported next to the ~500-line timing case.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from flor_flows.propagate import propagate

LARGE_CASE = "function__nested_backward_helper_large"  # a real-size script, timed on its own
LARGE_REPS = 11  # its repetitions (median reported)


def time_large(cases: list, verdict_of: Callable[[object], str]) -> dict | None:
    """flor_flows on the large case, LARGE_REPS times: median, min and max seconds per version;
    `verdict_of(case)` scores one more run of it."""
    large = next((c for c in cases if c.name == LARGE_CASE), None)
    if large is None:
        return None
    seconds = []
    for _ in range(LARGE_REPS):
        t0 = time.perf_counter()
        propagate(large.new, large.old, large.names)
        seconds.append(time.perf_counter() - t0)
    verdict = verdict_of(large)
    return {
        "case": large.name,
        "lines": [len(large.new.splitlines()), len(large.old.splitlines())],
        "reps": LARGE_REPS,
        "seconds": statistics.median(seconds),
        "min": min(seconds),
        "max": max(seconds),
        "verdict": verdict,
    }


def large_lines(large: dict | None) -> list[str]:
    """The large-script timing, for the markdown (run.py's table has the ~500-line row only)."""
    if large is None:
        return []
    return [
        f"### Time per version on a large real script (`{large['case']}`)",
        "",
        f"{large['lines'][0]:,} lines new, {large['lines'][1]:,} old (timm's train.py, nested "
        f"closures, AMP, distributed and single-process branches): median "
        f"**{large['seconds']:.3f} s** per version over {large['reps']} in-process calls "
        f"(min {large['min']:.3f} s, max {large['max']:.3f} s), after one uncounted warm-up; "
        f"goal <= 0.20 s; flor_flows: {large['verdict']}. FlorDB is not run on it.",
        "",
    ]
