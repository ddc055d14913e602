"""Propagating `flor.log` statements into old versions: accuracy and time per version."""

from __future__ import annotations

from harness import (
    FLORDB,
    FLORDB_PY,
    OURS,
    PROPAGATION_CASES,
    Failed,
    Row,
    Runner,
    Section,
    Sizes,
    rel,
)


def m_propagation(runner: Runner, sz: Sizes) -> Section:
    """Propagation of flor.log statements into old versions: accuracy and time per version."""
    have_flordb = FLORDB_PY.exists()
    params = {
        "cases": str(PROPAGATION_CASES),
        "reps": sz.prop_reps,
        "flordb_python": str(FLORDB_PY) if have_flordb else None,
    }
    title = f"Propagating `flor.log` statements into old versions (`{rel(PROPAGATION_CASES)}`)"
    try:
        res = runner.run(OURS, "propagation.py", params)
    except Failed as e:
        return Section(title, [Row("the propagation workload", "", {OURS.key: e})])
    theirs: dict | Failed | None = res["totals"].get(FLORDB.key)
    if "flordb_failed" in res:
        theirs = Failed(res["flordb_failed"])
    return Section(
        title,
        propagation_rows(res, theirs),
        propagation_notes(res, have_flordb),
        extra=res["markdown"],
    )


def propagation_rows(res: dict, theirs: dict | Failed | None) -> list[Row]:
    """The headline rows; FlorDB's cells stay empty when it was skipped."""
    ours = res["totals"][OURS.key]

    def row(measure: str, key: str, unit: str = "", goal: float | None = None) -> Row:
        values: dict[str, float | Failed] = {OURS.key: ours[key]}
        if theirs is not None:
            values[FLORDB.key] = theirs if isinstance(theirs, Failed) else theirs[key]
        return Row(measure, unit, values, goal)

    timed: dict[str, float | Failed] = {OURS.key: res["timing_flor_flows"]["seconds"]}
    if isinstance(theirs, Failed):
        timed[FLORDB.key] = theirs
    elif "timing_flordb" in res:
        timed[FLORDB.key] = res["timing_flordb"]["seconds"]
    lines_new, lines_old = res["timing_lines"]
    return [
        row(f"correct (of {ours['cases']} cases)", "correct"),
        row("silent misplacements", "misplaced", goal=0),
        row("refusals where an insertion was expected", "refused"),
        row("refuse cases with neither a change nor a refusal", "missed"),
        row(
            f"correct insertions byte for byte (flor_flows: of {ours['correct_insertions']})",
            "formatting",
        ),
        row("time per version, median over the cases", "median_s", "s"),
        row("time per version, max over the cases", "max_s", "s"),
        Row(
            f"time per version, ~500-line script ({lines_new} lines new, {lines_old} old)",
            "s",
            timed,
            0.2,
            "2-5 s/version (research harness, real files of 139-530 lines)",
        ),
    ]


def propagation_notes(res: dict, have_flordb: bool) -> list[str]:
    notes = [
        "Cases: one folder each, new.py, old.py, case.toml and expected.py (old.py with the "
        "statements inserted) or refuse.txt (a substring the refusal must contain). Targets: the "
        '`flor.log("name", ...)` statements of new.py whose name old.py does not log, or exactly '
        "the `names` of case.toml (the `present` cases name statements old.py has: no-ops).",
        "flor_flows: `propagate(new, old, names)` once per case. FlorDB: `flordb.hlast.backprop("
        "lineno, new, target, out)` once per target statement in line order, each output the "
        "next call's target; for a target old.py has already, its `FileExistsError` (caught "
        "inside backprop, which then writes nothing) is the correct no-op.",
        "correct: the AST of expected.py and no refusal, or in a refuse case a refusal (flor_flows: "
        "reason containing refuse.txt; FlorDB: any exception). Silent misplacement: no refusal and "
        "a different AST, or a changed file in a refuse case. Byte for byte: of the correct "
        "insertions (no-op cases excluded). Time: per version, all its statements; flor_flows "
        "in-process after one uncounted warm-up call, FlorDB in one process on its venv after one "
        "uncounted warm-up case; interpreter start-up and imports excluded for both.",
        f"Timing case: `{res['timing_case']}`, the longest insertion case (outside `newblock`, "
        "where FlorDB's time would be that of a failure) with distinct "
        "module-level functions of the other cases' old versions (those without `flor`, renamed) "
        f"inserted after the imports of new, old and expected; median of its repetitions. "
        f"flor_flows: {res['timing_flor_flows']['verdict']}"
        + (f"; FlorDB: {res['timing_flordb']['verdict']}" if "timing_flordb" in res else "")
        + ".",
    ]
    if not have_flordb:
        notes.append(
            f"**FlorDB side skipped**: `{rel(FLORDB_PY)}` is missing (`bench/setup_flordb.sh` "
            "makes it); its cells are empty."
        )
    if res["skipped"]:
        notes.append("Incomplete case folders skipped: " + ", ".join(res["skipped"]))
    return notes
