"""The main job: continuous training on Prefect, four days, four code versions, four batches.

``flor-flows demo [--workdir DIR]`` builds a fresh git project and then, like a team over
four days, commits that day's version of ``train.py``, lets that day's batch arrive in
``data/incoming/``, and runs the retraining flow: it claims the new batch and trains on it,
warm-started from the previous day's model, as a versioned training flow run that publishes
its tables as artifacts. A last retraining finds no new data. Then, in hindsight, today's
`train.py` logs the gradient norm, and one backfill flow run computes it for every past run
(each in its own code version) from their checkpoints. It prints the wide table.

Prefect: the API in ``PREFECT_API_URL`` if set, else an ephemeral one whose database is kept
under the demo directory, so the runs and artifacts can be browsed afterwards.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pandas as pd

from flor_flows import api
from flor_flows.errors import DemoStepFailed
from flor_flows.versioning import code

EXAMPLE_DIR = Path(__file__).resolve().parent.parent / "examples" / "digits"
METRICS = ("loss", "acc", "lr", "val_loss", "grad_norm")
# The hindsight statement added to today's train.py (v4), right after its backward pass.
ANCHOR = "        loss.backward()\n"
GRAD_NORM = '        flor.log("grad_norm", sum(p.grad.norm().item() for p in model.parameters()))\n'
WATCH = "data/incoming/*.csv"


@dataclass(frozen=True)
class Step:
    """One day of the demo: which script version trains on the day's batch, with which args
    (`flor.arg` values, and the script's own command-line options)."""

    version: str
    kwargs: dict[str, str] = field(default_factory=dict)
    argv: tuple[str, ...] = ()


STEPS = (
    Step("v1"),
    Step("v2"),
    Step("v3", {"lr": "0.05"}),
    Step("v4", argv=("--weight-decay", "1e-3", "--smoothing", "0.1")),
)


def run_demo(workdir: Path, out: TextIO = sys.stdout) -> pd.DataFrame:
    """Run every demo day in a new git repo at ``workdir``; return the metrics table.

    The table is the store's wide table of ``METRICS`` with two extra columns, ``version``
    (v1, v2, ...) and ``batch`` (the CSV file name), joined on ``run_uid``.
    """
    from flor_flows.store import project_store

    workdir = Path(workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"demo workdir must be empty or absent: {workdir}")
    workdir.mkdir(parents=True, exist_ok=True)
    _init_repo(workdir)
    batches = _write_batches(workdir / "data" / "batches", n_batches=len(STEPS))
    print(f"demo project: {workdir}", file=out)
    print(f"{len(batches)} daily batches of scikit-learn's digits wait to arrive", file=out)

    for day, (step, batch) in enumerate(zip(STEPS, batches, strict=True), start=1):
        shutil.copyfile(_version_file(step.version), workdir / "train.py")
        code.commit_files(workdir, ["train.py"], f"train.py: {step.version}")
        _arrive(workdir, batch)
        overrides = " ".join([*(f"{k}={v}" for k, v in step.kwargs.items()), *step.argv])
        label = f"[day {day}/{len(STEPS)}] {step.version}, {batch.name} arrived"
        print(label + (f" ({overrides})" if overrides else "") + ": retraining ...", file=out)
        out.flush()
        (uid,), seconds = _retrain(workdir, step.kwargs, step.argv)
        resumed = project_store(workdir).runs(uids=[uid])["resumed_from"].iloc[0]
        start = f"warm-started from {resumed}" if isinstance(resumed, str) else "from scratch"
        print(f"    run {uid} ({start}) in {seconds:.1f} s", file=out)

    print("[next check] nothing new arrived: retraining ...", file=out)
    trained, seconds = _retrain(workdir, {}, ())
    print(f"    {trained or 'no new data'} in {seconds:.1f} s", file=out)

    print("[hindsight] today's train.py logs grad_norm: backfilling every past run ...", file=out)
    today = (workdir / "train.py").read_text()
    (workdir / "train.py").write_text(today.replace(ANCHOR, ANCHOR + GRAD_NORM, 1))
    message, seconds = _backfill(workdir)
    print(f"    {message} in {seconds:.1f} s", file=out)
    store = project_store(workdir)
    replays = store.query("SELECT status, checked FROM replays")
    verdict = "all equal" if set(replays["status"]) == {"completed"} else "NOT all equal"
    print(
        f"    verified: the replays re-logged {int(replays['checked'].sum())} values the runs "
        f"had recorded (loss, lr, val_loss, acc): {verdict}",
        file=out,
    )

    runs = store.runs()
    labels = _label_runs(runs, batches)
    table = store.dataframe(METRICS).merge(labels, on="run_uid", how="left")
    _report(table, runs.merge(labels, on="run_uid", how="left"), workdir, out)
    return table


def _init_repo(workdir: Path) -> None:
    """A git repository with a local identity; data and the store stay out of version control."""
    code.new_repository(workdir, "flor-flows demo", "demo@flor-flows.invalid")
    (workdir / ".gitignore").write_text("data/\n.flor-flows/\n__pycache__/\n")
    code.commit_files(workdir, [".gitignore"], "Ignore data and the run store")


def _write_batches(dest: Path, n_batches: int) -> list[Path]:
    """Call ``examples/digits/batches.py:write_batches`` (the examples are not a package).

    The test split lands in ``data/``, the batches in ``data/batches/`` until they arrive.
    """
    source = EXAMPLE_DIR / "batches.py"
    spec = importlib.util.spec_from_file_location("flor_flows_demo_batches", source)
    if spec is None or spec.loader is None or not source.is_file():
        raise FileNotFoundError(f"demo example not found: {source}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    batches = module.write_batches(dest.parent, n_batches=n_batches)
    return [Path(b) for b in batches]


def _arrive(workdir: Path, batch: Path) -> None:
    """Deliver a batch to the watched folder, as an upstream job would."""
    incoming = workdir / "data" / "incoming"
    incoming.mkdir(exist_ok=True)
    shutil.copyfile(batch, incoming / batch.name)


def _version_file(version: str) -> Path:
    path = EXAMPLE_DIR / "versions" / f"{version}.py"
    if not path.is_file():
        raise FileNotFoundError(f"demo script version not found: {path}")
    return path


def _retrain(
    workdir: Path, kwargs: dict[str, str], argv: tuple[str, ...]
) -> tuple[list[str], float]:
    """One retraining flow run over whatever arrived; its trained run uids and wall time."""
    from flor_flows.training.request import RetrainingRequest
    from flows.retraining import retrain

    request = RetrainingRequest(project=str(workdir), watch=WATCH, args=kwargs, argv=list(argv))
    start = time.perf_counter()
    state = retrain(request, return_state=True)
    seconds = time.perf_counter() - start
    if not state.is_completed():
        raise DemoStepFailed(f"retraining flow run ended {state.type.value}: {state.message}")
    return state.result(), seconds


def _backfill(workdir: Path) -> tuple[str, float]:
    """One backfill flow run computing grad_norm over the history; its summary, wall time."""
    from flor_flows.replay.backfill import BackfillRequest
    from flows.backfill import backfill

    start = time.perf_counter()
    state = backfill(BackfillRequest(project=str(workdir), names=["grad_norm"]), return_state=True)
    seconds = time.perf_counter() - start
    if not state.is_completed():
        raise DemoStepFailed(f"backfill flow run ended {state.type.value}: {state.message}")
    return state.message, seconds


def _label_runs(runs: pd.DataFrame, batches: list[Path]) -> pd.DataFrame:
    """Map each run to its demo day. Days ran one after another: start order is day order."""
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


def _report(table: pd.DataFrame, runs: pd.DataFrame, workdir: Path, out: TextIO) -> None:
    """Print the runs, a per-epoch summary and where the artifacts are."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    from flor_flows.training.artifacts import key_prefix

    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print("\nruns (flor-flows runs):", file=out)
        shown = runs[["version", "batch", "run_uid", "code_version", "resumed_from"]]
        shown = shown.assign(code_version=shown["code_version"].str[:10])
        print(shown.to_string(index=False, na_rep="-"), file=out)

        print(f"\nper epoch (flor.dataframe{METRICS}, loss averaged over steps):", file=out)
        summary = table.groupby(["version", "epoch"], sort=True)[list(METRICS)].mean()
        print(summary.round(4).to_string(na_rep="-"), file=out)

    keys = ", ".join(f"{key_prefix(workdir.name)}-{k}" for k in ("metrics", "checkpoints", "data"))
    print(
        f"\nartifacts of every training flow run: {keys}, {key_prefix(workdir.name)}-summary",
        file=out,
    )
    api = PREFECT_API_URL.value()
    if api:
        print(f"in the Prefect API at {api} (UI: its Artifacts page)", file=out)
    else:
        home = PREFECT_HOME.value()
        print(f"in the Prefect database under {home}; to browse them in the UI:", file=out)
        print(
            f"    PREFECT_HOME={home} flor-flows server   # then open http://127.0.0.1:4200",
            file=out,
        )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: ``flor-flows demo`` / ``python -m flor_flows.demo``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="empty directory for the demo project")
    args = parser.parse_args(argv)
    if args.workdir:
        workdir = args.workdir.resolve()
        prefect_home = workdir.parent / f"{workdir.name}-prefect"
    else:
        base = Path(tempfile.mkdtemp(prefix="flor-flows-demo-"))
        workdir, prefect_home = base / "digits", base / "prefect"
    if not os.environ.get("PREFECT_API_URL"):  # an ephemeral API, its database kept with the demo
        os.environ.setdefault("PREFECT_HOME", str(prefect_home))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # our progress lines say enough
    api.ephemeral_defaults()

    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    start = time.perf_counter()
    print("starting Prefect (an ephemeral API unless PREFECT_API_URL is set) ...", flush=True)
    # Heartbeats detect crashed runs of a long-lived server; this in-process demo needs none.
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        run_demo(workdir)
    print(f"\ndemo finished in {time.perf_counter() - start:.1f} s; project kept at {workdir}")


if __name__ == "__main__":
    main()
