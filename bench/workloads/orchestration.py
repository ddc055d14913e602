"""Orchestration overhead of the training flow (`flows/training.py`) on examples/digits v1.

BENCH_PARAMS: mode ("server" or "ephemeral"), reps, epochs, examples (the examples/digits
folder), prefect_home (PREFECT_HOME of this process; a server's database lives there too).

mode server: starts `prefect server start` on a free port, points this process at it, and
then, after one uncounted warm-up of each, times `reps` rounds of three runs on the same batch
in alternating order: `train(...)` with Prefect's default heartbeat, `train(...)` with
heartbeats disabled, and `python train.py` run directly (same interpreter, project and
environment, minus the PREFECT_* variables). The task runs of every timed flow run are read
back from the server for a per-task breakdown.

mode ephemeral: PREFECT_API_URL unset, so the first flow run starts Prefect's temporary server;
times the first and the second `train(...)` of this process.

Prefect reads its settings at import, so nothing here imports prefect (or flows) before the
environment is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from benchlib import emit, params, prefect_env

HEALTH_TIMEOUT_S = 180


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


def make_project(project: Path, examples: Path, n_batches: int) -> list[str]:
    """A git repo with train.py = v1 committed and `n_batches` batches under data/."""
    project.mkdir()
    git(project, "init", "-q", "-b", "main")
    git(project, "config", "user.name", "bench")
    git(project, "config", "user.email", "bench@localhost")
    shutil.copyfile(examples / "versions" / "v1.py", project / "train.py")
    (project / ".gitignore").write_text("data/\n.flor-flows/\n")
    git(project, "add", "train.py", ".gitignore")
    git(project, "commit", "-q", "-m", "train.py: v1")
    spec = importlib.util.spec_from_file_location("bench_digits_batches", examples / "batches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    paths = module.write_batches(project / "data", n_batches=n_batches)
    return [str(p.relative_to(project)) for p in paths]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def prefect_server(home: Path) -> Iterator[tuple[str, float]]:
    """`prefect server start` on a free port; yields its API URL and the seconds to healthy."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    cmd = [Path(sys.executable).parent / "prefect", "server", "start", "--host", "127.0.0.1"]
    log = home / "server.log"
    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*map(str, cmd), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while not healthy(api):
            if proc.poll() is not None:
                raise RuntimeError(f"prefect server exited with {proc.returncode}; see {log}")
            if time.perf_counter() - t0 > HEALTH_TIMEOUT_S:
                raise RuntimeError(f"prefect server not healthy after {HEALTH_TIMEOUT_S} s")
            time.sleep(0.1)
        yield api, time.perf_counter() - t0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2) as r:
            return r.read().strip() == b"true"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


class Trainer:
    """Runs train.py of one project on a batch: as a flow run, or directly."""

    def __init__(self, project: Path, epochs: int):
        # These import prefect: only after prefect_env().
        from flor_flows.training.request import TrainingRequest
        from flows.training import train

        self.project, self.epochs = project, epochs
        self.train, self.request = train, TrainingRequest
        self.flow_run_ids: dict[str, list[str]] = defaultdict(list)

    def flow(self, batch: str, label: str | None = None, heartbeat: bool = True) -> float:
        """Seconds of one `train(...)` call; its flow run id is kept under `label`."""
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        request = self.request(
            project=str(self.project),
            batch=batch,
            args={"epochs": str(self.epochs)},
            warm_start=False,
        )
        settings = (
            nullcontext()
            if heartbeat
            else temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})
        )
        with settings:
            seconds, state = timed(lambda: self.train(request, return_state=True))
        if not state.is_completed():
            raise RuntimeError(f"flow run ended {state.type.value}: {state.message}")
        if label:
            self.flow_run_ids[label].append(str(state.state_details.flow_run_id))
        return seconds

    def direct(self, batch: str) -> float:
        """Seconds of `python train.py --data batch=... --kwargs epochs=...`, without Prefect."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        cmd = [sys.executable, "train.py", "--data", f"batch={batch}"]
        cmd += ["--kwargs", f"epochs={self.epochs}"]
        seconds, proc = timed(
            lambda: subprocess.run(cmd, cwd=self.project, env=env, capture_output=True, text=True)
        )
        if proc.returncode != 0:
            raise RuntimeError(f"direct run exited {proc.returncode}: {proc.stderr[-2000:]}")
        return seconds

    def durations(self, label: str) -> tuple[dict[str, list[float]], list[float]]:
        """Server-recorded seconds, start to end, of the flow runs under `label` (in the order
        they ran) and, by task name, of their task runs (those whose end the server has heard
        of)."""
        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        ids = self.flow_run_ids[label]
        with get_client(sync_client=True) as client:
            flows = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
            )
            tasks = [
                t
                for i in ids  # one query per flow run: the server returns at most 200 rows
                for t in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[i]))
                )
            ]
        by_task: dict[str, list[float]] = defaultdict(list)
        for t in (t for t in tasks if t.end_time):
            by_task[t.name.rsplit("-", 1)[0]].append((t.end_time - t.start_time).total_seconds())
        by_id = {str(f.id): (f.end_time - f.start_time).total_seconds() for f in flows}
        return by_task, [by_id[i] for i in ids]


def measure_server(p: dict, home: Path, project: Path, batches: list[str]) -> dict:
    with prefect_server(home) as (api, server_start_s):
        os.environ["PREFECT_API_URL"] = api
        import_s, trainer = timed(lambda: Trainer(project, p["epochs"]))
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY

        warm_up_flow_s = trainer.flow(batches[-1])  # client and server warm-up; not counted
        warm_up_direct_s = trainer.direct(batches[-1])
        runs: dict[str, list[float]] = defaultdict(list)
        kinds: dict[str, Callable[[str], float]] = {
            "flow_s": lambda b: trainer.flow(b, "flow"),
            "flow_nohb_s": lambda b: trainer.flow(b, "flow_nohb", heartbeat=False),
            "direct_s": trainer.direct,
        }
        for rep in range(p["reps"]):
            order = list(kinds) if rep % 2 == 0 else list(kinds)[::-1]
            for kind in order:
                runs[kind].append(kinds[kind](batches[rep]))
        time.sleep(2)  # task-run states reach the server through the events pipeline
        tasks, flow_run_s = trainer.durations("flow")
        tasks_nohb, flow_run_nohb_s = trainer.durations("flow_nohb")
        return {
            **runs,
            "tasks": tasks,
            "flow_run_s": flow_run_s,
            "tasks_nohb": tasks_nohb,
            "flow_run_nohb_s": flow_run_nohb_s,
            "server_start_s": server_start_s,
            "import_s": import_s,
            "warm_up_flow_s": warm_up_flow_s,
            "warm_up_direct_s": warm_up_direct_s,
            "heartbeat_default": PREFECT_FLOWS_HEARTBEAT_FREQUENCY.value(),
        }


def measure_ephemeral(p: dict, project: Path, batches: list[str]) -> dict:
    import_s, trainer = timed(lambda: Trainer(project, p["epochs"]))
    return {
        "first_s": trainer.flow(batches[0]),
        "second_s": trainer.flow(batches[1]),
        "import_s": import_s,
    }


def main() -> None:
    p = params()
    home = Path(p["prefect_home"])
    prefect_env(home, HEALTH_TIMEOUT_S)
    project = Path.cwd() / "project"
    batches = make_project(project, Path(p["examples"]), n_batches=max(p["reps"] + 1, 2))
    if p["mode"] == "server":
        emit(**measure_server(p, home, project, batches))
    else:
        emit(**measure_ephemeral(p, project, batches))


if __name__ == "__main__":
    main()
