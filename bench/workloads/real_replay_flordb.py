"""FlorDB 4.0.1's side of the real-script replay benchmark (run on the FlorDB venv's python).

BENCH_PARAMS: argv (the script's options, e.g. ["--epochs", "20"]).

In ./project (a git repo) train.py (workloads/real_torch_flordb.py) is recorded once with the
same options as ours; the new version (the four statements of real_common.STATEMENTS, suffix
_r) is recorded from scratch in ./scratch for the ground truth, then written into ./project's
working tree and each statement is computed by FlorDB's own replay, driven as its docs say,
non-interactively: `python -m flordb replay --apply NAME` with "y" on stdin for its prompt,
`--iter epoch=all` for the statements inside the epoch loop (all epochs, as ours; the
step-level one is inside `train()`, defined outside the loop, which FlorDB's level analysis
would otherwise take for run-level). The venv's bin is first on PATH: FlorDB launches the
replayed script as a bare `python`. Values are read from FlorDB's SQLite cache at the end.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path

import real_common as cm
import replay_common as rc
from benchlib import emit, params


def db_values(project: Path, name: str, source: str) -> list[tuple]:
    """((epoch, position), value) of `name` in FlorDB's cache of `project`, in write order."""
    db = project / ".flor" / f"{project.name}.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT ctx, value FROM logs WHERE value_name = ? AND source = ? ORDER BY rowid",
            (name, source),
        ).fetchall()
    out = []
    for ctx, value in rows:
        loops = json.loads(ctx) if ctx else None
        epoch = next((c["iteration"] for c in loops or [] if c["name"] == "epoch"), None)
        out.append((epoch, float(value)))
    return cm.keyed(out)


def main() -> None:
    p = params()
    bench = rc.FlorDBBench(Path.cwd(), "real-replay-flordb.log", p["argv"])
    cm.make_project(bench.project, "flordb")
    rc.warm_imports("flordb")
    print("[real-flordb] original", file=sys.stderr, flush=True)
    original = bench.record(bench.project, "original")
    scratch_project = bench.root / "scratch"
    cm.make_project(scratch_project, "flordb", sfx="_r")
    print("[real-flordb] scratch", file=sys.stderr, flush=True)
    scratch = bench.record(scratch_project, "scratch")
    (bench.project / "train.py").write_text(cm.script("flordb", "_r"))
    runs, fidelity = {}, {}
    for kind in cm.KINDS:
        print(f"[real-flordb] replay {kind}", file=sys.stderr, flush=True)
        try:
            options = [] if kind == "run" else ["--iter", "epoch=all"]
            runs[kind] = bench.replay(cm.name(kind, "_r"), options, f"replay-{kind}")
        except Exception as exc:  # noqa: BLE001 - reported in its cell; the others go on
            runs[kind] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    for kind in cm.KINDS:
        name = cm.name(kind, "_r")
        try:
            fidelity[kind] = rc.compare(
                db_values(bench.project, name, "replay"),
                db_values(scratch_project, name, "forward"),
            )
        except Exception as exc:  # noqa: BLE001
            fidelity[kind] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    emit(original=original, scratch=scratch, runs=runs, fidelity=fidelity)


if __name__ == "__main__":
    os.environ.pop("FLOR_IMPL", None)
    main()
