"""Hindsight statements over one recorded run: a backfill vs FlorDB's replay vs re-training."""

from __future__ import annotations

import statistics
from collections.abc import Callable

from harness import FLORDB, FLORDB_PY, OURS, Failed, Row, Runner, Section, Sizes, rel
from report import compact, phase_cell

REPLAY_KINDS = {  # statement kind -> what the table calls it
    "epoch": "epoch-level `w_norm` (end of the epoch body), all epochs",
    "step": "step-level `grad_norm` (every step), all epochs",
    "run": "run-level `final_loss` (after the loop)",
}


def m_replay(runner: Runner, sz: Sizes) -> Section:
    """Hindsight statements over one recorded run: a backfill vs FlorDB's replay vs re-training."""
    sizes = {"epochs": sz.replay_epochs, "repeat": sz.replay_repeat}
    common = {"sizes": sizes, "reps": sz.replay_reps}
    ours: dict | Failed
    theirs: dict | Failed | None = None
    try:
        ours = runner.run(
            OURS,
            "replay.py",
            common | {"step_parallel": 2, "prefect_home": str(runner.root / "prefect" / "replay")},
            timeout=7200,
        )
    except Failed as e:
        ours = e
    if FLORDB_PY.exists():
        try:
            theirs = runner.run(
                FLORDB, "replay_flordb.py", common | {"reps": sz.replay_flordb_reps}, timeout=7200
            )
        except Failed as e:
            theirs = e
    title = (
        f"Hindsight replay of one recorded run: `workloads/replay_train.py`, "
        f"{sz.replay_epochs} epochs (ours: median of {sz.replay_reps}; FlorDB: "
        f"{sz.replay_flordb_reps} rep)"
    )
    return Section(
        title,
        replay_rows(ours, theirs),
        replay_notes(ours, theirs, sz),
        extra=replay_extra(ours, theirs),
    )


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def _ok(results: list[dict]) -> list[dict]:
    """The results of one kind of replay; Failed with the first error if any rep failed."""
    for r in results:
        if "error" in r:
            raise Failed(r["error"])
    return results


def _setup(result: dict) -> float:
    """Seconds from launching the forward run to its epoch loop (the script's set-up)."""
    return result["original"]["processes"][0]["setup_s"]


def _estimate_errors(ours: dict) -> list[dict]:
    """Per planned item of the direct backfills: estimated vs actual child seconds."""
    rows = []
    for kind in REPLAY_KINDS:
        for rep, r in enumerate(ours["runs"][f"direct_{kind}"]):
            for item in r.get("items", []):
                error = (item["estimated_s"] - item["child_s"]) / item["child_s"] * 100
                rows.append({"kind": kind, "rep": rep, **item, "error_pct": error})
    return rows


def replay_rows(ours: dict | Failed, theirs: dict | Failed | None) -> list[Row]:
    def both(fn: Callable[[dict], float], ours_fn: Callable[[dict], float] | None = None) -> dict:
        values: dict[str, float | Failed] = {}
        for key, res, f in ((FLORDB.key, theirs, fn), (OURS.key, ours, ours_fn or fn)):
            if res is None:
                continue
            if isinstance(res, Failed):
                values[key] = res
                continue
            values[key] = _safe(f, res)
        return values

    def theirs_wall(kind: str) -> Callable[[dict], float]:
        return lambda r: _med([x["wall_s"] for x in _ok(r["runs"][kind])])

    def ours_wall(kind: str) -> Callable[[dict], float]:
        return lambda r: _med([x["wall_s"] for x in _ok(r["runs"][f"flow_{kind}"])])

    def pct(wall: Callable[[dict], float]) -> Callable[[dict], float]:
        return lambda r: wall(r) / r["original"]["wall_s"] * 100

    def overhead(kind: str) -> Callable[[dict], float]:
        def f(r: dict) -> float:
            pairs = zip(
                _ok(r["runs"][f"flow_{kind}"]), _ok(r["runs"][f"direct_{kind}"]), strict=True
            )
            return _med([(a["wall_s"] - b["wall_s"]) / len(b["items"]) for a, b in pairs])

        return f

    def unreproduced(r: dict) -> int:
        fid = r["fidelity"]
        cells = (
            fid.values() if "flow_epoch" not in fid else [fid[f"flow_{k}"] for k in REPLAY_KINDS]
        )
        return sum(c["differ"] + c["scratch"] + c["replayed"] - 2 * c["matched"] for c in cells)

    run_goal = None if isinstance(ours, Failed) else _setup(ours) + 1
    rows = [
        Row("original run: forward, recorded (ours: checkpoint every epoch)", "s",
            both(lambda r: r["original"]["wall_s"])),
        Row("its set-up: launch to the first epoch", "s", both(_setup)),
        Row("the new script re-run from scratch, recorded", "s",
            both(lambda r: _med([x["wall_s"] for x in r["scratch"]]))),
    ]  # fmt: skip
    for kind, label in REPLAY_KINDS.items():
        ours_kind = ours_wall(kind)
        suffix = " (ours: max_parallel=2)" if kind == "step" else ""
        rows.append(
            Row(
                label + suffix,
                "s",
                both(theirs_wall(kind), ours_kind),
                run_goal if kind == "run" else None,
                "~ the whole run (recomputed from epoch 0; flordb.md 10.4)",
            )
        )
        goal = {"epoch": 10, "step": 60}.get(kind)
        rows.append(
            Row(
                "... as % of the original run",
                "%",
                both(pct(theirs_wall(kind)), pct(ours_kind)),
                goal,
            )
        )
    for kind in REPLAY_KINDS:
        rows.append(
            Row(
                f"orchestration overhead per replay task, {kind}-level (flow - direct)",
                "s",
                {OURS.key: ours if isinstance(ours, Failed) else _safe(overhead(kind), ours)},
            )
        )
    rows.append(
        Row(
            "plan estimate vs actual replay, worst item: abs(est - actual) / actual",
            "%",
            {OURS.key: ours if isinstance(ours, Failed) else _safe(
                lambda r: max(abs(e["error_pct"]) for e in _estimate_errors(r)), ours)},
            25,
        )
    )  # fmt: skip
    rows.append(
        Row(
            "replayed values not equal to the from-scratch run's (all 3 statements)",
            "",
            both(unreproduced),
            0,
        )
    )
    return rows


