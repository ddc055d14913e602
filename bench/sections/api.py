"""The costs of the flor API itself: `import`, `flor.log` inside `flor.loop`, `commit()`."""

from __future__ import annotations

from harness import IMPLS, Failed, Impl, Row, Runner, Section, Sizes, interleaved, median_of


def m_import(runner: Runner, sz: Sizes) -> Section:
    def once(impl: Impl) -> dict:
        return runner.run(impl, "import_cost.py")

    warm = interleaved(IMPLS, 1, once)  # compiles .pyc files; not counted
    res = interleaved(IMPLS, sz.import_reps, once)
    for k, v in warm.items():
        if isinstance(v, Failed):
            res[k] = v
    return Section(
        f"Import (median of {sz.import_reps} fresh processes, after one uncounted warm-up)",
        [
            Row("`import` time", "s", median_of(res, "import_s"), 0.3, "0.46-0.8 s"),
            Row("RSS added by `import`", "MB", median_of(res, "rss_added_mb"), 100, ""),
        ],
        [
            "Timed in-process around `importlib.import_module`; interpreter start-up excluded. "
            "What an implementation defers to first use is paid later (log/commit/dataframe "
            "tables, and the training overhead below).",
        ],
    )


def m_log(runner: Runner, sz: Sizes) -> Section:
    res = interleaved(IMPLS, sz.log_reps, lambda i: runner.run(i, "log_loop.py", {"n": sz.log_n}))
    return Section(
        f"`flor.log` inside `flor.loop` (N = {sz.log_n:,}, median of {sz.log_reps} processes)",
        [
            Row("`flor.log` cost per call", "us", median_of(res, "log_us"), 10, "130-180 us"),
            Row(
                "`flor.log` CPU per call (all threads and processes)",
                "us",
                median_of(res, "log_cpu_us"),
            ),
            Row(
                "bare `flor.loop` per iteration",
                "us",
                median_of(res, "bare_s", 1e6 / sz.log_n),
                None,
                "4-11 us",
            ),
        ],
        [
            "Cost per call = (time of the loop with `flor.log` - the same loop without it) / N, "
            "after a warm-up loop and a 2 s pause. The CPU row counts every thread and every helper "
            "process of the workload, so work handed to a background writer during the loop is "
            "included; what is still queued at the end is paid in `commit()` (next table).",
            "stdout goes to /dev/null and stderr to a file for both implementations, so FlorDB's "
            "per-value terminal echo (`tqdm.write`) is not paying for a terminal.",
        ],
    )


def m_commit(runner: Runner, sz: Sizes) -> Section:
    n = sz.commit_n
    res = interleaved(IMPLS, sz.commit_reps, lambda i: runner.run(i, "log_loop.py", {"n": n}))
    return Section(
        f"`commit()` and memory with {n:,} buffered values (median of {sz.commit_reps} processes)",
        [
            Row(f"`flor.commit()` of {n:,} values", "s", median_of(res, "commit_s"), 1, "6.4 s"),
            Row(
                f"RSS growth while logging {n:,} values (peak)",
                "MB",
                median_of(res, "rss_peak_growth_mb"),
                50,
                "~+100 MB",
            ),
            Row("RSS growth at the end of that loop", "MB", median_of(res, "rss_growth_mb")),
            Row(
                "peak RSS (VmHWM, process + live helpers)",
                "MB",
                median_of(res, "peak_rss_mb"),
                before="261 MB (a 1,000-value run)",
            ),
        ],
        [
            "Memory from /proc/<pid>/status, summed over the workload process and its live helper "
            "processes: growth = peak during the logging loop (VmHWM, reset through "
            "/proc/<pid>/clear_refs just before it; a sum of per-process peaks, so an upper bound) "
            "- VmRSS before it. The end-of-loop difference can be negative when memory taken "
            "before the loop is freed during it.",
        ],
    )
