"""Side-by-side benchmark of FlorDB 4.0.1 and flor_flows.

    /work/main/.venv/bin/python bench/run.py [--quick] [--only import,log,...,propagation]

Every measurement runs a script from bench/workloads/ in a fresh subprocess, inside a fresh scratch
git repo under bench/.work/, with FLOR_IMPL naming the module under test. FlorDB runs on the
interpreter of bench/.work/flordb-venv (made by bench/setup_flordb.sh), flor_flows on
/work/main/.venv. Writes bench/RESULTS.md (or bench/.work/RESULTS-quick.md with --quick); the
sections of metrics left out by --only are kept from the file's previous contents. Without the
FlorDB venv, only orchestration, propagation and replay run (the last two then measure flor_flows
alone).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import fcntl
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
WORKLOADS = BENCH / "workloads"
WORK = BENCH / ".work"
OURS_PY = BENCH.parent / ".venv" / "bin" / "python"
FLORDB_PY = WORK / "flordb-venv" / "bin" / "python"
EXAMPLES = BENCH.parent / "examples" / "digits"
PROPAGATION_CASES = BENCH.parent / "tests" / "data" / "propagation"
SECTION_MARK = "<!-- bench metric: {} -->"


@dataclass(frozen=True)
class Impl:
    key: str
    python: Path
    module: str


FLORDB = Impl("flordb", FLORDB_PY, "flordb")
OURS = Impl("flor_flows", OURS_PY, "flor_flows")
IMPLS = (FLORDB, OURS)
# The record-overhead baseline runs the same script with a do-nothing flor, on each venv's python.
NOOP = {
    FLORDB.key: Impl("noop@flordb-venv", FLORDB_PY, "noop_flor"),
    OURS.key: Impl("noop@main-venv", OURS_PY, "noop_flor"),
}


@dataclass(frozen=True)
class Sizes:
    import_reps: int = 7
    log_n: int = 100_000
    log_reps: int = 3
    commit_n: int = 200_000
    commit_reps: int = 3
    store_runs: int = 1000
    query_reps: int = 5
    train_reps: int = 5
    train_argv: tuple[str, ...] = ()
    orch_reps: int = 5
    orch_epochs: int = 2
    orch_ephemeral_reps: int = 3  # processes on an existing database, after the fresh one
    prop_reps: int = 5  # repetitions of the ~500-line propagation timing case
    # workloads/replay_train.py: epochs (about 2 minutes of training: the script's set-up,
    # imports and data, which every replay pays again, is ~6 s of it), training set repeats
    replay_epochs: int = 100
    replay_repeat: int = 12
    replay_reps: int = 3  # backfills per statement
    replay_flordb_reps: int = 1  # FlorDB replays per statement: each re-trains the whole run


FULL = Sizes()
QUICK = Sizes(
    3,
    10_000,
    1,
    20_000,
    1,
    50,
    3,
    2,
    ("--kwargs", "epochs=3"),
    orch_reps=2,
    orch_ephemeral_reps=1,
    prop_reps=1,
    replay_epochs=6,
    replay_repeat=3,
    replay_reps=1,
    replay_flordb_reps=1,
)


class Failed(Exception):
    """One implementation's measurement failed; shown in the table instead of a figure."""


@dataclass
class Row:
    measure: str
    unit: str
    values: dict[str, float | Failed]
    goal: float | None = None  # flor_flows must be <= goal
    before: str = ""  # FlorDB's figure from the earlier research


@dataclass
class Section:
    title: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    ours_only: bool = False  # a flor_flows-only table: no FlorDB columns
    extra: str = ""  # markdown after the notes (subsections start with "### ")


