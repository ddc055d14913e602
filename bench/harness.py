"""The harness of bench/run.py: implementations, sizes, results and the runner.

Every measurement runs a script from bench/workloads/ in a fresh subprocess (`Runner.run`),
inside a fresh scratch git repo under bench/.work/, with FLOR_IMPL naming the module under
test. Paths are derived from this file: bench/ is its folder, the project its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
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
