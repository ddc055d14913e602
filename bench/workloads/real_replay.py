"""flor_flows' side of the real-script replay benchmark (issue 13), through the command line.

BENCH_PARAMS: argv (the script's options, e.g. ["--epochs", "20"]), step_parallel.

In ./project (a git repo) train.py (workloads/real_torch.py) is recorded once with its options
(`python train.py --epochs 20 ...`, the default checkpoint policy). The new version, holding
the four statements of real_common.STATEMENTS (suffix _r), is recorded from scratch in
./scratch for the ground truth, then written into ./project's working tree and each statement
is backfilled with `flor-flows replay --apply NAME` in ./project (the step-level one with
`--max-parallel N`), PREFECT_API_URL naming a `flor-flows server start` of this bench's own
PREFECT_HOME, started once before in ./project (which prepares train.py's fork server) and
stopped at the end. The plan of each (what `--dry-run`
prints) comes from `resolve(request)`, in this process; the actual time of each planned item
from the store's replay records. Then the command-line case without a server: a fresh
PREFECT_HOME, PREFECT_API_URL unset, `flor-flows replay --apply lr_now_c` twice (the second
with --all, the same work); the background server the first call starts is stopped after.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import real_common as cm
import replay_common as rc
from benchlib import emit, params

OURS_BIN = Path(sys.executable).parent
FLOR = str(OURS_BIN / "flor-flows")


def store_values(project: Path, name: str, source: str) -> list[tuple]:
    """((epoch, position), value) of `name` in the project's store, read-only."""
    db = project / ".flor-flows" / "store.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT i0, num FROM logs WHERE name = ? AND source = ? ORDER BY id", (name, source)
        ).fetchall()
    return cm.keyed([(i0, num) for i0, num in rows])


def replays_since(project: Path, since: float) -> list[dict]:
    """The replay records started after `since` (unix s): their seconds, in start order."""
    db = project / ".flor-flows" / "store.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT started_at, ended_at, status, checked FROM replays ORDER BY started_at"
        ).fetchall()
    out = []
    for started, ended, status, checked in rows:
        s, e = (_ts(started), _ts(ended) if ended else None)
        if s >= since - 1:
            out.append({"started": s, "seconds": e - s if e else None, "status": status,
                        "checked": checked})  # fmt: skip
    return out


def _ts(text: str) -> float:
    dt = datetime.datetime.fromisoformat(str(text))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.timestamp()


class Bench:
    def __init__(self, p: dict, root: Path) -> None:
        self.p, self.root = p, root
        self.project = root / "project"
        self.log = root / "real-replay.log"
        # One marks file for every command, each reading its own lines: a variable that
        # changed per command would change the replays' environment, as a user's shell does
        # not, and with it the fork server they share (forkserver.Key).
        self.marks = root / "marks.jsonl"
        self.home = root / "prefect-bench"

    def env(self, **extra: str) -> tuple[dict[str, str], int]:
        """The environment of a command, and where its marks will start in the marks file."""
        offset = self.marks.stat().st_size if self.marks.exists() else 0
        return rc.clean_env({"REPLAY_MARKS": str(self.marks), **extra}), offset

    def marks_since(self, offset: int) -> list[dict]:
        with self.marks.open("rb") as f:
            f.seek(offset)
            return [json.loads(line) for line in f.read().splitlines() if line.strip()]

    def record(self, project: Path) -> dict:
        env, marks = self.env()
        cmd = [sys.executable, "train.py", *self.p["argv"]]
        res = rc.run_script(cmd, project, env, self.log)
        return res | rc.phases(self.marks_since(marks), res["started"])

    def server(self, action: str, home: Path) -> dict:
        """`flor-flows server ACTION` in the project, in the commands' environment (as a
        user's shell runs it): its stdout, wall, and the imports of the fork servers `start`
        prepared, as it said them."""
        env, _ = self.env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
        self.log.open("a").write(f"\n$ flor-flows server {action} (PREFECT_HOME={home})\n")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [FLOR, "server", action], env=env, cwd=self.project, capture_output=True, text=True
        )
        wall = time.perf_counter() - t0
        self.log.open("a").write(proc.stdout + proc.stderr)
        if action == "start" and proc.returncode != 0:
            raise RuntimeError(f"flor-flows server start failed: {proc.stderr[-500:]}")
        imports = [float(s) for s in re.findall(r"fork from one process that imported .* in ([\d.]+) s", proc.stderr)]  # fmt: skip
        return {"stdout": proc.stdout, "wall_s": wall, "imports": imports}

    def plan(self, names: list[str], extra: list[str], env: dict[str, str]) -> dict:
        """The command's plan: each item's iterations and run level from `resolve`, in this
        process, and its estimate as `flor-flows replay --dry-run` prints it, through the
        warm process as the command itself plans (seeing the fork servers it keeps); and the
        estimated imports of each fork server it will start ("+ X s before the first replay
        of SCRIPT")."""
        from flor_flows.replay.backfill import BackfillRequest, resolve

        request = BackfillRequest(
            project=str(self.project),
            names=names,
            iterations=[a for a in extra if "=" in a],
            # the CLI's default --max-parallel is 2
            max_parallel=int(extra[extra.index("--max-parallel") + 1])
            if "--max-parallel" in extra
            else 2,
            only_missing="--all" not in extra,
        )
        items = resolve(request).items
        cmd = [FLOR, "replay", "--apply", ",".join(names), *extra, "--dry-run"]
        shown = subprocess.run(cmd, env=env, cwd=self.project, capture_output=True, text=True)
        rows = [re.split(r"\s{2,}", line.strip()) for line in shown.stdout.splitlines()]
        estimates = [float(row[4]) for row in rows if re.fullmatch(r"\d{8}T\d+-[0-9a-f]+", row[0])]
        if len(estimates) != len(items):
            raise RuntimeError(f"--dry-run planned {len(estimates)} items, resolve {len(items)}")
        starts = re.findall(r"^\+ ([\d.]+) s before the first replay of (\S+):", shown.stdout, re.M)
        return {
            "items": [
                {
                    "iterations": "all" if i.iterations is None else list(i.iterations),
                    "run_level": i.run_level,
                    "estimated_s": estimated,
                }
                for i, estimated in zip(items, estimates, strict=True)
            ],
            "servers": [{"script": script, "estimated_s": float(s)} for s, script in starts],
        }

    def replay(self, names: list[str], extra: list[str], env_extra: dict) -> dict:
        env, marks = self.env(**env_extra)
        plan = self.plan(names, extra, env)
        cmd = [FLOR, "replay", "--apply", ",".join(names), *extra]
        offset = self.log.stat().st_size if self.log.exists() else 0
        res = rc.run_script(cmd, self.project, env, self.log)
        replays = replays_since(self.project, res["started"])
        output = self.log.read_text(errors="replace")[offset:]
        # what each fork server this command forked from measured of its imports, as said
        imports = [float(s) for s in re.findall(r"fork from one process that imported .* in ([\d.]+) s", output)]  # fmt: skip
        return (
            res
            | {"plan": plan["items"], "servers": plan["servers"], "imports": imports}
            | {"replays": replays, "flow": flow_times(output, res)}
            | rc.phases(self.marks_since(marks))
        )


