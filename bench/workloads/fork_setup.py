"""Set-up paid once per worker: replays of one code version, fresh processes vs the fork server.

    .venv/bin/python bench/workloads/fork_setup.py [--epochs 3] [--rounds 2]

Records workloads/replay_train.py once (`epochs` epochs, `repeat` 2, a checkpoint every epoch)
in a scratch git repo, then replays its epoch-level hindsight statement (`w_norm`, after
`flor.log("acc", acc)`; the nested step loop is skipped) as one replay per epoch, the way
`engine.replay` runs a backfill's items: with fresh processes (no `engine.sharing_setup`),
then forked from the fork server (inside `engine.sharing_setup`, so the first replay of each
round also starts the server and pays the imports once), in alternating order for `rounds`
rounds. The new script is also run from scratch: every replayed value must equal its value.
Prints per-replay seconds and a JSON summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import replay_common as rc

SUFFIX = "_fork"


def values(store_url: str, name: str) -> list[tuple]:
    """((epoch,), value) of every value of `name` in the store."""
    from flor_flows.store import open_store

    frame = open_store(store_url).dataframe([name])
    frame = frame[frame[name].notna()]
    return [((int(row["epoch"]),), float(row[name])) for _, row in frame.iterrows()]


def record(project: Path, sizes: dict, log: Path) -> None:
    env = rc.clean_env({"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    rc.run_script([sys.executable, "train.py", *rc.train_argv(sizes)], project, env, log)


def replays(project: Path, epochs: int, workdir: Path, forked: bool) -> list[float]:
    """Seconds of each one-epoch replay of the recorded run, as `engine.replay` calls take."""
    from flor_flows.config import load_settings
    from flor_flows.replay import engine
    from flor_flows.store import open_store

    settings = load_settings(project)
    run = open_store(settings.store_url).runs().iloc[0]
    names = [rc.name("epoch", SUFFIX)]
    source = (project / "train.py").read_text()
    version = engine.prepare_version(
        project, run.code_version, {"train.py": source}, names, workdir, ["train.py"]
    )
    seconds = []
    with engine.sharing_setup() if forked else contextlib.nullcontext():
        for epoch in range(epochs):
            start = time.perf_counter()
            engine.replay(
                version, run.run_uid, "train.py", settings, names, (epoch,),
                on_output=lambda line: None, run_level=epoch == epochs - 1,
            )  # fmt: skip
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    sizes = {"epochs": args.epochs, "repeat": 2}
    os.environ.update(rc.clean_env({}))  # the replays inherit it: one thread, no PREFECT_*
    root = Path(tempfile.mkdtemp(prefix="bench-fork-setup-"))
    log = root / "scripts.log"
    project, scratch = root / "project", root / "scratch"
    rc.make_project(project, "flor_flows")
    rc.make_project(scratch, "flor_flows", sfx=SUFFIX)
    rc.warm_imports("flor_flows")
    record(project, sizes, log)
    record(scratch, sizes, log)
    (project / "train.py").write_text(rc.script("flor_flows", SUFFIX))
    truth = values(f"sqlite:///{scratch / '.flor-flows' / 'store.db'}", rc.name("epoch", SUFFIX))
    store_url = f"sqlite:///{project / '.flor-flows' / 'store.db'}"

    runs: dict[str, list[list[float]]] = {"fresh": [], "forked": []}
    fidelity = {}
    for round_ in range(args.rounds):
        for mode in ("fresh", "forked") if round_ % 2 == 0 else ("forked", "fresh"):
            workdir = root / f"work-{mode}-{round_}"
            runs[mode].append(replays(project, args.epochs, workdir, mode == "forked"))
            got = values(store_url, rc.name("epoch", SUFFIX))
            fidelity[f"{mode}-{round_}"] = rc.compare(got, truth)
            print(f"{mode} round {round_}: {[round(s, 2) for s in runs[mode][-1]]}", flush=True)
    every = {mode: [s for r in rounds for s in r] for mode, rounds in runs.items()}
    later = {mode: [s for r in rounds for s in r[1:]] for mode, rounds in runs.items()}
    summary = {
        "sizes": sizes,
        "replays_s": runs,
        "mean_s": {mode: statistics.mean(s) for mode, s in every.items()},
        "first_of_round_s": {m: [r[0] for r in rounds] for m, rounds in runs.items()},
        "mean_after_first_s": {mode: statistics.mean(s) for mode, s in later.items() if s},
        "fidelity": fidelity,
        "workdir": str(root),
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
