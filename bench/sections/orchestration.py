"""Orchestration overhead of the training flow (flor_flows only: FlorDB has no orchestrator)."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

from harness import EXAMPLES, OURS, Failed, Row, Runner, Section, Sizes


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
