"""Shared by workloads/replay.py (flor_flows) and workloads/replay_flordb.py (FlorDB 4.0.1).

Both set up the same project: a git repo whose train.py is workloads/replay_train.py with the
import line naming the implementation, record it once, then write the new version of the
script (the hindsight statements added) into the working tree and time replays of it. No
flor implementation is imported here. `FlorDBBench` is FlorDB's side of a replay benchmark,
here and in workloads/real_replay_flordb.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "replay_train.py"
# The variables the bench was started with: what a user's shell hands every command. The
# bench's own imports may add to os.environ (connectorx sets J4RS_BASE_PATH and
# CX_REWRITER_PATH when `resolve` first reads the store), which no shell would pass on.
BASE_ENV = dict(os.environ)
IMPORT_LINE = "import flor_flows as flor  # noqa: E402"

# The hindsight statements, by kind: (anchor line of the recorded script, statement added
# after it at the same indentation, its name without the suffix).
STATEMENTS = {
    "epoch": (
        'flor.log("acc", acc)',
        'flor.log("w_norm{sfx}", sum(float(p.detach().pow(2).sum()) for p in net.parameters()) ** 0.5)',
        "w_norm",
    ),
    "step": (
        "loss.backward()",
        'flor.log("grad_norm{sfx}", sum(float(p.grad.pow(2).sum()) for p in net.parameters()) ** 0.5)',
        "grad_norm",
    ),
    "run": (
        '_mark("loop_end")',
        'flor.log("final_loss{sfx}", loss_fn(net(X[test_idx]), y[test_idx]).item())',
        "final_loss",
    ),
}
KINDS = tuple(STATEMENTS)


def name(kind: str, sfx: str) -> str:
    return f"{STATEMENTS[kind][2]}{sfx}"


def script(module: str, sfx: str | None = None) -> str:
    """train.py for `module` ("flor_flows" or "flordb"): the recorded version, or with
    sfx the new version, holding the three hindsight statements named with that suffix."""
    lines = TEMPLATE.read_text().splitlines(keepends=True)
    out = []
    for line in lines:
        if line.strip() == IMPORT_LINE:
            line = f"import {module} as flor  # noqa: E402\n"
        out.append(line)
        if sfx is None:
            continue
        for anchor, statement, _ in STATEMENTS.values():
            if line.strip() == anchor:
                indent = line[: len(line) - len(line.lstrip())]
                out.append(indent + statement.format(sfx=sfx) + "\n")
    text = "".join(out)
    if f"import {module} as flor" not in text:
        raise RuntimeError(f"{TEMPLATE}: no line {IMPORT_LINE!r} to replace")
    return text


def git(project: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=project, check=True, capture_output=True, text=True
    ).stdout.strip()


def make_project(project: Path, module: str, sfx: str | None = None) -> None:
    """A git repo holding train.py (and a .gitignore of the implementations' state)."""
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    git(project, "init", "-q", "-b", "main")
    git(project, "config", "user.name", "bench")
    git(project, "config", "user.email", "bench@localhost")
    (project / ".gitignore").write_text(".flor-flows/\n")
    (project / "train.py").write_text(script(module, sfx))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "train.py")


def warm_imports(module: str) -> None:
    """Import what the training script imports once, so that the recorded run's set-up is
    not a cold start (page cache, .pyc) that no later replay pays again."""
    code = f"import torch, sklearn.datasets, {module}"
    subprocess.run([sys.executable, "-c", code], env=clean_env({}), check=True)


def train_argv(sizes: dict) -> list[str]:
    return ["--kwargs", *(f"{k}={v}" for k, v in sizes.items())]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The environment of a script run: no PREFECT_*/FLOR_FLOWS_* leaking in, one thread,
    and this interpreter's bin first on PATH (FlorDB's replay runs a bare `python`)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k in BASE_ENV and not k.startswith(("PREFECT_", "FLOR_FLOWS_"))
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    return env | extra


def run_script(
    cmd: list[str], cwd: Path, env: dict[str, str], log: Path, stdin: str | None = None
) -> dict:
    """Run one command; its wall time, start time (epoch s) and output (to `log`)."""
    started = time.time()
    t0 = time.perf_counter()
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}   (in {cwd})\n")
        out.flush()
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            input=stdin,
            text=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}; see {log}")
    return {"wall_s": wall, "started": started}


def read_marks(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def phases(marks: list[dict], started: float | None = None) -> dict:
    """Per process of the script (pid), the seconds of its phases from its marks: set-up
    (from `started`, the launch, else its first line) to the epoch loop, the loop, the rest."""
    by_pid: dict[int, dict[str, float]] = defaultdict(dict)
    for m in marks:
        by_pid[m["pid"]].setdefault(m["label"], m["t"])
    out = []
    for t in by_pid.values():
        if "loop_start" not in t:
            continue
        row = {"setup_s": t["loop_start"] - (started if started is not None else t["start"])}
        row["imports_s"] = t["loop_start"] - t["start"]  # the script's own first line on
        if "loop_end" in t:
            row["loop_s"] = t["loop_end"] - t["loop_start"]
        if "end" in t and "loop_end" in t:
            row["tail_s"] = t["end"] - t["loop_end"]
        out.append(row)
    return {"processes": out}


def compare(replayed: list[tuple], scratch: list[tuple]) -> dict:
    """Replayed values against the from-scratch run's, matched by their loop position.

    Each list holds (position, value); returns the count of each, how many positions match,
    how many of those differ and the largest absolute difference.
    """
    a, b = dict(replayed), dict(scratch)
    common = sorted(set(a) & set(b), key=str)
    diffs = [abs(float(a[k]) - float(b[k])) for k in common]
    return {
        "replayed": len(a),
        "scratch": len(b),
        "matched": len(common),
        "differ": sum(
            d > 1e-9 * max(1.0, abs(float(b[k]))) for d, k in zip(diffs, common, strict=True)
        ),
        "max_abs_diff": max(diffs, default=None),
    }


class FlorDBBench:
    """FlorDB's side of a replay benchmark, run on its venv's python in `root`: ./project
    records train.py (with the options `argv`) and replays statements in it; every command
    appends its output to `root/<log>` and its script's marks to a file of its own."""

    def __init__(self, root: Path, log: str, argv: list[str]) -> None:
        self.root, self.argv = root, argv
        self.project = root / "project"
        self.log = root / log
        self.marks = root / "marks"
        self.marks.mkdir(exist_ok=True)
        self.count = 0

    def env(self, tag: str) -> tuple[dict[str, str], Path]:
        self.count += 1
        marks = self.marks / f"{self.count:03d}-{tag}.jsonl"
        return clean_env({"REPLAY_MARKS": str(marks)}), marks

    def record(self, project: Path, tag: str) -> dict:
        """`python train.py <argv>` in `project`: its wall time and phases from the launch."""
        env, marks = self.env(tag)
        cmd = [sys.executable, "train.py", *self.argv]
        res = run_script(cmd, project, env, self.log)
        return res | phases(read_marks(marks), res["started"])

    def replay(self, name: str, options: list[str], tag: str) -> dict:
        """`python -m flordb replay --apply <name> <options>` in ./project, answering its
        prompt with "y": its wall time and the replayed script's phases."""
        cmd = [sys.executable, "-m", "flordb", "replay", "--apply", name, *options]
        env, marks = self.env(tag)
        res = run_script(cmd, self.project, env, self.log, stdin="y\n")
        return res | phases(read_marks(marks))
