"""Plan estimates against actual replay times, per planned item, on a short real torch script.

    cd "$(mktemp -d)" && <project>/.venv/bin/python <project>/bench/workloads/estimate_check.py

In ./project (a git repo of workloads/real_torch.py, a `flor-flows server start` of its own
PREFECT_HOME) it records runs of the script (`--epochs 10` by default) and replays one
statement of the new version (real_common.STATEMENTS) per `flor-flows replay --apply NAME`
command, as workloads/real_replay.py does, each group of cases right after recording its
runs (GROUPS): epoch-level (`lr_now`), run-level (`w_norm --iter epoch=none`, and with
`--all`), step-level (`grad_norm`) under `--max-parallel 2` (two segments at once) and 1,
and an epoch-level statement over two runs one after the other (the second forks from a
ready fork server) and at once. For each planned item it prints the estimate (from
`resolve(request)`, what `--dry-run` prints) and the seconds of its replay record, the
replayed scripts' phases and how busy the rest of the host was; exits 1 when an estimate is
off by more than --tolerance. The step-level cases also give the contention measure: the
replayed epochs and set-up of two segments at once against one replay of them all.

    .../estimate_check.py contention [--threads 1,0]

one torch epoch of the script's model (`train()` of real_torch.py) in one process alone,
then in two at once, torch on 1 thread and on its default threads, alternated --repeat
times, with the cores other processes kept busy meanwhile.

    .../estimate_check.py fork

two recorded runs replayed one after the other by fresh interpreters and through the fork
server (the first replay starts it, the second forks from it ready), --repeat times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
FLOR = str(Path(sys.executable).parent / "flor-flows")

# Each group: the runs recorded just before its replays (seed -> epochs, None: --epochs), so
# that the record's timings and the replays' meet the host's load of the same few minutes,
# then its cases: (case, statement of real_common.STATEMENTS, options of `flor-flows replay`).
GROUPS = [
    ({1: None}, [("epoch", "start", [])]),
    ({2: None}, [("run", "run", ["--iter", "epoch=none"]), ("run --all", "run", ["--all"])]),
    (
        {3: None},
        [
            ("step x2", "step", ["--max-parallel", "2"]),
            ("step x1", "step", ["--max-parallel", "1", "--all"]),
        ],
    ),
    (
        {4: None, 5: 3},
        [
            ("2 runs x1", "end", ["--max-parallel", "1"]),
            ("2 runs x2", "end", ["--max-parallel", "2", "--all"]),
        ],
    ),
]


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


class Project:
    """./project in `root`: a git repo of workloads/real_torch.py, its store, and a Prefect
    server of its own (`flor-flows server start`) while open."""

    def __init__(self, root: Path) -> None:
        import real_common as cm
        import replay_common as rc

        self.root, self.path, self.log = root, root / "project", root / "check.log"
        self.server = {"PREFECT_HOME": str(root / "prefect")}
        self.server["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
        cm.make_project(self.path, "flor_flows")
        rc.warm_imports("flor_flows")
        started = subprocess.run(
            [FLOR, "server", "start"], env=self.env(), capture_output=True, text=True
        )
        url = next(w for w in started.stdout.split() if w.startswith("http")).rstrip(".")
        self.server["PREFECT_API_URL"] = url
        settle()  # the server's start keeps a core busy for a while: not in the first record

    def env(self, **extra: str) -> dict[str, str]:
        import replay_common as rc

        return rc.clean_env(self.server | extra)

    def close(self) -> None:
        subprocess.run([FLOR, "server", "stop"], env=self.env(), capture_output=True)

    def record(self, runs: dict[int, int]) -> None:
        """Record the script's first version once per seed -> epochs, then write the new one."""
        import real_common as cm
        import replay_common as rc

        (self.path / "train.py").write_text(cm.script("flor_flows"))
        for seed, epochs in runs.items():
            argv = ["--epochs", str(epochs), "--lr", "0.05", "--seed", str(seed)]
            marks = self.root / f"record-{seed}.jsonl"
            env = rc.clean_env({"REPLAY_MARKS": str(marks)})
            res = rc.run_script([sys.executable, "train.py", *argv], self.path, env, self.log)
            print(f"recorded seed {seed}: {res['wall_s']:.1f} s ({children(marks)})", flush=True)
        (self.path / "train.py").write_text(cm.script("flor_flows", "_r"))

    def replay(
        self, tag: str, name: str, options: list[str], **env: str
    ) -> tuple[list[tuple[str, float]], list[dict]]:
        """`flor-flows replay --apply NAME OPTIONS`: (run uid, seconds) of its replay
        records, in start order, and the replayed scripts' phases."""
        import replay_common as rc

        marks = self.root / f"replay-{tag}.jsonl"
        command = [FLOR, "replay", "--apply", name, *options]
        busy0, t0 = busy_cores()
        ours0 = _children_cpu()
        res = rc.run_script(command, self.path, self.env(REPLAY_MARKS=str(marks), **env), self.log)
        busy1, t1 = busy_cores()
        others = (busy1 - busy0 - _children_cpu() + ours0) / (t1 - t0)
        print(f"{'':<10} other processes (the Prefect server's included): {others:.2f} cores")
        return replayed(self.path, res["started"] - 1), rc.phases(rc.read_marks(marks))["processes"]


