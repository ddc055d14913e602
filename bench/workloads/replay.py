"""flor_flows' side of the replay benchmark: hindsight statements backfilled over one recorded run.

BENCH_PARAMS: sizes (flor.arg values of workloads/replay_train.py, e.g. {"epochs": 30,
"repeat": 8}), reps, step_parallel (max_parallel of the step-level backfills), prefect_home.

In ./project (a git repo) train.py is recorded once (FLOR_FLOWS_CHECKPOINT_POLICY=every), then
the new version, with one epoch-level, one step-level and one run-level `flor.log` added, is
written into the working tree and, `reps` times, each statement is backfilled in two ways, in
alternating order:
  - flow:   `flows.backfill.backfill(BackfillRequest(...))`, Prefect's ephemeral API
            (PREFECT_API_URL unset), heartbeats off;
  - direct: what the flow does, without Prefect: `resolve`, `engine.prepare_version` per code
            version, `engine.replay` per planned item (max_parallel threads at a time).
Every backfill logs names of its own (suffix _f<rep> / _d<rep>), so each is planned and run
afresh. Once per rep the new script is also recorded from scratch in a project of its own
(the alternative to a backfill); its values are the reference the replayed ones are compared
with. The script's REPLAY_MARKS file splits each run into set-up, epoch loop and the rest.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import replay_common as rc
from benchlib import emit, params, prefect_env

STARTUP_TIMEOUT_S = 180


@contextmanager
def no_heartbeats():
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def values(store_url: str, name: str) -> list[tuple]:
    """((epoch, step), value) of every value of `name` in the store (one run per store)."""
    from flor_flows.store import open_store

    frame = open_store(store_url).dataframe([name])
    if name not in frame.columns:
        return []
    frame = frame[frame[name].notna()]
    loops = [c for c in ("epoch", "step") if c in frame.columns]

    def key(row) -> tuple:  # noqa: ANN001
        return tuple(None if row[c] != row[c] else int(row[c]) for c in loops)

    return [(key(row), float(row[name])) for _, row in frame.iterrows()]


class Bench:
    def __init__(self, p: dict, root: Path) -> None:
        self.p, self.root = p, root
        self.project = root / "project"
        self.log = root / "replay.log"
        self.marks = root / "marks"
        self.marks.mkdir(exist_ok=True)
        self.count = 0

    @property
    def store_url(self) -> str:
        return f"sqlite:///{self.project / '.flor-flows' / 'store.db'}"

    def marks_file(self, tag: str) -> Path:
        self.count += 1
        path = self.marks / f"{self.count:03d}-{tag}.jsonl"
        os.environ["REPLAY_MARKS"] = str(path)  # the replays' children inherit it
        return path

    def record(self, project: Path, tag: str) -> dict:
        """Run train.py of `project` forward, recorded, checkpointing every epoch."""
        marks = self.marks_file(tag)
        env = rc.clean_env({"FLOR_FLOWS_CHECKPOINT_POLICY": "every", "REPLAY_MARKS": str(marks)})
        cmd = [sys.executable, "train.py", *rc.train_argv(self.p["sizes"])]
        res = rc.run_script(cmd, project, env, self.log)
        return res | rc.phases(rc.read_marks(marks), res["started"])

    def scratch(self, rep: int) -> dict:
        project = self.root / f"scratch{rep}"
        rc.make_project(project, "flor_flows", sfx=f"_s{rep}")
        res = self.record(project, f"scratch{rep}")
        url = f"sqlite:///{project / '.flor-flows' / 'store.db'}"
        res["values"] = {k: values(url, rc.name(k, f"_s{rep}")) for k in rc.KINDS}
        return res

    def request(self, kind: str, sfx: str):  # noqa: ANN201
        from flor_flows.replay.backfill import BackfillRequest

        (self.project / "train.py").write_text(rc.script("flor_flows", sfx))
        return BackfillRequest(
            project=str(self.project),
            names=[rc.name(kind, sfx)],
            iterations=["epoch=none"] if kind == "run" else [],
            max_parallel=self.p["step_parallel"] if kind == "step" else 1,
        )

    def flow(self, kind: str, rep: int) -> dict:
        from flows.backfill import backfill

        sfx = f"_f{rep}"
        request = self.request(kind, sfx)
        marks = self.marks_file(f"flow-{kind}{rep}")
        t0 = time.perf_counter()
        with no_heartbeats():
            state = backfill(request, return_state=True)
        wall = time.perf_counter() - t0
        if not state.is_completed():
            raise RuntimeError(
                f"backfill of {request.names} ended {state.type.value}: {state.message}"
            )
        return {
            "wall_s": wall,
            "flow_run_id": str(state.state_details.flow_run_id),
            "message": state.message,
            "values": values(self.store_url, rc.name(kind, sfx)),
        } | rc.phases(rc.read_marks(marks))

    def direct(self, kind: str, rep: int) -> dict:
        """The flow's work without Prefect: plan, propagate per version, replay per item."""
        from flor_flows.replay import engine
        from flor_flows.replay.backfill import resolve

        sfx = f"_d{rep}"
        request = self.request(kind, sfx)
        marks = self.marks_file(f"direct-{kind}{rep}")
        workdir = Path(tempfile.mkdtemp(prefix="bench-direct-", dir=self.root))
        t0 = time.perf_counter()
        resolved = resolve(request)
        t_plan = time.perf_counter()
        versions = {
            c: engine.prepare_version(
                resolved.settings.root, c, resolved.new_files, resolved.names, workdir
            )
            for c in resolved.commits
        }
        t_prop = time.perf_counter()
        refused = [r for v in versions.values() for r in v.refusals]
        if refused:
            raise RuntimeError(f"propagation refused: {refused}")

        def one(item):  # noqa: ANN001, ANN202
            t = time.perf_counter()
            outcome = engine.replay(
                versions[item.code_version],
                item.run_uid,
                item.entry_script,
                resolved.settings,
                resolved.names,
                item.iterations,
                on_output=lambda line: None,
                statements_sha256=resolved.statements_sha256,
                run_level=item.run_level,
            )
            return {
                "run_uid": item.run_uid,
                "run_level": item.run_level,
                "iterations": "all" if item.iterations is None else list(item.iterations),
                "estimated_s": item.estimated_seconds,
                "child_s": outcome.seconds,
                "call_s": time.perf_counter() - t,
            }

        with ThreadPoolExecutor(request.max_parallel) as pool:
            items = list(pool.map(one, resolved.items))
        end = time.perf_counter()
        return {
            "wall_s": end - t0,
            "plan_s": t_plan - t0,
            "propagate_s": t_prop - t_plan,
            "replay_s": end - t_prop,
            "items": items,
            "values": values(self.store_url, rc.name(kind, sfx)),
        } | rc.phases(rc.read_marks(marks))

    def warm_up(self) -> dict:
        """Start the ephemeral API (a dry-run backfill) and import what both paths use."""
        from flor_flows.replay import engine
        from flows.backfill import backfill

        request = self.request("epoch", "_warm")
        t0 = time.perf_counter()
        with no_heartbeats():
            state = backfill(request, dry_run=True, return_state=True)
        first = time.perf_counter() - t0
        if not state.is_completed():
            raise RuntimeError(f"dry-run backfill ended {state.type.value}: {state.message}")
        commit = rc.git(self.project, "for-each-ref", "--format=%(objectname)", "refs/flor/runs")
        engine.prepare_version(
            self.project,
            commit.split()[0],
            {"train.py": (self.project / "train.py").read_text()},
            [rc.name("epoch", "_warm")],
            Path(tempfile.mkdtemp(prefix="bench-warm-", dir=self.root)),
        )
        return {"first_flow_s": first, "warm_up_s": time.perf_counter() - t0}