def _safe(fn: Callable[[dict], float], res: dict) -> float | Failed:
    try:
        return fn(res)
    except Failed as e:
        return e
    except (KeyError, IndexError, ZeroDivisionError, ValueError, statistics.StatisticsError) as e:
        return Failed(f"{type(e).__name__}: {e}")


def replay_notes(ours: dict | Failed, theirs: dict | Failed | None, sz: Sizes) -> list[str]:
    notes = [
        "The script: a PyTorch MLP (64-512-512-10) on scikit-learn's digits, the training set "
        f"repeated {sz.replay_repeat} times with noise, batch 32, `torch.set_num_threads(1)`; "
        "`flor.loop('epoch')` under `flor.checkpointing(model, optimizer)` holds "
        "`flor.loop('step')` (training steps, `flor.log('loss')`) and a test-set evaluation "
        "(`flor.log('acc')`). Each implementation records it once in a git repo of its own "
        "(train.py importing it; flor_flows with `FLOR_FLOWS_CHECKPOINT_POLICY=every`). The new "
        "version, written into the working tree, adds `w_norm` (weight norm, after the "
        "evaluation), `grad_norm` (after `loss.backward()`) and `final_loss` (test loss, after "
        "the `with` block); every replay computes one of them over that run.",
        "flor_flows: `flows.backfill.backfill(BackfillRequest(...))` in Prefect's ephemeral mode "
        "(PREFECT_API_URL unset, the temporary server started by an uncounted dry-run backfill "
        "first), heartbeats off; `max_parallel=1` for the epoch- and run-level statements, 2 for "
        "the step-level one; the run-level one with `iterations=['epoch=none']`. Timed: the "
        "whole `backfill(...)` call (plan, propagate, replay, artifacts). FlorDB: `python -m "
        "flordb replay --apply NAME` with `y` on stdin, the whole command timed (its import, "
        "schedule, git commit and checkout, `backprop`, the replayed child, the result "
        "dataframe); step-level with `--iter epoch=all --iter step=all` so that it logs every "
        "step (its default logs only each epoch's last one, at the same cost).",
        "From scratch: the new script recorded in a fresh project (once per rep). The % rows "
        "divide by each implementation's own original run. Set-up: from launching the "
        "original run to the line before its epoch loop (`_mark` in the script; interpreter, "
        "imports of torch and sklearn and of the implementation, data, model). Run-level goal: "
        "flor_flows' set-up + 1 s.",
        "Orchestration overhead per replay task = median over reps of (the flow's wall - the "
        "same backfill done directly) / planned items, where direct is `resolve(request)`, "
        "`engine.prepare_version` per code version and `engine.replay` per item "
        "(`max_parallel` threads), in the same process, on names of its own (no Prefect).",
        "Estimates: `Item.estimated_seconds` of each item the direct backfills planned vs the "
        "seconds of that item's replay child (`children.Outcome.seconds`).",
        "Values: every value of the rep-0 backfill (flow) and FlorDB replay compared with the "
        "from-scratch run's values at the same (epoch, step); not equal = different (beyond "
        "1e-9 relative) + missing on either side.",
    ]
    for key, res in ((OURS.key, ours), (FLORDB.key, theirs)):
        if isinstance(res, Failed) or res is None:
            continue
        fid = res["fidelity"]
        notes.append(
            f"{key} values vs from scratch: "
            + "; ".join(
                f"{k}: {c['matched']} of {c['scratch']} matched ({c['replayed']} replayed), "
                f"{c['differ']} differ, max |d| {c['max_abs_diff']}"
                for k, c in fid.items()
                if key == FLORDB.key or k.startswith("flow_")
            )
        )
    if isinstance(ours, dict):
        o = ours["original"]["processes"][0]
        notes.append(
            f"flor_flows original run: set-up {o['setup_s']:.2f} s (from the script's first "
            f"line: {o['imports_s']:.2f} s), epoch loop {o.get('loop_s', 0):.2f} s, after it "
            f"{o.get('tail_s', 0):.2f} s; uncounted first (dry-run) backfill of the process, "
            f"starting the ephemeral API: {ours['warm']['first_flow_s']:.1f} s."
        )
        notes.append(prefect_breakdown(ours))
    if isinstance(theirs, dict):
        o = theirs["original"]["processes"][0]
        notes.append(
            f"FlorDB original run: set-up {o['setup_s']:.2f} s (from the script's first line: "
            f"{o['imports_s']:.2f} s), epoch loop {o.get('loop_s', 0):.2f} s."
        )
    if theirs is None:
        notes.append(
            f"**FlorDB side skipped**: `{rel(FLORDB_PY)}` is missing (`bench/setup_flordb.sh` "
            "makes it)."
        )
    return notes


