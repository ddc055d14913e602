"""The `real_replay` section (issue 13's benchmark table): a real-style script, replayed.

workloads/real_replay.py (flor_flows, on its venv) and real_replay_flordb.py (FlorDB 4.0.1, on
its venv, when it is there) each record workloads/real_torch.py (or its FlorDB twin) once and
replay one hindsight statement at a time; this module turns their figures into the section.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from harness import FLORDB, FLORDB_PY, OURS, QUICK, Failed, Row, Runner, Section, Sizes
from report import compact, phase_cell

FULL_ARGV = ["--epochs", "20", "--lr", "0.05", "--seed", "1"]
QUICK_ARGV = ["--epochs", "3", "--n-train", "1000", "--lr", "0.05", "--seed", "1"]
LABELS = {
    "start": "epoch-level `lr_now` at the start of the epoch body, all epochs",
    "end": "epoch-level `lr_next` after `scheduler.step()`, all epochs",
    "run": "run-level `w_norm` after the loop (ours: `--iter epoch=none`; FlorDB: no `--iter`)",
    "step": "step-level `grad_norm` after `loss.backward()` in `train()`, all epochs "
    "(ours: `--max-parallel 2`)",
}


def m_real_replay(runner: Runner, sz: Sizes) -> Section:
    """Issue 13's table: one recorded run of a real-style script, one replay per statement."""
    ours = OURS
    theirs = FLORDB if FLORDB_PY.exists() else None
    argv = QUICK_ARGV if sz is QUICK else FULL_ARGV
    load_before = uptime()
    res: dict = {}
    for impl, script, p in (
        (theirs, "real_replay_flordb.py", {"argv": argv}),
        (ours, "real_replay.py", {"argv": argv, "step_parallel": 2}),
    ):
        if impl is None:
            continue
        try:
            res[impl.key] = runner.run(impl, script, p, timeout=7200)
        except Failed as e:
            res[impl.key] = e
    load_after = uptime()
    o, t = res.get(ours.key), res.get(theirs.key) if theirs else None

    def val(r: dict | Exception | None, fn: Callable[[dict], float]) -> float | Exception | None:
        if r is None or isinstance(r, Exception):
            return r
        try:
            return fn(r)
        except (KeyError, IndexError, TypeError, ZeroDivisionError, ValueError) as e:
            return Failed(f"{type(e).__name__}: {e}")

    def both(fn: Callable[[dict], float], ours_fn: Callable[[dict], float] | None = None) -> dict:
        out = {ours.key: val(o, ours_fn or fn)}
        if theirs:
            out[theirs.key] = val(t, fn)
        return out

    def wall(kind: str) -> Callable[[dict], float]:
        def f(r: dict) -> float:
            x = r["runs"][kind]
            if "error" in x:
                raise ValueError(x["error"])
            return x["wall_s"]

        return f

    def pct(kind: str) -> Callable[[dict], float]:
        return lambda r: wall(kind)(r) / r["original"]["wall_s"] * 100

    def setup(r: dict) -> float:
        return r["original"]["processes"][0]["setup_s"]

    rows = [
        Row("original run: forward, recorded (ours: default checkpoint policy)", "s",
            both(lambda r: r["original"]["wall_s"])),
        Row("its set-up: launch to the first epoch", "s", both(setup)),
        Row("the new script re-run from scratch, recorded", "s",
            both(lambda r: r["scratch"]["wall_s"])),
    ]  # fmt: skip
    rows += [
        Row("`flor-flows server start` in the project, wall (ours)", "s",
            {ours.key: val(o, lambda r: r["server_start"]["wall_s"])}),
        Row("... of which the imports of train.py's fork server it prepared", "s",
            {ours.key: val(o, lambda r: r["server_start"]["imports"][0])}),
    ]  # fmt: skip
    run_goal = val(o, lambda r: setup(r) + 0.5)
    for kind, label in LABELS.items():
        goal = {"start": 10, "end": 10, "step": 60}.get(kind)
        rows.append(
            Row(
                label,
                "s",
                both(wall(kind)),
                run_goal if kind == "run" and isinstance(run_goal, float) else None,
            )
        )
        rows.append(Row("... as % of the original run", "%", both(pct(kind)), goal))
    rows.append(
        Row(
            "run-level `w_norm` with no `--iter` (as a user types it; `--all`)",
            "s",
            {ours.key: val(o, wall("run_default"))},
        )
    )
    again = "epoch-level `lr_now` again (`--all`), a later command: its fork server is up"
    rows.append(Row(again, "s", {ours.key: val(o, wall("start_again"))}))
    rows.append(
        Row("... as % of the original run", "%", {ours.key: val(o, pct("start_again"))}, 10)
    )
    for call in ("first", "second"):
        rows.append(
            Row(
                f"`flor-flows replay --apply lr_now_c` (1 epoch-level run), no server running: "
                f"{call} call, wall",
                "s",
                {ours.key: val(o, lambda r, c=call: cli(r, c)["wall_s"])},
            )
        )
    rows.append(
        Row(
            "... second call minus the replay's own work (its replay record, the imports of "
            "the fork server it started)",
            "s",
            {ours.key: val(o, lambda r: cli_overhead(cli(r, "second")))},
            3,
        )
    )
    rows.append(
        Row(
            "plan estimate vs actual, worst item: abs(est - actual) / actual",
            "%",
            {ours.key: val(o, lambda r: max(abs(e["error_pct"]) for e in estimates(r)))},
            25,
        )
    )
    rows.append(
        Row(
            "replayed values not equal to the from-scratch run's (all statements)",
            "",
            both(unreproduced),
            0,
        )
    )
    title = (
        "Hindsight replay of a real-style script (issue 13): `workloads/real_torch.py`, "
        f"{argv[1]} epochs, one recorded run, one replay per statement"
    )
    return Section(title, rows, notes(o, t, argv, load_before, load_after), extra=extra(o, t))


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "load average: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())