def flow_durations(ids: list[str], store_url: str) -> dict[str, dict]:
    """Per flow run: its start-to-end and task-run durations (server-side), and the
    durations of the replays it ran (the store's replay records, launch to last write)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from sqlalchemy import select

    from flor_flows.store import open_store
    from flor_flows.store import schema as s

    out: dict[str, dict] = {}
    with get_client(sync_client=True) as client:
        for i in ids:
            flow = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[i]))
            )
            tasks = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[i]))
            )
            by_task: dict[str, list[float]] = defaultdict(list)
            for t in (t for t in tasks if t.end_time and t.start_time):
                by_task[t.name.split("-", 1)[0]].append((t.end_time - t.start_time).total_seconds())
            f = flow[0]
            out[i] = {
                "flow_run_s": (f.end_time - f.start_time).total_seconds()
                if f.end_time and f.start_time
                else None,
                "tasks": dict(by_task),
            }
    store = open_store(store_url)
    query = select(s.Replay.prefect_flow_run_id, s.Replay.started_at, s.Replay.ended_at)
    with store.engine.connect() as conn:
        for flow_run_id, started, ended in conn.execute(
            query.where(s.Replay.prefect_flow_run_id.in_(ids))
        ):
            if started is not None and ended is not None:
                out[flow_run_id].setdefault("replays_s", []).append(
                    (ended - started).total_seconds()
                )
    return out


def main() -> None:
    p = params()
    root = Path.cwd()
    prefect_env(Path(p["prefect_home"]), STARTUP_TIMEOUT_S)
    from flor_flows.api import ephemeral_defaults

    ephemeral_defaults()
    bench = Bench(p, root)
    rc.make_project(bench.project, "flor_flows")
    rc.warm_imports("flor_flows")
    original = bench.record(bench.project, "original")
    warm = bench.warm_up()
    runs: dict[str, list[dict]] = defaultdict(list)
    scratch = []
    for rep in range(p["reps"]):
        scratch.append(bench.scratch(rep))
        for kind in rc.KINDS:
            order = (
                ("flow", "direct") if (rep + rc.KINDS.index(kind)) % 2 == 0 else ("direct", "flow")
            )
            for path in order:
                print(f"[replay] rep {rep} {kind} {path}", file=sys.stderr, flush=True)
                fn = bench.flow if path == "flow" else bench.direct
                try:
                    runs[f"{path}_{kind}"].append(fn(kind, rep))
                except Exception as exc:  # noqa: BLE001 - reported in its cell; the others go on
                    runs[f"{path}_{kind}"].append({"error": f"{type(exc).__name__}: {exc}"[:500]})
    time.sleep(2)  # task-run states reach the API through the events pipeline
    ids = [
        r["flow_run_id"]
        for k, rs in runs.items()
        if k.startswith("flow_")
        for r in rs
        if "flow_run_id" in r
    ]
    durations = flow_durations(ids, bench.store_url)
    for k, rs in runs.items():
        for r in rs:
            if k.startswith("flow_") and "flow_run_id" in r:
                r |= durations.get(r["flow_run_id"], {})
    fidelity = {}
    for kind in rc.KINDS:
        ref = scratch[0]["values"][kind]
        for path in ("flow", "direct"):
            first = runs[f"{path}_{kind}"][0]
            if "values" in first:
                fidelity[f"{path}_{kind}"] = rc.compare(first["values"], ref)
    for rs in runs.values():
        for r in rs:
            r.pop("values", None)
    for r in scratch:
        r.pop("values")
    emit(original=original, warm=warm, scratch=scratch, runs=runs, fidelity=fidelity)


if __name__ == "__main__":
    main()
