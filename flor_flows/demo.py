"""End-to-end demo: four versions of a digits training script, one per daily data batch.

``python -m flor_flows.demo [--workdir DIR] [--keep]`` builds a fresh git repository, writes the
arrival batches of ``examples/digits``, and then, like a team over four days, commits each new
version of ``train.py`` and trains it on that day's batch. Finally it prints the logged history
from ``flor.dataframe``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pandas as pd

import flor_flows as flor

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "digits"
METRICS = ("loss", "acc", "lr", "val_loss")
STDERR_TAIL_LINES = 30
# Run-table columns left out of the printed summary (the returned table keeps everything).
RUN_DETAILS = {
    "project",
    "status",
    "started_at",
    "ended_at",
    "entry_script",
    "prefect_flow_run_id",
    "error",
}


@dataclass(frozen=True)
class Step:
    """One day of the demo: which script version trains on which batch, with which overrides."""

    version: str
    kwargs: dict[str, str] = field(default_factory=dict)


STEPS = (
    Step("v1"),
    Step("v2"),
    Step("v3", {"lr": "0.05"}),
    Step("v4"),
)


class DemoStepFailed(RuntimeError):
    """A training run of the demo exited with a non-zero status."""


def run_demo(workdir: Path, out: TextIO = sys.stdout) -> pd.DataFrame:
    """Run every demo step in a new git repo at ``workdir``; return the metrics table.

    The table is ``flor.dataframe("loss", "acc", "lr", "val_loss")`` with two extra columns,
    ``version`` (v1, v2, ...) and ``batch`` (the CSV file name), joined on ``run_uid``.
    """
    workdir = Path(workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"demo workdir must be empty or absent: {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    store_url = f"sqlite:///{workdir / '.flor-flows' / 'store.db'}"

    _init_repo(workdir)
    batches = _write_batches(workdir / "data", n_batches=len(STEPS))
    print(f"demo repo: {workdir}", file=out)
    print(f"wrote {len(batches)} arrival batches and a test split under data/", file=out)

    for i, (step, batch) in enumerate(zip(STEPS, batches, strict=True), start=1):
        shutil.copyfile(_version_file(step.version), workdir / "train.py")
        _git(workdir, "add", "train.py")
        _git(workdir, "commit", "-q", "-m", f"train.py: {step.version}")
        overrides = " ".join(f"{k}={v}" for k, v in step.kwargs.items())
        label = f"[{i}/{len(STEPS)}] {step.version} on {batch.name}"
        print(label + (f" ({overrides})" if overrides else "") + " ...", end="", file=out)
        out.flush()
        seconds = _train(workdir, batch, step.kwargs, store_url)
        print(f" {seconds:.1f} s", file=out)

    with _inside(workdir, store_url):
        table = flor.dataframe(*METRICS)
        runs = flor.dataframe()
    labels = _label_runs(runs, batches)
    table = table.merge(labels, on="run_uid", how="left")
    runs = runs.merge(labels, on="run_uid", how="left")
    _report(table, runs, out)
    return table


def _init_repo(workdir: Path) -> None:
    """``git init`` with a local identity; data and the store stay out of version control."""
    _git(workdir, "init", "-q", "-b", "main")
    _git(workdir, "config", "user.name", "flor-flows demo")
    _git(workdir, "config", "user.email", "demo@flor-flows.invalid")
    (workdir / ".gitignore").write_text("data/\n.flor-flows/\n__pycache__/\n")
    _git(workdir, "add", ".gitignore")
    _git(workdir, "commit", "-q", "-m", "Ignore data and the run store")


def _git(workdir: Path, *args: str) -> None:
    proc = subprocess.run(["git", *args], cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DemoStepFailed(f"git {' '.join(args)} exited with {proc.returncode}: {proc.stderr}")


def _write_batches(dest: Path, n_batches: int) -> list[Path]:
    """Call ``examples/digits/batches.py:write_batches`` (the examples are not a package)."""
    source = EXAMPLE_DIR / "batches.py"
    spec = importlib.util.spec_from_file_location("flor_flows_demo_batches", source)
    if spec is None or spec.loader is None or not source.is_file():
        raise FileNotFoundError(f"demo example not found: {source}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_batches(dest, n_batches=n_batches)


def _version_file(version: str) -> Path:
    path = EXAMPLE_DIR / "versions" / f"{version}.py"
    if not path.is_file():
        raise FileNotFoundError(f"demo script version not found: {path}")
    return path


def _train(workdir: Path, batch: Path, kwargs: dict[str, str], store_url: str) -> float:
    """Run ``train.py`` on ``batch`` in a child interpreter; return its wall time in seconds."""
    cmd = [sys.executable, "train.py", "--data", f"batch={batch.relative_to(workdir)}"]
    if kwargs:
        cmd += ["--kwargs", *(f"{k}={v}" for k, v in kwargs.items())]
    env = {**os.environ, "FLOR_FLOWS_STORE_URL": store_url}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-STDERR_TAIL_LINES:])
        raise DemoStepFailed(f"{' '.join(cmd)} exited with {proc.returncode}:\n{tail}")
    return seconds


@contextlib.contextmanager
def _inside(workdir: Path, store_url: str) -> Iterator[None]:
    """Temporarily make ``workdir`` and its store the current project of this process."""
    old_cwd, old_url = Path.cwd(), os.environ.get("FLOR_FLOWS_STORE_URL")
    os.chdir(workdir)
    os.environ["FLOR_FLOWS_STORE_URL"] = store_url
    try:
        yield
    finally:
        os.chdir(old_cwd)
        if old_url is None:
            del os.environ["FLOR_FLOWS_STORE_URL"]
        else:
            os.environ["FLOR_FLOWS_STORE_URL"] = old_url


def _label_runs(runs: pd.DataFrame, batches: list[Path]) -> pd.DataFrame:
    """Map each run to its demo step. Steps ran one after another, so start order is step order."""
    if len(runs) != len(STEPS):
        raise DemoStepFailed(f"expected {len(STEPS)} runs in the store, found {len(runs)}")
    ordered = runs.sort_values("started_at")["run_uid"].tolist()
    return pd.DataFrame(
        {
            "run_uid": ordered,
            "version": [s.version for s in STEPS],
            "batch": [b.name for b in batches],
        }
    )


def _report(table: pd.DataFrame, runs: pd.DataFrame, out: TextIO) -> None:
    """Print the run table and a per-epoch summary (mean step loss next to epoch metrics)."""
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print("\nruns (flor.dataframe(), args only):", file=out)
        hidden = [c for c in runs.columns if c in RUN_DETAILS or c.startswith("data.")]
        shown = runs.drop(columns=hidden).assign(code_version=runs["code_version"].str[:10])
        front = ["version", "batch", "run_uid", "code_version"]
        shown = shown[front + [c for c in shown.columns if c not in front]]
        print(shown.to_string(index=False), file=out)

        print(f"\nper epoch (flor.dataframe{METRICS}, loss averaged over steps):", file=out)
        summary = table.groupby(["version", "epoch"], sort=True)[list(METRICS)].mean()
        print(summary.round(4).to_string(na_rep="-"), file=out)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``python -m flor_flows.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="empty directory for the demo repo")
    parser.add_argument("--keep", action="store_true", help="keep the temporary demo repo")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="flor-flows-demo-"))
    start = time.perf_counter()
    try:
        run_demo(workdir)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s", end="")
    print(f"; repo kept at {workdir}" if args.workdir or args.keep else "")


if __name__ == "__main__":
    main()
