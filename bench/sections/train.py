"""Record overhead on a small training script, against a do-nothing flor on the same venv."""

from __future__ import annotations

import statistics

from harness import (
    FLORDB,
    IMPLS,
    NOOP,
    OURS,
    Failed,
    Impl,
    Row,
    Runner,
    Section,
    Sizes,
    interleaved,
)


def m_train(runner: Runner, sz: Sizes) -> Section:
    contenders = (NOOP[FLORDB.key], FLORDB, NOOP[OURS.key], OURS)
    res = interleaved(
        contenders, sz.train_reps, lambda i: runner.run(i, "train_digits.py", argv=sz.train_argv)
    )

    def overhead(impl: Impl, key: str) -> float | Failed:
        mine, base = res[impl.key], res[NOOP[impl.key].key]
        for r in (mine, base):
            if isinstance(r, Failed):
                return r
        diffs = [a[key] - b[key] for a, b in zip(mine, base, strict=False)]
        return statistics.median(diffs) / statistics.median(b[key] for b in base) * 100

    def spread(impl: Impl) -> str:
        mine, base = res[impl.key], res[NOOP[impl.key].key]
        if isinstance(mine, Failed) or isinstance(base, Failed):
            return "failed"
        return " ".join(
            f"{a['wall_s'] - b['wall_s']:+.2f}" for a, b in zip(mine, base, strict=False)
        )

    def medians(key: str) -> str:
        return ", ".join(
            f"{c.key} {statistics.median(r[key] for r in res[c.key]):.2f} s"
            if not isinstance(res[c.key], Failed)
            else f"{c.key} failed"
            for c in contenders
        )

    return Section(
        f"Record overhead on `workloads/train_digits.py` "
        f"(median of {sz.train_reps} interleaved reps)",
        [
            Row(
                "wall-time overhead, until the script exits",
                "%",
                {i.key: overhead(i, "wall_s") for i in IMPLS},
                2,
                "~7 % (CPU)",
            ),
            Row(
                "wall-time overhead, until its helper processes exit too",
                "%",
                {i.key: overhead(i, "wall_all_s") for i in IMPLS},
                2,
            ),
            Row(
                "CPU-time overhead (user+sys, all processes)",
                "%",
                {i.key: overhead(i, "cpu_s") for i in IMPLS},
                None,
                "+0.48 s, 7 %",
            ),
        ],
        [
            "PyTorch MLP on `sklearn.datasets.load_digits`, `OMP_NUM_THREADS=1`, whole process "
            "timed (interpreter, imports, training, commit, exit). Baseline: the same script with "
            "`workloads/noop_flor.py` on the same venv's python. Overhead = median of per-rep "
            "(impl - baseline) differences / median baseline.",
            "The harness is a child subreaper: a helper process that outlives the script is "
            "adopted and waited for (second row) before the next run starts, and its CPU time is "
            "counted (third row).",
            "Median wall to script exit: " + medians("wall_s"),
            "Median wall to the last process's exit: " + medians("wall_all_s"),
            "Median CPU (user+sys): " + medians("cpu_s"),
            "Per-rep wall differences to the baseline, s (the spread is the noise): "
            + "; ".join(f"{i.key} {spread(i)}" for i in IMPLS),
        ],
    )