class Runner:
    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def new_repo(self, tag: str) -> Path:
        repo = self.root / "repos" / f"{tag}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(WORKLOADS, repo, ignore=shutil.ignore_patterns("__pycache__"))
        for cmd in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "config", "user.name", "bench"],
            ["git", "config", "user.email", "bench@localhost"],
            ["git", "add", "-A"],
            ["git", "commit", "-q", "-m", "initial"],
        ):
            subprocess.run(cmd, cwd=repo, check=True)
        return repo

    def run(
        self,
        impl: Impl,
        script: str,
        params: dict | None = None,
        repo: Path | None = None,
        argv: tuple[str, ...] = (),
        timeout: float = 3600,
    ) -> dict:
        """Run one workload in a fresh process; return its JSON plus wall_s and cpu_s."""
        self.count += 1
        repo = repo or self.new_repo(f"{impl.key}-{Path(script).stem}")
        tag = f"{self.count:03d}-{impl.key}-{Path(script).stem}"
        out, log = self.root / "out" / f"{tag}.json", self.root / "logs" / f"{tag}.log"
        env = {
            **os.environ,
            "FLOR_IMPL": impl.module,
            "BENCH_OUT": str(out),
            "BENCH_PARAMS": json.dumps(params or {}),
            "OMP_NUM_THREADS": "1",
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with log.open("w") as err:
            proc = subprocess.Popen(
                [str(impl.python), script, *argv],
                cwd=repo,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
            try:
                returncode = proc.wait(timeout)
                wall = time.perf_counter() - t0
                reap_all(t0 + timeout)
                wall_all = time.perf_counter() - t0
            except subprocess.TimeoutExpired as e:
                raise Failed(f"timed out after {timeout:.0f} s (log: {rel(log)})") from e
            finally:
                with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                    os.killpg(proc.pid, signal.SIGKILL)  # anything of the workload still alive
                    reap_all(time.perf_counter() + 10)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if returncode != 0:
            raise Failed(f"exit {returncode}: {last_error(log)} (log: {rel(log)})")
        result = json.loads(out.read_text()) if out.exists() else {}
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        result |= {"wall_s": wall, "wall_all_s": wall_all, "cpu_s": cpu}
        out.write_text(json.dumps(result))  # the raw figures of every run stay in .work/
        return result


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux), so a helper process that outlives a workload is
    waited for and its CPU time lands in RUSAGE_CHILDREN."""
    if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


def reap_all(deadline: float) -> None:
    """Wait for every remaining (adopted) child until the deadline."""
    while time.perf_counter() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.005)
    raise subprocess.TimeoutExpired("descendants", 0)


def rel(path: Path) -> str:
    return str(path.relative_to(BENCH.parent))


def last_error(log: Path) -> str:
    """The exception line of a traceback, else the last non-empty line (progress bars stripped)."""
    lines = [ln.split("\r")[-1].strip() for ln in log.read_text(errors="replace").splitlines()]
    lines = [ln for ln in lines if ln]
    for ln in reversed(lines):
        if ln[:1].isalpha() and ("Error" in ln or "Exception" in ln) and ":" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "no output"


def interleaved(impls: tuple[Impl, ...], reps: int, measure: Callable[[Impl], dict]) -> dict:
    """Run measure(impl) reps times, alternating the order; an impl stops at its first failure."""
    results: dict[str, list[dict] | Failed] = {impl.key: [] for impl in impls}
    for rep in range(reps):
        order = impls if rep % 2 == 0 else impls[::-1]
        for impl in order:
            if isinstance(results[impl.key], Failed):
                continue
            try:
                results[impl.key].append(measure(impl))
            except Failed as e:
                results[impl.key] = e
    return results


def median_of(results: dict, key: str, scale: float = 1.0) -> dict[str, float | Failed]:
    return {
        k: v if isinstance(v, Failed) else statistics.median(r[key] for r in v) * scale
        for k, v in results.items()
    }


# --------------------------------------------------------------------------------------------
# Metrics


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


def m_query(runner: Runner, sz: Sizes) -> Section:
    builds: dict[str, dict | Failed] = {}
    repos: dict[str, Path] = {}
    for impl in IMPLS:
        repos[impl.key] = runner.new_repo(f"{impl.key}-store")
        try:
            builds[impl.key] = runner.run(
                impl, "build_store.py", {"runs": sz.store_runs}, repo=repos[impl.key]
            )
        except Failed as e:
            builds[impl.key] = e
    res: dict[str, list[dict] | Failed] = {}
    for impl in IMPLS:
        b = builds[impl.key]
        try:
            if isinstance(b, Failed):
                raise Failed(f"store build {b}")
            res[impl.key] = [
                runner.run(impl, "query.py", {"reps": sz.query_reps}, repo=repos[impl.key])
            ]
        except Failed as e:
            res[impl.key] = e

    def q(label: str) -> dict:
        return {
            k: v if isinstance(v, Failed) else v[0][label]["median_s"] * 1e3 for k, v in res.items()
        }

    shapes = [
        f"{k}: "
        + ", ".join(f"{lbl} {tuple(v[0][lbl]['shape'])}" for lbl in ("one", "seven", "runs"))
        for k, v in res.items()
        if not isinstance(v, Failed)
    ]
    build_s = {k: v if isinstance(v, Failed) else v["build_s"] for k, v in builds.items()}
    runs = sz.store_runs
    return Section(
        f"`flor.dataframe` over {runs:,} runs x 624 logged values (median of {sz.query_reps})",
        [
            Row("`dataframe('loss')` (1 column)", "ms", q("one"), 150, "1.40 s"),
            Row("`dataframe(<7 names>)`", "ms", q("seven"), 500, "6.67 s"),
            Row("`dataframe()` (runs x args)", "ms", q("runs"), None, "133 ms"),
            Row(
                f"building the store ({runs:,} runs, one `commit()` each)",
                "s",
                build_s,
                before="(JSONL written directly + `unpack`: 8.5 s)",
            ),
        ],
        [
            "Both stores were built through the real API by the same script "
            "(`workloads/build_store.py`): per run 4 `flor.arg`s, `flor.loop('epoch', range(20))` "
            "> `flor.loop('step', range(9))`, 3 step metrics + 4 epoch metrics, then "
            f"`flor.commit()` (FlorDB: a git commit per run), {runs * 624:,} logged values in all.",
            "Queries timed in one fresh process per implementation after the build.",
            "Result shapes (rows, columns): " + "; ".join(shapes),
        ],
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


def m_orchestration(runner: Runner, sz: Sizes) -> Section:
    """The training flow vs its script run directly (FlorDB has no orchestrator)."""
    prefect = runner.root / "prefect"
    server = orchestration_run(runner, sz, "server", prefect / "server")
    ephemeral = [
        orchestration_run(runner, sz, "ephemeral", prefect / "ephemeral")
        for _ in range(1 + sz.orch_ephemeral_reps)
    ]
    fresh, again = ephemeral[:1], ephemeral[1:]

    def med(key: str) -> Callable[[dict], float]:
        return lambda r: statistics.median(r[key])

    def overhead(key: str) -> Callable[[dict], float]:
        return lambda r: statistics.median(r[key]) - statistics.median(r["direct_s"])

    def row(measure: str, value: float | Failed, goal: float | None = None) -> Row:
        return Row(measure, "s", {OURS.key: value}, goal)

    n, k = sz.orch_reps, sz.orch_ephemeral_reps
    heartbeat = "default" if isinstance(server, Failed) else f"{server['heartbeat_default']} s"
    return Section(
        f"Orchestration overhead of the training flow `flows/training.py` (median of {n} runs)",
        [
            row(
                f"`train(...)` flow run, default heartbeat ({heartbeat})",
                stat([server], med("flow_s")),
            ),
            row("`train(...)` flow run, heartbeats disabled", stat([server], med("flow_nohb_s"))),
            row("the same `python train.py` run directly", stat([server], med("direct_s"))),
            row("overhead per run, default heartbeat", stat([server], overhead("flow_s")), 1),
            row(
                "overhead per run, heartbeats disabled", stat([server], overhead("flow_nohb_s")), 1
            ),
            row(
                "`prefect server start` until `/api/health` is true",
                stat([server], lambda r: r["server_start_s"]),
            ),
            row(
                "ephemeral: first `train(...)` of a process, fresh PREFECT_HOME",
                stat(fresh, lambda r: r["first_s"]),
            ),
            row(
                f"ephemeral: first `train(...)` of a process, existing database (median of {k})",
                stat(again, lambda r: r["first_s"]),
            ),
            row(
                f"ephemeral: second `train(...)` in the same process (median of {k + 1})",
                stat(ephemeral, lambda r: r["second_s"]),
            ),
        ],
        orchestration_notes(sz, server, ephemeral),
        ours_only=True,
    )


def orchestration_run(runner: Runner, sz: Sizes, mode: str, home: Path) -> dict | Failed:
    """One process of workloads/orchestration.py; PREFECT_HOME `home` (kept between calls)."""
    params = {
        "mode": mode,
        "reps": sz.orch_reps,
        "epochs": sz.orch_epochs,
        "examples": str(EXAMPLES),
        "prefect_home": str(home),
    }
    try:
        return runner.run(OURS, "orchestration.py", params)
    except Failed as e:
        return e


def stat(results: list[dict | Failed], value: Callable[[dict], float]) -> float | Failed:
    """The median of value(result) over the results; the first failure if any failed."""
    for r in results:
        if isinstance(r, Failed):
            return r
    return statistics.median(value(r) for r in results)


def orchestration_notes(
    sz: Sizes, server: dict | Failed, ephemeral: list[dict | Failed]
) -> list[str]:
    notes = [
        "FlorDB has no orchestrator: flor_flows only. The project is set up as a user has it: a "
        "git repo with `examples/digits/versions/v1.py` committed as `train.py`, a `.gitignore` "
        f"of `data/` and `.flor-flows/`, and {sz.orch_reps + 1} batches from "
        "`examples/digits/batches.py`. Every run trains on a batch with "
        f"epochs={sz.orch_epochs} and `warm_start=False`.",
        "Server: one client process (`workloads/orchestration.py`) against "
        "`prefect server start --host 127.0.0.1 --port <free>` (SQLite, PREFECT_HOME under "
        "`bench/.work/`, `PREFECT_SERVER_ANALYTICS_ENABLED=false`) runs, after one uncounted "
        f"warm-up flow run and direct run, {sz.orch_reps} rounds of three on one batch, in "
        "alternating order: `train(TrainingRequest(...))` with Prefect's default settings; the "
        "same inside `temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})`; "
        f"and `python train.py --data batch=<batch> --kwargs epochs={sz.orch_epochs}` as a "
        "child process (same interpreter, project and environment minus PREFECT_*). Each is "
        "timed as wall clock around the call. Overhead = median(flow runs) - median(direct runs).",
        "Ephemeral: fresh processes with PREFECT_API_URL unset, so the first flow run starts "
        "Prefect's temporary server; the first process on an empty PREFECT_HOME (database "
        f"migrations included), then {sz.orch_ephemeral_reps} on the same PREFECT_HOME. "
        "Default heartbeat.",
    ]
    if isinstance(server, Failed):
        return notes
    walls = {
        "default heartbeat": "flow_s",
        "heartbeats disabled": "flow_nohb_s",
        "direct": "direct_s",
    }
    notes.append(
        "Per-round wall times, s: "
        + "; ".join(
            f"{label} " + " ".join(f"{t:.2f}" for t in server[k]) for label, k in walls.items()
        )
        + ". With the default heartbeat the engine joins a thread that sleeps in 1 s steps, so "
        "a flow run ends on the next whole second after its heartbeat started: 0-1 s, "
        "depending on the run's length."
    )
    for label, key in list(walls.items())[:2]:
        diffs = " ".join(
            f"{f - d:+.2f}" for f, d in zip(server[key], server["direct_s"], strict=True)
        )
        notes.append(f"Per-round flow - direct, s ({label}): {diffs}")
    notes.append(task_breakdown(server))
    imports = [server["import_s"], *(r["import_s"] for r in ephemeral if not isinstance(r, Failed))]
    notes.append(
        f"Not in the figures above: `import flows.training` (prefect) in the client, "
        f"{statistics.median(imports):.2f} s (median of {len(imports)} processes); the uncounted "
        f"warm-up flow run took {server['warm_up_flow_s']:.2f} s, the warm-up direct run "
        f"{server['warm_up_direct_s']:.2f} s."
    )
    return notes


def task_breakdown(server: dict) -> str:
    """Medians of task-run and flow-run durations as the server recorded them."""
    direct = statistics.median(server["direct_s"])
    figures: dict[str, list[float]] = {}
    for key in ("", "_nohb"):
        tasks = {name: statistics.median(s) for name, s in server[f"tasks{key}"].items()}
        flow_run = statistics.median(server[f"flow_run{key}_s"])
        for label, seconds in (
            *((f"`{name}`", s) for name, s in tasks.items()),
            ("flow run start to end", flow_run),
            (
                "wall - flow run start to end (creating the run, final state, heartbeat join)",
                statistics.median(
                    w - f
                    for w, f in zip(server[f"flow{key}_s"], server[f"flow_run{key}_s"], strict=True)
                ),
            ),
            (
                "`run_script` - direct run (the script as the flow's child)",
                tasks["run_script"] - direct,
            ),
        ):
            figures.setdefault(label, []).append(seconds)
    return (
        "Breakdown, median s (default heartbeat / heartbeats disabled), from the task and flow "
        "run start and end times on the server: "
        + "; ".join(f"{k} " + " / ".join(f"{v:.2f}" for v in vals) for k, vals in figures.items())
    )


def m_propagation(runner: Runner, sz: Sizes) -> Section:
    """Propagation of flor.log statements into old versions: accuracy and time per version."""
    have_flordb = FLORDB_PY.exists()
    params = {
        "cases": str(PROPAGATION_CASES),
        "reps": sz.prop_reps,
        "flordb_python": str(FLORDB_PY) if have_flordb else None,
    }
    title = f"Propagating `flor.log` statements into old versions (`{rel(PROPAGATION_CASES)}`)"
    try:
        res = runner.run(OURS, "propagation.py", params)
    except Failed as e:
        return Section(title, [Row("the propagation workload", "", {OURS.key: e})])
    theirs: dict | Failed | None = res["totals"].get(FLORDB.key)
    if "flordb_failed" in res:
        theirs = Failed(res["flordb_failed"])
    return Section(
        title,
        propagation_rows(res, theirs),
        propagation_notes(res, have_flordb),
        extra=res["markdown"],
    )


def propagation_rows(res: dict, theirs: dict | Failed | None) -> list[Row]:
    """The headline rows; FlorDB's cells stay empty when it was skipped."""
    ours = res["totals"][OURS.key]

    def row(measure: str, key: str, unit: str = "", goal: float | None = None) -> Row:
        values: dict[str, float | Failed] = {OURS.key: ours[key]}
        if theirs is not None:
            values[FLORDB.key] = theirs if isinstance(theirs, Failed) else theirs[key]
        return Row(measure, unit, values, goal)

    timed: dict[str, float | Failed] = {OURS.key: res["timing_flor_flows"]["seconds"]}
    if isinstance(theirs, Failed):
        timed[FLORDB.key] = theirs
    elif "timing_flordb" in res:
        timed[FLORDB.key] = res["timing_flordb"]["seconds"]
    lines_new, lines_old = res["timing_lines"]
    return [
        row(f"correct (of {ours['cases']} cases)", "correct"),
        row("silent misplacements", "misplaced", goal=0),
        row("refusals where an insertion was expected", "refused"),
        row("refuse cases with neither a change nor a refusal", "missed"),
        row(
            f"correct insertions byte for byte (flor_flows: of {ours['correct_insertions']})",
            "formatting",
        ),
        row("time per version, median over the cases", "median_s", "s"),
        row("time per version, max over the cases", "max_s", "s"),
        Row(
            f"time per version, ~500-line script ({lines_new} lines new, {lines_old} old)",
            "s",
            timed,
            0.2,
            "2-5 s/version (research harness, real files of 139-530 lines)",
        ),
    ]


def propagation_notes(res: dict, have_flordb: bool) -> list[str]:
    notes = [
        "Cases: one folder each, new.py, old.py, case.toml and expected.py (old.py with the "
        "statements inserted) or refuse.txt (a substring the refusal must contain). Targets: the "
        '`flor.log("name", ...)` statements of new.py whose name old.py does not log, or exactly '
        "the `names` of case.toml (the `present` cases name statements old.py has: no-ops).",
        "flor_flows: `propagate(new, old, names)` once per case. FlorDB: `flordb.hlast.backprop("
        "lineno, new, target, out)` once per target statement in line order, each output the "
        "next call's target; for a target old.py has already, its `FileExistsError` (caught "
        "inside backprop, which then writes nothing) is the correct no-op.",
        "correct: the AST of expected.py and no refusal, or in a refuse case a refusal (flor_flows: "
        "reason containing refuse.txt; FlorDB: any exception). Silent misplacement: no refusal and "
        "a different AST, or a changed file in a refuse case. Byte for byte: of the correct "
        "insertions (no-op cases excluded). Time: per version, all its statements; flor_flows "
        "in-process after one uncounted warm-up call, FlorDB in one process on its venv after one "
        "uncounted warm-up case; interpreter start-up and imports excluded for both.",
        f"Timing case: `{res['timing_case']}`, the longest insertion case (outside `newblock`, "
        "where FlorDB's time would be that of a failure) with distinct "
        "module-level functions of the other cases' old versions (those without `flor`, renamed) "
        f"inserted after the imports of new, old and expected; median of its repetitions. "
        f"flor_flows: {res['timing_flor_flows']['verdict']}"
        + (f"; FlorDB: {res['timing_flordb']['verdict']}" if "timing_flordb" in res else "")
        + ".",
    ]
    if not have_flordb:
        notes.append(
            f"**FlorDB side skipped**: `{rel(FLORDB_PY)}` is missing (`bench/setup_flordb.sh` "
            "makes it); its cells are empty."
        )
    if res["skipped"]:
        notes.append("Incomplete case folders skipped: " + ", ".join(res["skipped"]))
    return notes


REPLAY_KINDS = {  # statement kind -> what the table calls it
    "epoch": "epoch-level `w_norm` (end of the epoch body), all epochs",
    "step": "step-level `grad_norm` (every step), all epochs",
    "run": "run-level `final_loss` (after the loop)",
}


def m_replay(runner: Runner, sz: Sizes) -> Section:
    """Hindsight statements over one recorded run: a backfill vs FlorDB's replay vs re-training."""
    sizes = {"epochs": sz.replay_epochs, "repeat": sz.replay_repeat}
    common = {"sizes": sizes, "reps": sz.replay_reps}
    ours: dict | Failed
    theirs: dict | Failed | None = None
    try:
        ours = runner.run(
            OURS,
            "replay.py",
            common | {"step_parallel": 2, "prefect_home": str(runner.root / "prefect" / "replay")},
            timeout=7200,
        )
    except Failed as e:
        ours = e
    if FLORDB_PY.exists():
        try:
            theirs = runner.run(
                FLORDB, "replay_flordb.py", common | {"reps": sz.replay_flordb_reps}, timeout=7200
            )
        except Failed as e:
            theirs = e
    title = (
        f"Hindsight replay of one recorded run: `workloads/replay_train.py`, "
        f"{sz.replay_epochs} epochs (ours: median of {sz.replay_reps}; FlorDB: "
        f"{sz.replay_flordb_reps} rep)"
    )
    return Section(
        title,
        replay_rows(ours, theirs),
        replay_notes(ours, theirs, sz),
        extra=replay_extra(ours, theirs),
    )


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _ok(results: list[dict]) -> list[dict]:
    """The results of one kind of replay; Failed with the first error if any rep failed."""
    for r in results:
        if "error" in r:
            raise Failed(r["error"])
    return results


def _setup(result: dict) -> float:
    """Seconds from launching the forward run to its epoch loop (the script's set-up)."""
    return result["original"]["processes"][0]["setup_s"]


def _estimate_errors(ours: dict) -> list[dict]:
    """Per planned item of the direct backfills: estimated vs actual child seconds."""
    rows = []
    for kind in REPLAY_KINDS:
        for rep, r in enumerate(ours["runs"][f"direct_{kind}"]):
            for item in r.get("items", []):
                error = (item["estimated_s"] - item["child_s"]) / item["child_s"] * 100
                rows.append({"kind": kind, "rep": rep, **item, "error_pct": error})
    return rows


def replay_rows(ours: dict | Failed, theirs: dict | Failed | None) -> list[Row]:
    def both(fn: Callable[[dict], float], ours_fn: Callable[[dict], float] | None = None) -> dict:
        values: dict[str, float | Failed] = {}
        for key, res, f in ((FLORDB.key, theirs, fn), (OURS.key, ours, ours_fn or fn)):
            if res is None:
                continue
            if isinstance(res, Failed):
                values[key] = res
                continue
            values[key] = _safe(f, res)
        return values

    def theirs_wall(kind: str) -> Callable[[dict], float]:
        return lambda r: _med([x["wall_s"] for x in _ok(r["runs"][kind])])

    def ours_wall(kind: str) -> Callable[[dict], float]:
        return lambda r: _med([x["wall_s"] for x in _ok(r["runs"][f"flow_{kind}"])])

    def pct(wall: Callable[[dict], float]) -> Callable[[dict], float]:
        return lambda r: wall(r) / r["original"]["wall_s"] * 100

    def overhead(kind: str) -> Callable[[dict], float]:
        def f(r: dict) -> float:
            pairs = zip(
                _ok(r["runs"][f"flow_{kind}"]), _ok(r["runs"][f"direct_{kind}"]), strict=True
            )
            return _med([(a["wall_s"] - b["wall_s"]) / len(b["items"]) for a, b in pairs])

        return f

    def unreproduced(r: dict) -> int:
        fid = r["fidelity"]
        cells = (
            fid.values() if "flow_epoch" not in fid else [fid[f"flow_{k}"] for k in REPLAY_KINDS]
        )
        return sum(c["differ"] + c["scratch"] + c["replayed"] - 2 * c["matched"] for c in cells)

    run_goal = None if isinstance(ours, Failed) else _setup(ours) + 1
    rows = [
        Row("original run: forward, recorded (ours: checkpoint every epoch)", "s",
            both(lambda r: r["original"]["wall_s"])),
        Row("its set-up: launch to the first epoch", "s", both(_setup)),
        Row("the new script re-run from scratch, recorded", "s",
            both(lambda r: _med([x["wall_s"] for x in r["scratch"]]))),
    ]  # fmt: skip
    for kind, label in REPLAY_KINDS.items():
        ours_kind = ours_wall(kind)
        suffix = " (ours: max_parallel=2)" if kind == "step" else ""
        rows.append(
            Row(
                label + suffix,
                "s",
                both(theirs_wall(kind), ours_kind),
                run_goal if kind == "run" else None,
                "~ the whole run (recomputed from epoch 0; flordb.md 10.4)",
            )
        )
        goal = {"epoch": 10, "step": 60}.get(kind)
        rows.append(
            Row(
                "... as % of the original run",
                "%",
                both(pct(theirs_wall(kind)), pct(ours_kind)),
                goal,
            )
        )
    for kind in REPLAY_KINDS:
        rows.append(
            Row(
                f"orchestration overhead per replay task, {kind}-level (flow - direct)",
                "s",
                {OURS.key: ours if isinstance(ours, Failed) else _safe(overhead(kind), ours)},
            )
        )
    rows.append(
        Row(
            "plan estimate vs actual replay, worst item: abs(est - actual) / actual",
            "%",
            {OURS.key: ours if isinstance(ours, Failed) else _safe(
                lambda r: max(abs(e["error_pct"]) for e in _estimate_errors(r)), ours)},
            25,
        )
    )  # fmt: skip
    rows.append(
        Row(
            "replayed values not equal to the from-scratch run's (all 3 statements)",
            "",
            both(unreproduced),
            0,
        )
    )
    return rows


def _safe(fn: Callable[[dict], float], res: dict) -> float | Failed:
    try:
        return fn(res)
    except Failed as e:
        return e
    except (KeyError, IndexError, ZeroDivisionError, ValueError, statistics.StatisticsError) as e:
        return Failed(f"{type(e).__name__}: {e}")


def _compact(iterations: object) -> str:
    if not isinstance(iterations, list):
        return str(iterations)
    if not iterations:
        return "none"
    parts, start = [], iterations[0]
    for a, b in zip(iterations, [*iterations[1:], None], strict=True):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def _phase(r: dict, key: str) -> str:
    return " + ".join(f"{p[key]:.1f}" for p in r.get("processes", []) if key in p) or "-"


def replay_notes(ours: dict | Failed, theirs: dict | Failed | None, sz: Sizes) -> list[str]:
    notes = [
        "The script: a PyTorch MLP (64-512-512-10) on scikit-learn's digits, the training set "
        f"repeated {sz.replay_repeat} times with noise, batch 32, `torch.set_num_threads(1)`; "
        "`flor.loop('epoch')` under `flor.checkpointing(model, optimizer)` holds "
        "`flor.loop('step')` (training steps, `flor.log('loss')`) and a test-set evaluation "
        "(`flor.log('acc')`). Each implementation records it once in a git repo of its own "
        "(train.py importing it; flor_flows with `FLOR_FLOWS_CHECKPOINT_POLICY=every`). The new "
        "version, written into the working tree, adds `w_norm` (weight norm, after the "
        "evaluation), `grad_norm` (after `loss.backward()`) and `final_loss` (test loss, after "
        "the `with` block); every replay computes one of them over that run.",
        "flor_flows: `flows.backfill.backfill(BackfillRequest(...))` in Prefect's ephemeral mode "
        "(PREFECT_API_URL unset, the temporary server started by an uncounted dry-run backfill "
        "first), heartbeats off; `max_parallel=1` for the epoch- and run-level statements, 2 for "
        "the step-level one; the run-level one with `iterations=['epoch=none']`. Timed: the "
        "whole `backfill(...)` call (plan, propagate, replay, artifacts). FlorDB: `python -m "
        "flordb replay --apply NAME` with `y` on stdin, the whole command timed (its import, "
        "schedule, git commit and checkout, `backprop`, the replayed child, the result "
        "dataframe); step-level with `--iter epoch=all --iter step=all` so that it logs every "
        "step (its default logs only each epoch's last one, at the same cost).",
        "From scratch: the new script recorded in a fresh project (once per rep). The % rows "
        "divide by each implementation's own original run. Set-up: from launching the "
        "original run to the line before its epoch loop (`_mark` in the script; interpreter, "
        "imports of torch and sklearn and of the implementation, data, model). Run-level goal: "
        "flor_flows' set-up + 1 s.",
        "Orchestration overhead per replay task = median over reps of (the flow's wall - the "
        "same backfill done directly) / planned items, where direct is `resolve(request)`, "
        "`engine.prepare_version` per code version and `engine.replay` per item "
        "(`max_parallel` threads), in the same process, on names of its own (no Prefect).",
        "Estimates: `Item.estimated_seconds` of each item the direct backfills planned vs the "
        "seconds of that item's replay child (`launch.Outcome.seconds`).",
        "Values: every value of the rep-0 backfill (flow) and FlorDB replay compared with the "
        "from-scratch run's values at the same (epoch, step); not equal = different (beyond "
        "1e-9 relative) + missing on either side.",
    ]
    for key, res in ((OURS.key, ours), (FLORDB.key, theirs)):
        if isinstance(res, Failed) or res is None:
            continue
        fid = res["fidelity"]
        notes.append(
            f"{key} values vs from scratch: "
            + "; ".join(
                f"{k}: {c['matched']} of {c['scratch']} matched ({c['replayed']} replayed), "
                f"{c['differ']} differ, max |d| {c['max_abs_diff']}"
                for k, c in fid.items()
                if key == FLORDB.key or k.startswith("flow_")
            )
        )
    if isinstance(ours, dict):
        o = ours["original"]["processes"][0]
        notes.append(
            f"flor_flows original run: set-up {o['setup_s']:.2f} s (from the script's first "
            f"line: {o['imports_s']:.2f} s), epoch loop {o.get('loop_s', 0):.2f} s, after it "
            f"{o.get('tail_s', 0):.2f} s; uncounted first (dry-run) backfill of the process, "
            f"starting the ephemeral API: {ours['warm']['first_flow_s']:.1f} s."
        )
        notes.append(prefect_breakdown(ours))
    if isinstance(theirs, dict):
        o = theirs["original"]["processes"][0]
        notes.append(
            f"FlorDB original run: set-up {o['setup_s']:.2f} s (from the script's first line: "
            f"{o['imports_s']:.2f} s), epoch loop {o.get('loop_s', 0):.2f} s."
        )
    if theirs is None:
        notes.append(
            f"**FlorDB side skipped**: `{rel(FLORDB_PY)}` is missing (`bench/setup_flordb.sh` "
            "makes it)."
        )
    return notes


def prefect_breakdown(ours: dict) -> str:
    """Where a flow's extra time goes: medians of Prefect's task-run durations vs the
    replay children (the store's replay records) and the flow run vs the call."""
    parts = []
    for kind in REPLAY_KINDS:
        flows = [r for r in ours["runs"][f"flow_{kind}"] if "tasks" in r]
        if not flows:
            continue
        task = [sum(r["tasks"].get("replay", [])) for r in flows]
        child = [sum(r.get("replays_s", [])) for r in flows]
        other = {
            name: _med([sum(r["tasks"].get(name, [0])) for r in flows])
            for name in ("plan_request", "propagate")
        }
        outside = [r["wall_s"] - r["flow_run_s"] for r in flows if r.get("flow_run_s")]
        parts.append(
            f"{kind}: `replay` task(s) {_med(task):.2f} s vs its replay child(ren) "
            f"{_med(child):.2f} s (sums over segments), `plan_request` "
            f"{other['plan_request']:.2f} s, `propagate` {other['propagate']:.2f} s, call - "
            f"flow run {_med(outside) if outside else float('nan'):.2f} s"
        )
    return "Prefect's view, medians: " + "; ".join(parts)


def replay_extra(ours: dict | Failed, theirs: dict | Failed | None) -> str:
    lines = []
    if isinstance(ours, dict):
        lines += [
            "### flor_flows: every backfill (s; child phases from the script's marks, one "
            "figure per replay process)",
            "",
            "| statement | path | rep | wall | plan | propagate | replay task(s) | replay "
            "child(ren) | estimated | child set-up | child epoch loop |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind in REPLAY_KINDS:
            for path in ("flow", "direct"):
                for rep, r in enumerate(ours["runs"][f"{path}_{kind}"]):
                    if "error" in r:
                        lines.append(f"| {kind} | {path} | {rep} | failed: {r['error']} |")
                        continue
                    if path == "flow":
                        plan = sum(r["tasks"].get("plan_request", [0]))
                        prop = sum(r["tasks"].get("propagate", [0]))
                        task = " + ".join(f"{t:.2f}" for t in r["tasks"].get("replay", []))
                        child = " + ".join(f"{t:.2f}" for t in r.get("replays_s", []))
                        est = ""
                    else:
                        plan, prop, task = r["plan_s"], r["propagate_s"], "-"
                        child = " + ".join(f"{i['child_s']:.2f}" for i in r["items"])
                        est = " + ".join(f"{i['estimated_s']:.2f}" for i in r["items"])
                    lines.append(
                        f"| {kind} | {path} | {rep} | {r['wall_s']:.2f} | {plan:.2f} | "
                        f"{prop:.2f} | {task} | {child} | {est} | {_phase(r, 'imports_s')} | "
                        f"{_phase(r, 'loop_s')} |"
                    )
        lines += [
            "",
            "### flor_flows: plan estimates per item (direct backfills)",
            "",
            "| statement | rep | iterations | run level | estimated s | actual s | error |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in _estimate_errors(ours):
            lines.append(
                f"| {e['kind']} | {e['rep']} | {_compact(e['iterations'])} | "
                f"{'yes' if e.get('run_level', True) else 'no'} | {e['estimated_s']:.2f} | "
                f"{e['child_s']:.2f} | {e['error_pct']:+.0f} % |"
            )
    if isinstance(theirs, dict):
        lines += [
            "",
            "### FlorDB 4.0.1: every replay (s)",
            "",
            "| statement | rep | wall (`python -m flordb replay`) | child set-up | child "
            "epoch loop |",
            "|---|---|---|---|---|",
        ]
        for kind in REPLAY_KINDS:
            for rep, r in enumerate(theirs["runs"][kind]):
                if "error" in r:
                    lines.append(f"| {kind} | {rep} | failed: {r['error']} |")
                    continue
                lines.append(
                    f"| {kind} | {rep} | {r['wall_s']:.2f} | {_phase(r, 'imports_s')} | "
                    f"{_phase(r, 'loop_s')} |"
                )
    return "\n".join(lines) + "\n" if lines else ""


def m_real_replay(runner: Runner, sz: Sizes) -> Section:
    """Issue 13's table on a real-style script; the logic is in workloads/real_report.py."""
    sys.path.insert(0, str(WORKLOADS))
    import real_report

    theirs = FLORDB if FLORDB_PY.exists() else None
    out = real_report.measure(runner, OURS, theirs, sz is QUICK, Failed)
    rows = [Row(m, unit, values, goal) for m, unit, values, goal in out["rows"]]
    return Section(out["title"], rows, out["notes"], extra=out["extra"])


METRICS = {
    "import": m_import,
    "log": m_log,
    "commit": m_commit,
    "query": m_query,
    "train": m_train,
    "orchestration": m_orchestration,
    "propagation": m_propagation,
    "replay": m_replay,
    "real_replay": m_real_replay,
}
# metrics that run without the FlorDB venv
FLORDB_OPTIONAL = {"orchestration", "propagation", "replay", "real_replay"}


# --------------------------------------------------------------------------------------------
# Report


def fmt(v: float | Failed | None, unit: str) -> str:
    if v is None:
        return ""
    if isinstance(v, Failed):
        return f"failed: {v}"
    if isinstance(v, int):
        return f"{v:,} {unit}".rstrip()
    digits = 2 if abs(v) < 10 else 1 if abs(v) < 100 else 0
    return f"{v:,.{digits}f} {unit}"


def render_row(row: Row, ours_only: bool) -> str:
    theirs, ours = row.values.get(FLORDB.key), row.values.get(OURS.key)
    ratio = ""
    if isinstance(theirs, float) and isinstance(ours, float) and ours > 0 and theirs > 0:
        ratio = f"{theirs / ours:,.{1 if theirs / ours < 100 else 0}f}x"
    goal, met = "", ""
    if row.goal is not None:
        goal = f"<= {fmt(row.goal, row.unit)}"
        met = (
            "MISSED (failed)"
            if isinstance(ours, Failed)
            else "**met**"
            if ours <= row.goal
            else "MISSED"
        )
    cells = [row.measure, fmt(theirs, row.unit), fmt(ours, row.unit), ratio, goal, met, row.before]
    if ours_only:
        cells = [row.measure, fmt(ours, row.unit), goal, met]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def source_state() -> str:
    """Git HEAD of the project plus hashes of flor_flows/ and flows/ (the tree may be uncommitted)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH.parent, capture_output=True, text=True
    ).stdout.strip()
    digests = []
    for package in ("flor_flows", "flows"):  # flows/: the backfill flow the replay metric runs
        h = hashlib.sha256()
        for f in sorted((BENCH.parent / package).rglob("*.py")):
            h.update(f"{f.relative_to(BENCH.parent)}\0".encode() + f.read_bytes())
        digests.append(f"sha256({package}/**/*.py) {h.hexdigest()[:12]}")
    return f"git HEAD {head or '(no commit yet)'}, {', '.join(digests)}"


def versions(python: Path) -> dict:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "pk = ['flordb', 'flor-flows', 'prefect', 'pandas', 'numpy', 'GitPython', 'SQLAlchemy',"
        " 'torch', 'scikit-learn', 'tqdm']\n"
        "v = {}\n"
        "for p in pk:\n"
        "    try: v[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps({'python': platform.python_version(), 'packages': v}))"
    )
    try:
        out = subprocess.run(
            [str(python), "-c", code], cwd=WORK, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
        return {"python": f"unavailable ({e})", "packages": {}}


def render_section(name: str, section: Section, measured: str) -> str:
    """A section of RESULTS.md; SECTION_MARK names its metric for later partial runs."""
    header = (
        ["| measure | flor_flows | goal | met? |", "|---|---|---|---|"]
        if section.ours_only
        else [
            "| measure | FlorDB 4.0.1 | flor_flows | FlorDB / ours | goal | met? | FlorDB before |",
            "|---|---|---|---|---|---|---|",
        ]
    )
    lines = [f"## {section.title}", SECTION_MARK.format(name), "", *header]
    lines += [render_row(r, section.ours_only) for r in section.rows]
    lines += ["", *(f"- {n}" for n in section.notes), f"- Measured {measured}"]
    if section.extra:
        lines += ["", section.extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


def kept_sections(dest: Path, measured: list[str]) -> dict[str, str]:
    """The sections of the previous `dest` whose metrics this run does not measure."""
    if not dest.exists():
        return {}
    kept = {}
    for block in re.split(r"(?m)^(?=## )", dest.read_text())[1:]:
        mark = re.search(SECTION_MARK.format(r"(\w+)"), block)
        if mark and mark[1] in METRICS and mark[1] not in measured:
            kept[mark[1]] = block.rstrip("\n") + "\n"
    return kept


def report(
    sections: dict[str, Section],
    kept: dict[str, str],
    argv: list[str],
    started: datetime.datetime,
    took: float,
    quick: bool,
    sources: tuple[str, str],
) -> str:
    load = os.getloadavg()
    changed = " **(flor_flows changed during the run: figures may mix versions)**"
    command = f"`/work/main/.venv/bin/python bench/run.py{''.join(' ' + a for a in argv)}`"
    lines = [
        "# FlorDB 4.0.1 vs flor_flows: side-by-side benchmark"
        + (" (QUICK smoke run)" if quick else ""),
        "",
        f"- Command: {command} (from /work/main; `bench/setup_flordb.sh` makes the FlorDB venv first)",
        f"- Date: {started:%Y-%m-%d %H:%M} (local), {took / 60:.1f} min in all",
        f"- Machine: {platform.machine()}, nproc {os.cpu_count()}, {platform.platform()}, "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ]
    for impl in IMPLS:
        v = versions(impl.python)
        pk = ", ".join(f"{k} {val}" for k, val in v["packages"].items())
        lines.append(f"- {impl.key}: `{rel(impl.python)}`, Python {v['python']}; {pk}")
    lines += [
        f"- flor_flows source at the start: {sources[0]}"
        + (f"; at the end: {sources[1]}{changed}" if sources[1] != sources[0] else " (unchanged)"),
        "- Every figure comes from fresh subprocesses, each in its own scratch git repo under "
        "`bench/.work/` (git init + an initial commit). Scripts: `bench/workloads/`.",
        "- Columns: FlorDB / flor_flows figures; *FlorDB / ours* is the ratio (higher = ours "
        "cheaper); the goal applies to flor_flows; *FlorDB before* is the earlier research "
        "measurement (`shared/research/flordb.md`).",
    ]
    if kept:
        lines.append(
            f"- Kept from earlier runs, not measured by this command: {', '.join(kept)}. "
            "Each section's last line says when, by which command and on which source it was "
            "measured."
        )
    measured = f"{started:%Y-%m-%d %H:%M} by {command}; flor_flows source: {sources[0]}"
    blocks = [
        render_section(name, sections[name], measured) if name in sections else kept[name]
        for name in METRICS
        if name in sections or name in kept
    ]
    return "\n".join(["\n".join(lines) + "\n", *blocks])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, writes .work/RESULTS-quick.md"
    )
    ap.add_argument("--only", default=",".join(METRICS), help="comma list of " + ",".join(METRICS))
    args = ap.parse_args()
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    if unknown := set(only) - set(METRICS):
        ap.error(f"unknown metrics: {sorted(unknown)}")

    WORK.mkdir(exist_ok=True)
    lock = (WORK / "run.lock").open("w")  # held until exit: runs would disturb each other
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("[bench] another bench/run.py is running; waiting for it to finish", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    setup = subprocess.run(["bash", str(BENCH / "setup_flordb.sh")])
    if setup.returncode != 0:
        if set(only) - FLORDB_OPTIONAL:
            sys.exit(f"bench/setup_flordb.sh failed (exit {setup.returncode})")
        print("[bench] no FlorDB venv: its side of the comparison is skipped", flush=True)
    sz = QUICK if args.quick else FULL
    root = WORK / ("run-quick" if args.quick else "run-full")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("repos", "out", "logs"):
        (root / sub).mkdir(parents=True)
    become_subreaper()
    runner = Runner(root)

    started, t0, source0 = datetime.datetime.now(), time.perf_counter(), source_state()
    sections = {}
    for name in only:
        print(f"[bench] {name} ...", flush=True)
        t = time.perf_counter()
        sections[name] = METRICS[name](runner, sz)
        for row in sections[name].rows:
            print(
                f"  {row.measure}: "
                + "; ".join(f"{k}={fmt(v, row.unit)}" for k, v in row.values.items()),
                flush=True,
            )
        if sections[name].extra:
            print(sections[name].extra, flush=True)
        print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)

    took = time.perf_counter() - t0
    dest = WORK / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md"
    if only == ["real_replay"]:  # its section is appended to RESULTS.md by hand (issue 13)
        dest = WORK / ("RESULTS-real_replay-quick.md" if args.quick else "RESULTS-real_replay.md")
    kept = kept_sections(dest, only)
    sources = (source0, source_state())
    dest.write_text(report(sections, kept, sys.argv[1:], started, took, args.quick, sources))
    print(f"[bench] wrote {rel(dest)}")


if __name__ == "__main__":
    main()