def planned(project: Path, name: str, options: list[str]) -> list[Any]:
    """The items `flor-flows replay --apply NAME OPTIONS --dry-run` prints, from the same call."""
    from flor_flows.replay.backfill import BackfillRequest, resolve

    def value(flag: str, default: str | None = None) -> str | None:
        return options[options.index(flag) + 1] if flag in options else default

    request = BackfillRequest(
        project=str(project),
        names=[name],
        where=value("--where"),
        iterations=[value("--iter")] if "--iter" in options else [],
        max_parallel=int(value("--max-parallel", "2") or 2),
        only_missing="--all" not in options,
    )
    return resolve(request).items


def replayed(project: Path, since: float) -> list[tuple[str, float]]:
    """(run uid, seconds) of the replay records started after `since`, in start order."""
    db = project / ".flor-flows" / "store.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT runs.uid, replays.started_at, replays.ended_at FROM replays"
            " JOIN runs ON runs.id = replays.run_id ORDER BY replays.started_at"
        ).fetchall()
    stamps = [(uid, _ts(start), _ts(end)) for uid, start, end in rows]
    return [(uid, end - start) for uid, start, end in stamps if start >= since]


def _ts(text: str) -> float:
    stamp = datetime.datetime.fromisoformat(text)
    return stamp.replace(tzinfo=stamp.tzinfo or datetime.UTC).timestamp()


def children(marks: Path | list[dict]) -> str:
    """Each replayed (or recorded) script's set-up and loop seconds, from its marks."""
    import replay_common as rc

    rows = rc.phases(rc.read_marks(marks))["processes"] if isinstance(marks, Path) else marks
    return ", ".join(f"set-up {r['setup_s']:.1f} + loop {r.get('loop_s', 0):.1f}" for r in rows)


def check(epochs: int, root: Path, tolerance: float) -> int:
    """Record, replay each case, print estimate vs actual per item; 1 if one is off."""
    import real_common as cm

    print(f"# {uptime()}\n# work in {root}", flush=True)
    project = Project(root)
    worst = 0.0
    try:
        for runs, cases in GROUPS:
            project.record({seed: count or epochs for seed, count in runs.items()})
            where = ["--where", f"seed in ({', '.join(map(str, runs))}, -1)"]
            phases = {}
            for case, kind, options in cases:
                name = cm.name(kind, "_r")
                items = planned(project.path, name, [*where, *options])
                actual, scripts = project.replay(case.replace(" ", "_"), name, [*where, *options])
                for item, (uid, seconds) in zip(items, actual, strict=True):
                    assert uid == item.run_uid, (case, uid, item.run_uid)
                    error = (item.estimated_seconds - seconds) / seconds
                    worst = max(worst, abs(error))
                    span = _span(item.iterations) + (" +run" if item.run_level else "")
                    print(
                        f"{case:<10} {uid[-6:]:<6} {span:<12} est {item.estimated_seconds:5.1f}"
                        f" s  actual {seconds:5.1f} s  {error:+4.0%}",
                        flush=True,
                    )
                print(f"{'':<10} replayed scripts: {children(scripts)}", flush=True)
                phases[case] = scripts
            if "step x2" in phases:
                _contention(phases["step x2"], phases["step x1"])
            print(f"# {uptime()}", flush=True)
    finally:
        project.close()
    print(f"worst error {worst:.0%} (tolerance {tolerance:.0%})")
    return int(worst > tolerance)


def _contention(together: list[dict], alone: list[dict]) -> None:
    """Two segments at once against one replay of the same epochs: how much longer their
    scripts' set-up (each) and epochs (in all) took."""
    setup = statistics.mean(p["setup_s"] for p in together) / alone[0]["setup_s"]
    loop = sum(p["loop_s"] for p in together) / alone[0]["loop_s"]
    print(f"contention: two at once took x{setup:.2f} on the set-up, x{loop:.2f} on the epochs")


def _span(iterations: tuple[int, ...] | None) -> str:
    if iterations is None:
        return "all"
    return f"{iterations[0]}-{iterations[-1]}" if iterations else "none"


def _both(other: int) -> list[str]:
    """Options replaying runs 1 and 2 one after the other, as a request of its own."""
    return ["--where", f"seed in (1, 2, {other})", "--all", "--max-parallel", "1"]