def flow_times(output: str, res: dict) -> dict:
    """Seconds from the command's launch to its flow run's start, of the flow run (Prefect's
    log lines "Beginning flow run" and the flow's "Finished in state"), and after it."""
    stamps = {}
    for line in output.splitlines():
        m = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) \| \w+ +\| Flow run '[^']*' - (.*)", line)
        if m and (m[4].startswith("Beginning flow run") or m[4].startswith("Finished in state")):
            key = "begin" if m[4].startswith("Beginning") else "finish"
            stamps[key] = int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    if len(stamps) != 2:
        return {}
    launch = datetime.datetime.fromtimestamp(res["started"])
    t0 = launch.hour * 3600 + launch.minute * 60 + launch.second + launch.microsecond / 1e6
    before = (stamps["begin"] - t0) % 86400
    flow = (stamps["finish"] - stamps["begin"]) % 86400
    return {"before_s": before, "flow_s": flow, "after_s": res["wall_s"] - before - flow}


def main() -> None:
    p = params()
    bench = Bench(p, Path.cwd())
    cm.make_project(bench.project, "flor_flows")
    rc.warm_imports("flor_flows")
    print("[real] original", file=sys.stderr, flush=True)
    original = bench.record(bench.project)
    cm.make_project(bench.root / "scratch", "flor_flows", sfx="_r")
    print("[real] scratch", file=sys.stderr, flush=True)
    scratch = bench.record(bench.root / "scratch")
    truth = {k: store_values(bench.root / "scratch", cm.name(k, "_r"), "forward") for k in cm.KINDS}
    (bench.project / "train.py").write_text(cm.script("flor_flows", "_r"))

    started = bench.server("start", bench.home)  # in the project: it prepares train.py's replays
    url = next((w for w in started["stdout"].split() if w.startswith("http")), None)
    if url is None:
        raise RuntimeError(f"no URL in `flor-flows server start` output: {started['stdout']!r}")
    api = {"PREFECT_API_URL": url.rstrip("."), "PREFECT_HOME": str(bench.home)}
    runs, fidelity = {}, {}
    try:
        extras = {  # kind: its statement, the options
            "start": ("start", []),  # the first command: its fork server is prepared
            "end": ("end", []),
            "run": ("run", ["--iter", "epoch=none"]),
            "step": ("step", ["--max-parallel", str(p["step_parallel"])]),
            "run_default": ("run", ["--all"]),  # the run-level statement again, as typed
            "start_again": ("start", ["--all"]),  # a later command: the fork server is up
        }
        for kind, (stmt, extra) in extras.items():
            print(f"[real] replay {kind}", file=sys.stderr, flush=True)
            try:
                runs[kind] = bench.replay([cm.name(stmt, "_r")], extra, api)
            except Exception as exc:  # noqa: BLE001 - reported in its cell; the others go on
                runs[kind] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                continue
            got = store_values(bench.project, cm.name(stmt, "_r"), "replay")
            fidelity[kind] = rc.compare(got, truth[stmt])
    finally:
        bench.server("stop", bench.home)

    # The command line without a server: the first call starts the background one.
    cli_home = bench.root / "prefect-cli"
    cli_env = {"PREFECT_HOME": str(cli_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    cli = {}
    (bench.project / "train.py").write_text(cm.script("flor_flows", "_c", kinds=("start",)))
    try:
        for call, extra in (("first", []), ("second", ["--all"])):
            print(f"[real] cli {call}", file=sys.stderr, flush=True)
            try:
                cli[call] = bench.replay([cm.name("start", "_c")], extra, cli_env)
            except Exception as exc:  # noqa: BLE001
                cli[call] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        bench.server("stop", cli_home)
    got = store_values(bench.project, cm.name("start", "_c"), "replay")
    fidelity["cli"] = rc.compare(got, truth["start"])
    emit(original=original, scratch=scratch, server_start=started, runs=runs, cli=cli,
         fidelity=fidelity, load_at_end=os.getloadavg())  # fmt: skip


if __name__ == "__main__":
    os.environ.pop("FLOR_IMPL", None)
    t0 = time.perf_counter()
    main()
