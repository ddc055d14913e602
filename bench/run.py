"""Side-by-side benchmark of FlorDB 4.0.1 and flor_flows.

    .venv/bin/python bench/run.py [--quick] [--only import,log,...,propagation]

Every measurement runs a script from bench/workloads/ in a fresh subprocess, inside a fresh scratch
git repo under bench/.work/, with FLOR_IMPL naming the module under test. FlorDB runs on the
interpreter of bench/.work/flordb-venv (made by bench/setup_flordb.sh), flor_flows on the
project's .venv. Writes bench/RESULTS.md (or bench/.work/RESULTS-quick.md with --quick); the
sections of metrics left out by --only are kept from the file's previous contents. Without the
FlorDB venv, only orchestration, propagation and replay run (the last two then measure flor_flows
alone).

The harness (implementations, sizes, the runner) is bench/harness.py, each section's
measurement a module of bench/sections/, the markdown bench/report.py.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import shutil
import subprocess
import sys
import time

from harness import BENCH, FULL, QUICK, WORK, Runner, Section, Sizes, become_subreaper, rel
from report import fmt, kept_sections, report, source_state
from sections.api import m_commit, m_import, m_log
from sections.orchestration import m_orchestration
from sections.propagation import m_propagation
from sections.query import m_query
from sections.real_replay import m_real_replay
from sections.replay import m_replay
from sections.train import m_train

METRICS = {
    "import": m_import,
    "log": m_log,
    "commit": m_commit,
    "query": m_query,
    "train": m_train,
    "orchestration": m_orchestration,
    "propagation": m_propagation,
    "replay": m_replay,
    "real_replay": m_real_replay,
}
# metrics that run without the FlorDB venv
FLORDB_OPTIONAL = {"orchestration", "propagation", "replay", "real_replay"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="small sizes, writes .work/RESULTS-quick.md"
    )
    ap.add_argument("--only", default=",".join(METRICS), help="comma list of " + ",".join(METRICS))
    args = ap.parse_args()
    only = [m.strip() for m in args.only.split(",") if m.strip()]
    if unknown := set(only) - set(METRICS):
        ap.error(f"unknown metrics: {sorted(unknown)}")

    WORK.mkdir(exist_ok=True)
    lock = (WORK / "run.lock").open("w")  # held until exit: runs would disturb each other
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("[bench] another bench/run.py is running; waiting for it to finish", flush=True)
        fcntl.flock(lock, fcntl.LOCK_EX)
    setup = subprocess.run(["bash", str(BENCH / "setup_flordb.sh")])
    if setup.returncode != 0:
        if set(only) - FLORDB_OPTIONAL:
            sys.exit(f"bench/setup_flordb.sh failed (exit {setup.returncode})")
        print("[bench] no FlorDB venv: its side of the comparison is skipped", flush=True)
    sz = QUICK if args.quick else FULL
    root = WORK / ("run-quick" if args.quick else "run-full")
    shutil.rmtree(root, ignore_errors=True)
    for sub in ("repos", "out", "logs"):
        (root / sub).mkdir(parents=True)
    become_subreaper()
    runner = Runner(root)

    started, t0, source0 = datetime.datetime.now(), time.perf_counter(), source_state()
    sections = {name: measure(name, runner, sz) for name in only}
    took = time.perf_counter() - t0
    dest = WORK / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md"
    if only == ["real_replay"]:  # its section is appended to RESULTS.md by hand (issue 13)
        dest = WORK / ("RESULTS-real_replay-quick.md" if args.quick else "RESULTS-real_replay.md")
    kept = kept_sections(dest, only, METRICS)
    sources = (source0, source_state())
    text = report(sections, kept, sys.argv[1:], started, took, args.quick, sources, METRICS)
    dest.write_text(text)
    print(f"[bench] wrote {rel(dest)}")


def measure(name: str, runner: Runner, sz: Sizes) -> Section:
    """One metric's section, its figures printed as they come."""
    print(f"[bench] {name} ...", flush=True)
    t = time.perf_counter()
    section = METRICS[name](runner, sz)
    for row in section.rows:
        print(
            f"  {row.measure}: "
            + "; ".join(f"{k}={fmt(v, row.unit)}" for k, v in row.values.items()),
            flush=True,
        )
    if section.extra:
        print(section.extra, flush=True)
    print(f"  ({time.perf_counter() - t:.0f} s)", flush=True)
    return section


if __name__ == "__main__":
    main()
