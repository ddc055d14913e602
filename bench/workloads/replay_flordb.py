"""FlorDB 4.0.1's side of the replay benchmark (run on the FlorDB venv's python).

BENCH_PARAMS: sizes (flor.arg values of workloads/replay_train.py), reps.

In ./project (a git repo) train.py, importing flordb, is recorded once; then, `reps` times,
the new version with the three hindsight statements (names suffixed _r<rep>) is written into
the working tree and each statement is computed over the recorded run by FlorDB's own replay,
driven as its docs say, non-interactively: `python -m flordb replay --apply NAME` with "y"
on stdin for its confirmation prompt (the step-level statement with `--iter epoch=all --iter
step=all`, so that it logs every step as ours does; its default logs only the last step of
each epoch, at the same cost: 4.0.1 recomputes from iteration 0 either way). The venv's bin is
first on PATH: FlorDB launches the replayed script as a bare `python`. Once per rep the new
script is also recorded from scratch in a project of its own; its values are the reference.
The replayed values are read at the end (reading them earlier could add a run to replay).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import replay_common as rc
from benchlib import emit, params

READ_VALUES = """
import json, math, os
import flordb as flor
out = {}
for name in json.loads(os.environ["BENCH_NAMES"]):
    df = flor.dataframe(name)
    rows = []
    if name in df.columns:
        df = df[df[name].notna()]
        loops = [c for c in ("epoch", "step") if c in df.columns]
        for _, row in df.iterrows():
            key = [None if row[c] != row[c] else int(float(row[c])) for c in loops]
            rows.append([key, float(row[name])])
    out[name] = rows
with open(os.environ["BENCH_VALUES"], "w") as f:
    json.dump(out, f)
"""


class Bench(rc.FlorDBBench):
    def __init__(self, p: dict, root: Path) -> None:
        super().__init__(root, "replay-flordb.log", rc.train_argv(p["sizes"]))

    def replay_kind(self, kind: str, rep: int) -> dict:
        options = ["--iter", "epoch=all", "--iter", "step=all"] if kind == "step" else []
        return self.replay(rc.name(kind, f"_r{rep}"), options, f"replay-{kind}{rep}")

    def values(self, project: Path, names: list[str]) -> dict[str, list]:
        out = self.root / f"values-{project.name}.json"
        env = rc.clean_env({"BENCH_NAMES": json.dumps(names), "BENCH_VALUES": str(out)})
        rc.run_script([sys.executable, "-c", READ_VALUES], project, env, self.log)
        return {
            k: [(tuple(key), v) for key, v in rows]
            for k, rows in json.loads(out.read_text()).items()
        }


def main() -> None:
    p = params()
    bench = Bench(p, Path.cwd())
    rc.make_project(bench.project, "flordb")
    rc.warm_imports("flordb")
    original = bench.record(bench.project, "original")
    runs: dict[str, list[dict]] = {kind: [] for kind in rc.KINDS}
    scratch = []
    for rep in range(p["reps"]):
        scratch_project = bench.root / f"scratch{rep}"
        rc.make_project(scratch_project, "flordb", sfx=f"_s{rep}")
        scratch.append(bench.record(scratch_project, f"scratch{rep}"))
        (bench.project / "train.py").write_text(rc.script("flordb", f"_r{rep}"))
        kinds = rc.KINDS if rep % 2 == 0 else rc.KINDS[::-1]
        for kind in kinds:
            print(f"[replay-flordb] rep {rep} {kind}", file=sys.stderr, flush=True)
            try:
                runs[kind].append(bench.replay_kind(kind, rep))
            except Exception as exc:  # noqa: BLE001 - reported in its cell; the others go on
                runs[kind].append({"error": f"{type(exc).__name__}: {exc}"[:500]})
    replayed = bench.values(bench.project, [rc.name(k, "_r0") for k in rc.KINDS])
    reference = bench.values(bench.root / "scratch0", [rc.name(k, "_s0") for k in rc.KINDS])
    fidelity = {
        kind: rc.compare(replayed[rc.name(kind, "_r0")], reference[rc.name(kind, "_s0")])
        for kind in rc.KINDS
    }
    emit(original=original, scratch=scratch, runs=runs, fidelity=fidelity)


if __name__ == "__main__":
    os.environ.pop("FLOR_IMPL", None)
    main()