def prefect_breakdown(ours: dict) -> str:
    """Where a flow's extra time goes: medians of Prefect's task-run durations vs the
    replay children (the store's replay records) and the flow run vs the call."""
    parts = []
    for kind in REPLAY_KINDS:
        flows = [r for r in ours["runs"][f"flow_{kind}"] if "tasks" in r]
        if not flows:
            continue
        task = [sum(r["tasks"].get("replay", [])) for r in flows]
        child = [sum(r.get("replays_s", [])) for r in flows]
        other = {
            name: _med([sum(r["tasks"].get(name, [0])) for r in flows])
            for name in ("plan_request", "propagate")
        }
        outside = [r["wall_s"] - r["flow_run_s"] for r in flows if r.get("flow_run_s")]
        parts.append(
            f"{kind}: `replay` task(s) {_med(task):.2f} s vs its replay child(ren) "
            f"{_med(child):.2f} s (sums over segments), `plan_request` "
            f"{other['plan_request']:.2f} s, `propagate` {other['propagate']:.2f} s, call - "
            f"flow run {_med(outside) if outside else float('nan'):.2f} s"
        )
    return "Prefect's view, medians: " + "; ".join(parts)


def replay_extra(ours: dict | Failed, theirs: dict | Failed | None) -> str:
    lines = []
    if isinstance(ours, dict):
        lines += [
            "### flor_flows: every backfill (s; child phases from the script's marks, one "
            "figure per replay process)",
            "",
            "| statement | path | rep | wall | plan | propagate | replay task(s) | replay "
            "child(ren) | estimated | child set-up | child epoch loop |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for kind in REPLAY_KINDS:
            for path in ("flow", "direct"):
                for rep, r in enumerate(ours["runs"][f"{path}_{kind}"]):
                    if "error" in r:
                        lines.append(f"| {kind} | {path} | {rep} | failed: {r['error']} |")
                        continue
                    if path == "flow":
                        plan = sum(r["tasks"].get("plan_request", [0]))
                        prop = sum(r["tasks"].get("propagate", [0]))
                        task = " + ".join(f"{t:.2f}" for t in r["tasks"].get("replay", []))
                        child = " + ".join(f"{t:.2f}" for t in r.get("replays_s", []))
                        est = ""
                    else:
                        plan, prop, task = r["plan_s"], r["propagate_s"], "-"
                        child = " + ".join(f"{i['child_s']:.2f}" for i in r["items"])
                        est = " + ".join(f"{i['estimated_s']:.2f}" for i in r["items"])
                    lines.append(
                        f"| {kind} | {path} | {rep} | {r['wall_s']:.2f} | {plan:.2f} | "
                        f"{prop:.2f} | {task} | {child} | {est} | {phase_cell(r, 'imports_s')} | "
                        f"{phase_cell(r, 'loop_s')} |"
                    )
        lines += [
            "",
            "### flor_flows: plan estimates per item (direct backfills)",
            "",
            "| statement | rep | iterations | run level | estimated s | actual s | error |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in _estimate_errors(ours):
            lines.append(
                f"| {e['kind']} | {e['rep']} | {compact(e['iterations'])} | "
                f"{'yes' if e.get('run_level', True) else 'no'} | {e['estimated_s']:.2f} | "
                f"{e['child_s']:.2f} | {e['error_pct']:+.0f} % |"
            )
    if isinstance(theirs, dict):
        lines += [
            "",
            "### FlorDB 4.0.1: every replay (s)",
            "",
            "| statement | rep | wall (`python -m flordb replay`) | child set-up | child "
            "epoch loop |",
            "|---|---|---|---|---|",
        ]
        for kind in REPLAY_KINDS:
            for rep, r in enumerate(theirs["runs"][kind]):
                if "error" in r:
                    lines.append(f"| {kind} | {rep} | failed: {r['error']} |")
                    continue
                lines.append(
                    f"| {kind} | {rep} | {r['wall_s']:.2f} | {phase_cell(r, 'imports_s')} | "
                    f"{phase_cell(r, 'loop_s')} |"
                )
    return "\n".join(lines) + "\n" if lines else ""
