"""Start-up tax of `flor-flows replay` on the command line: Prefect's temporary server per
command (FLOR_FLOWS_PREFECT=temporary) against the background server (the default), first call
(no server running: it starts one) and second call (it reuses it).

Run from the repository root: `.venv/bin/python bench/workloads/cli_startup.py [REPS]`. In a
scratch git project (a fresh PREFECT_HOME) one epoch-level run (20 epochs of 0.1 s, every
epoch checkpointed) is recorded; then each call adds a statement of its own,
`flor.log("w<i>", ...)`, and backfills it, `flor-flows replay --apply w<i>`, REPS times in each
way, interleaved, after one uncounted temporary call that migrates Prefect's database. Every
call's flow run is read back from Prefect's database (shared by both ways, in PREFECT_HOME):
wall time minus the flow run is the start-up tax. CPU is the command's user + system time
with its waited-for children (the temporary server; not the detached background one).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")
SCRIPT = """
import time

import flor_flows as flor

model = {"w": 1.0}
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(20)):
        time.sleep(0.1)
        model["w"] *= 0.9
        flor.log("w", model["w"])
"""
NEW = '        flor.log("w{i}", {i} * model["w"])\n'


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """Wall and CPU seconds and stderr of `command`; raises if it fails."""
    began, began_cpu = time.monotonic(), cpu()
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - began, cpu() - began_cpu, done.stderr


def replay(project: Path, env: dict[str, str], i: int) -> tuple[float, float, str]:
    """Add statement `w<i>` to the script and backfill it."""
    (project / "train.py").write_text(SCRIPT + NEW.format(i=i))
    return run([FLOR_FLOWS, "replay", "--apply", f"w{i}"], project, env)


def flow_seconds(api: str) -> list[float]:
    """Durations of the backfill flow runs in Prefect's database, oldest first."""
    body = json.dumps({"sort": "START_TIME_ASC", "limit": 200}).encode()
    request = urllib.request.Request(
        f"{api}/flow_runs/filter", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        runs = [r for r in json.loads(response.read()) if r["name"].startswith("backfill")]
    at = datetime.fromisoformat
    return [(at(r["end_time"]) - at(r["start_time"])).total_seconds() for r in runs]


def main(reps: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="flor-cli-startup-"))
    project = root / "project"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))}
    env |= {"PREFECT_HOME": str(root / "prefect-home"), "PREFECT_LOGGING_LEVEL": "WARNING"}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=project, check=True)
    (project / ".gitignore").write_text(".flor-flows/\n")
    (project / "train.py").write_text(SCRIPT)
    subprocess.run([*git, "add", "-A"], cwd=project, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "v1"], cwd=project, check=True)
    record = env | {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}
    own, _, _ = run([sys.executable, "train.py"], project, record)

    temporary = env | {"FLOR_FLOWS_PREFECT": "temporary"}
    stop = [FLOR_FLOWS, "server", "stop"]
    try:
        replay(project, temporary, 0)  # migrates Prefect's database: not counted
        walls: dict[str, list[float]] = {"temporary": [], "first": [], "second": []}
        cpus: dict[str, list[float]] = {kind: [] for kind in walls}
        order = []  # the kind of every counted call, in the order of their flow runs
        for rep in range(reps):
            for n, (kind, call_env) in enumerate(
                (("temporary", temporary), ("first", env), ("second", env))
            ):
                wall, used, stderr = replay(project, call_env, 1 + 3 * rep + n)
                assert ("started a Prefect server" in stderr) == (kind == "first"), stderr
                walls[kind].append(wall)
                cpus[kind].append(used)
                order.append(kind)
            run(stop, project, env)
        run([FLOR_FLOWS, "server", "start"], project, env)
        api = json.loads((root / "prefect-home" / "flor-flows-server.json").read_text())["url"]
        flows = flow_seconds(api)[1:]  # the uncounted call's first
    finally:  # a failed call leaves no server behind
        run(stop, project, env)
    flow = {kind: [f for k, f in zip(order, flows, strict=True) if k == kind] for kind in walls}
    print(f"recorded run (the script alone, no Prefect): {own:.2f} s; {reps} reps; {root}")
    print("| call | wall | backfill flow run | wall - flow run | CPU of the command |")
    print("|---|---|---|---|---|")
    for kind, times in walls.items():
        wall, inside = statistics.median(times), statistics.median(flow[kind])
        used = statistics.median(cpus[kind])
        print(f"| {kind} | {wall:.1f} s | {inside:.1f} s | {wall - inside:.1f} s | {used:.1f} s |")
    print("all walls:", {k: [round(t, 1) for t in v] for k, v in walls.items()})


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
