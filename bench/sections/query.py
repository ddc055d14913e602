"""`flor.dataframe` over a store built through the real API."""

from __future__ import annotations

from pathlib import Path

from harness import IMPLS, Failed, Row, Runner, Section, Sizes


def m_query(runner: Runner, sz: Sizes) -> Section:
    builds: dict[str, dict | Failed] = {}
    repos: dict[str, Path] = {}
    for impl in IMPLS:
        repos[impl.key] = runner.new_repo(f"{impl.key}-store")
        try:
            builds[impl.key] = runner.run(
                impl, "build_store.py", {"runs": sz.store_runs}, repo=repos[impl.key]
            )
        except Failed as e:
            builds[impl.key] = e
    res: dict[str, list[dict] | Failed] = {}
    for impl in IMPLS:
        b = builds[impl.key]
        try:
            if isinstance(b, Failed):
                raise Failed(f"store build {b}")
            res[impl.key] = [
                runner.run(impl, "query.py", {"reps": sz.query_reps}, repo=repos[impl.key])
            ]
        except Failed as e:
            res[impl.key] = e

    def q(label: str) -> dict:
        return {
            k: v if isinstance(v, Failed) else v[0][label]["median_s"] * 1e3 for k, v in res.items()
        }

    shapes = [
        f"{k}: "
        + ", ".join(f"{lbl} {tuple(v[0][lbl]['shape'])}" for lbl in ("one", "seven", "runs"))
        for k, v in res.items()
        if not isinstance(v, Failed)
    ]
    build_s = {k: v if isinstance(v, Failed) else v["build_s"] for k, v in builds.items()}
    runs = sz.store_runs
    return Section(
        f"`flor.dataframe` over {runs:,} runs x 624 logged values (median of {sz.query_reps})",
        [
            Row("`dataframe('loss')` (1 column)", "ms", q("one"), 150, "1.40 s"),
            Row("`dataframe(<7 names>)`", "ms", q("seven"), 500, "6.67 s"),
            Row("`dataframe()` (runs x args)", "ms", q("runs"), None, "133 ms"),
            Row(
                f"building the store ({runs:,} runs, one `commit()` each)",
                "s",
                build_s,
                before="(JSONL written directly + `unpack`: 8.5 s)",
            ),
        ],
        [
            "Both stores were built through the real API by the same script "
            "(`workloads/build_store.py`): per run 4 `flor.arg`s, `flor.loop('epoch', range(20))` "
            "> `flor.loop('step', range(9))`, 3 step metrics + 4 epoch metrics, then "
            f"`flor.commit()` (FlorDB: a git commit per run), {runs * 624:,} logged values in all.",
            "Queries timed in one fresh process per implementation after the build.",
            "Result shapes (rows, columns): " + "; ".join(shapes),
        ],
    )