def cli(r: dict, call: str) -> dict:
    x = r["cli"][call]
    if "error" in x:
        raise ValueError(x["error"])
    return x


def cli_overhead(x: dict) -> float:
    """The command's wall less the replay's own work: its replay records and the imports of
    the fork server it started (the script's set-up, paid once)."""
    return x["wall_s"] - sum(rp["seconds"] for rp in x["replays"]) - started_imports(x)


def started_imports(x: dict) -> float:
    """What the imports of the fork server the command started took (0: it started none)."""
    if not x.get("servers"):
        return 0.0
    if not x.get("imports"):
        raise ValueError("the plan starts a fork server, the command announced none")
    return x["imports"][0]


def estimates(r: dict) -> list[dict]:
    """Each planned item (in plan order) against the replay record started in that order."""
    out = []
    calls = [(k, x) for k, x in r["runs"].items()] + [(f"cli-{k}", x) for k, x in r["cli"].items()]
    for kind, x in calls:
        if "error" in x:
            continue
        plan, replays = x["plan"], x["replays"]
        if len(plan) != len(replays):
            raise ValueError(f"{kind}: {len(plan)} planned items, {len(replays)} replay records")
        for item, rp in zip(plan, replays, strict=True):
            err = (item["estimated_s"] - rp["seconds"]) / rp["seconds"] * 100
            out.append({"kind": kind, **item, "actual_s": rp["seconds"], "error_pct": err})
        for server in x.get("servers", []):  # the fork server's imports, paid once
            actual = started_imports(x)
            err = (server["estimated_s"] - actual) / actual * 100
            out.append({"kind": f"{kind}: its fork server's imports", "iterations": "-",
                        "run_level": False, "estimated_s": server["estimated_s"],
                        "actual_s": actual, "error_pct": err})  # fmt: skip
    return out


def unreproduced(r: dict) -> int:
    n = 0
    for c in r["fidelity"].values():
        if "error" in c:
            raise ValueError(c["error"])
        n += c["differ"] + c["scratch"] + c["replayed"] - 2 * c["matched"]
    return n


def _fmt(v: object) -> str:
    return f"{v:.2f}" if isinstance(v, float) else "-" if v is None else str(v)