def fork(root: Path, repeat: int) -> None:
    """Replay records of two runs one after the other, fresh interpreters against the fork
    server (the first replay starts it, the second forks from it ready), `repeat` times."""
    import real_common as cm

    print(f"# {uptime()}\n# work in {root}", flush=True)
    project = Project(root)
    found: dict[str, list[float]] = {"start": [], "saved": []}
    try:
        project.record({1: 3, 2: 3})
        name = cm.name("start", "_r")
        for k in range(repeat):
            # another --where each time: another request, whose runs are replayed again
            fresh, _ = project.replay(
                f"fresh-{k}", name, _both(-2 * k - 1), FLOR_FLOWS_REPLAY_FORK="0"
            )
            forked, _ = project.replay(
                f"forked-{k}", name, _both(-2 * k - 2), FLOR_FLOWS_REPLAY_FORK="1"
            )
            (_, fresh1), (_, fresh2) = fresh
            (_, cold), (_, warm) = forked
            found["start"].append(cold - fresh1)
            found["saved"].append(fresh2 - warm)
            print(
                f"fresh {fresh1:.2f} s, {fresh2:.2f} s; forked: first (starts the server) "
                f"{cold:.2f} s, second {warm:.2f} s",
                flush=True,
            )
    finally:
        project.close()
    start, saved = (statistics.median(found[k]) for k in ("start", "saved"))
    print(f"median: the first forked replay {start:+.2f} s, the second {-saved:+.2f} s")
    print(f"# {uptime()}")


EPOCH = """
import argparse, sys, time
sys.path.insert(0, {here!r})
import torch
from torch import optim
from torch.utils.data import DataLoader, TensorDataset
import real_torch as rt
if {threads}:
    torch.set_num_threads({threads})
torch.manual_seed(1)
loader = DataLoader(TensorDataset(*rt.synthetic_mnist(5000, seed=1234)), batch_size=64,
                    shuffle=True)
model = rt.Net()
optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
args = argparse.Namespace(log_interval=10**9)
rt.train(args, model, "cpu", loader, optimizer, 0)  # warm-up
for epoch in range({epochs}):
    t = time.perf_counter()
    rt.train(args, model, "cpu", loader, optimizer, epoch)
    print("EPOCH", time.perf_counter() - t, flush=True)
"""


def busy_cores() -> tuple[float, float]:
    """The machine's busy and total CPU seconds so far (/proc/stat), to take differences of."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / ticks, time.perf_counter()


def settle(quiet: float = 0.5, within: float = 60.0) -> None:
    """Wait (up to `within` s) until the host keeps fewer than `quiet` cores busy for 2 s."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        busy0, t0 = busy_cores()
        time.sleep(2.0)
        busy1, t1 = busy_cores()
        if (busy1 - busy0) / (t1 - t0) < quiet:
            return


def _children_cpu() -> float:
    """CPU seconds of this process's ended children (and theirs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def epochs_at_once(processes: int, threads: int, epochs: int) -> tuple[list[float], float]:
    """The seconds of each training epoch in `processes` processes started together, and
    the cores the rest of the machine kept busy meanwhile (other users: background load)."""
    code = EPOCH.format(here=str(HERE), threads=threads, epochs=epochs)
    busy0, t0 = busy_cores()
    ours0 = _children_cpu()
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    found = []
    for proc in procs:
        out, _ = proc.communicate()
        found += [float(line.split()[1]) for line in out.splitlines() if line.startswith("EPOCH")]
    busy1, t1 = busy_cores()
    return found, (busy1 - busy0 - _children_cpu() + ours0) / (t1 - t0)


def contention(epochs: int, repeat: int, threads_tried: list[int]) -> None:
    """Epoch seconds alone, then two at once, `repeat` times, torch on each of
    `threads_tried` threads (0: its default, as many as cores); each pair's ratio with the
    cores other users kept busy meanwhile, then the median ratio."""
    print(f"# {uptime()}; os.cpu_count() = {os.cpu_count()}", flush=True)
    for threads in threads_tried:
        label = f"{threads} thread(s)" if threads else "default threads"
        ratios = []
        for _ in range(repeat):  # alternated, so that a change of the machine's load hits both
            alone, other_alone = epochs_at_once(1, threads, epochs)
            paired, other_paired = epochs_at_once(2, threads, epochs)
            a, p = statistics.median(alone), statistics.median(paired)
            ratios.append(p / a)
            print(
                f"torch {label}: alone {a:.2f} s/epoch, two at once {p:.2f} s/epoch: x{p / a:.2f}"
                f" (other users kept {other_alone:.2f} / {other_paired:.2f} cores busy)",
                flush=True,
            )
        print(f"torch {label}: median x{statistics.median(ratios):.2f}", flush=True)
    print(f"# {uptime()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", nargs="?", choices=("check", "contention", "fork"), default="check")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.25)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--threads", default="1,0", help="contention: torch threads, 0: default")
    args = parser.parse_args()
    if args.what == "contention":
        contention(args.epochs or 3, args.repeat, [int(t) for t in args.threads.split(",")])
        return
    root = (args.workdir or Path(tempfile.mkdtemp(prefix="estimate-check-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.what == "fork":
        fork(root, args.repeat)
        code = 0
    else:
        code = check(args.epochs or 10, root, args.tolerance)
    print(f"# took {time.perf_counter() - started:.0f} s")
    sys.exit(code)


if __name__ == "__main__":
    main()