def notes(o, t, argv: list[str], before: str, after: str) -> list[str]:  # noqa: ANN001
    out = [
        "The script (`bench/workloads/real_torch.py`, FlorDB twin `real_torch_flordb.py`): "
        "argparse options, a synthetic MNIST-like set (10 classes, 28x28, 5,000 train / 1,000 "
        "test images from fixed prototypes, shifts and noise, its own generator), a CNN "
        "(2 conv + 2 fc), `DataLoader(shuffle=True, batch_size=64)`, `train(args, model, "
        "device, loader, optimizer, epoch)` with a plain `for batch_idx, (data, target) in "
        "enumerate(loader)`, `test(model, device, loader)` logging `loss` and `acc`, "
        "`StepLR(step_size=1, gamma=0.8)` stepped at the end of each epoch; "
        "`flor.checkpointing(model=, optimizer=, scheduler=)` around `flor.loop('epoch', ...)`; "
        f"`torch.set_num_threads(1)`. Both recorded as `python train.py {' '.join(argv)}` "
        "(FlorDB's twin passes the options through `flor.arg`, which its replay restores).",
        "The new version adds `lr_now` (first line of the epoch body), `lr_next` (after "
        "`scheduler.step()`), `w_norm` (after the loop) and `grad_norm` (after "
        "`loss.backward()`); each replay computes one of them over the one recorded run.",
        "flor_flows: `.venv/bin/flor-flows replay --apply NAME` in the project, the whole "
        "command timed (the CLI's default `--max-parallel 2`), PREFECT_API_URL naming a `flor-flows server start` of the bench's own "
        "PREFECT_HOME, started once before the replays, in the project and in the commands' "
        "environment (as a user's shell runs it), and stopped after. Run in a project, "
        "`server start` prepares the fork server of its latest runs' script (`flor-flows "
        "prepare`: torch imported once, before it returns; its wall and those imports are "
        "the two rows after the original run); the commands run in the order of the rows, in "
        "one environment, and fork from it (kept by the warm process). FlorDB: `python -m "
        "flordb replay --apply NAME` (`--iter epoch=all` for the three statements inside the "
        "epoch loop) with `y` on stdin, the whole command timed.",
        "No-server rows: a fresh PREFECT_HOME, PREFECT_API_URL unset, no server running; "
        "the first call starts the background server, the second (`--all`, the same work) "
        "finds it; the replay's own work = the seconds of the store's replay record "
        "(`replays.started_at` to `ended_at`, from once its fork server is ready) plus the "
        "imports of the fork server the command started, as it announced them. Estimates: "
        "each item's estimate as `flor-flows replay --dry-run` prints it just before the "
        "command, in its environment (through the warm process, as the command plans), vs "
        "the replay records of that command, matched in start order; and the fork server "
        'imports the dry-run said the command waits for ("+ X s before the first replay '
        'of train.py") vs those the command announced ("... imported torch, ... in X s"), '
        "counted among the items.",
        "Values: every replayed value compared with the from-scratch run's (the new script "
        "recorded in a fresh repo) at the same (epoch, position in the epoch); not equal = "
        "different beyond 1e-9 relative + missing on either side.",
        f"Machine load (`uptime`) before: {before}; after: {after}.",
    ]
    for key, r in (("flor_flows", o), ("FlorDB", t)):
        if isinstance(r, dict):
            out.append(
                f"{key} values vs from scratch: "
                + "; ".join(
                    f"{k}: {c.get('matched')} of {c.get('scratch')} matched "
                    f"({c.get('replayed')} replayed), {c.get('differ')} differ, "
                    f"max abs diff {c.get('max_abs_diff')}"
                    for k, c in r["fidelity"].items()
                )
            )
            p = r["original"]["processes"][0]
            out.append(
                f"{key} original run: set-up {p['setup_s']:.2f} s, epoch loop "
                f"{p.get('loop_s', 0):.2f} s, total {r['original']['wall_s']:.2f} s."
            )
    return out


def extra(o, t) -> str:  # noqa: ANN001
    lines = []
    if isinstance(o, dict):
        lines += [
            "### flor_flows: every replay command (s; child phases from the script's marks, "
            "one figure per replay process)",
            "",
            "| statement | wall | planned items: iterations, estimated s | replay records s "
            "| re-logged values checked | child set-up | child epoch loop "
            "| launch to flow run / flow run / after |",
            "|---|---|---|---|---|---|---|---|",
        ]
        calls = list(o["runs"].items()) + [(f"cli-{k}", x) for k, x in o["cli"].items()]
        for kind, x in calls:
            if "error" in x:
                lines.append(f"| {kind} | failed: {x['error'][:200]} | | | | | | |")
                continue
            plan = "; ".join(
                f"{compact(i['iterations'])}{' +run' if i['run_level'] else ''}: "
                f"{i['estimated_s']:.2f}"
                for i in x["plan"]
            )
            plan += "".join(
                f"; + its fork server's imports: {server['estimated_s']:.2f} "
                f"(took {started_imports(x):.2f})"
                for server in x.get("servers", [])
            )
            recs = " + ".join(_fmt(rp["seconds"]) for rp in x["replays"])
            checked = " + ".join(_fmt(rp["checked"]) for rp in x["replays"])
            lines.append(
                f"| {kind} | {x['wall_s']:.2f} | {plan} | {recs} | {checked} "
                f"| {phase_cell(x, 'setup_s')} | {phase_cell(x, 'loop_s')} "
                f"| {' / '.join(_fmt(x.get('flow', {}).get(k)) for k in ('before_s', 'flow_s', 'after_s'))} |"
            )
        try:
            errs = estimates(o)
            worst = max(errs, key=lambda e: abs(e["error_pct"]))
            lines += ["", f"Worst estimate: {worst['kind']}, estimated "
                      f"{worst['estimated_s']:.2f} s, actual {worst['actual_s']:.2f} s "
                      f"({worst['error_pct']:+.0f} %)."]  # fmt: skip
        except (ValueError, KeyError) as e:
            lines += ["", f"Estimates not matched: {e}"]
    if isinstance(t, dict):
        lines += [
            "",
            "### FlorDB 4.0.1: every replay (s)",
            "",
            "| statement | wall (`python -m flordb replay`) | child set-up | child epoch loop |",
            "|---|---|---|---|",
        ]
        for kind, x in t["runs"].items():
            if "error" in x:
                lines.append(f"| {kind} | failed: {x['error'][:200]} | | |")
                continue
            lines.append(
                f"| {kind} | {x['wall_s']:.2f} | {phase_cell(x, 'setup_s')} | {phase_cell(x, 'loop_s')} |"
            )
    return "\n".join(lines) + "\n"
