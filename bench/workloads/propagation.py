"""Propagation accuracy and speed: flor_flows' `propagate` vs FlorDB's `hlast.backprop`.

Run by bench/run.py (`--only propagation`) on the main venv, in a scratch git repo like every
workload. BENCH_PARAMS: `cases` (the folder of tests/data/propagation), `reps` (repetitions of the
~500-line timing case) and `flordb_python` (null: the FlorDB side is skipped). The large-script
timing (LARGE_CASE, timm's train.py, ~1,450 lines) runs flor_flows alone, LARGE_REPS times. flor_flows runs
in this process; FlorDB runs in workloads/propagation_flordb.py on its own venv's python.

Each case folder holds new.py, old.py, case.toml (`description`, optional `names`) and either
expected.py (old.py with the statements inserted) or refuse.txt (a substring of the refusal
reason). A case's targets are the `flor.log("name", ...)` statements of new.py whose name old.py
does not log, or those of `names`. Scoring, per case and tool:

- correct: the result has the AST of expected.py and nothing was refused; in a refuse case, the
  tool refused (flor_flows: with a reason containing refuse.txt) or raised;
- misplaced (silent misplacement): no refusal, and the result's AST differs from expected.py, or
  the file was changed in a refuse case;
- refused: a refusal where an insertion was expected (or, in a refuse case, only refusals for
  another reason);
- missed: a refuse case where the tool neither changed the file nor reported anything;
- formatting preserved: a correct insertion equal to expected.py byte for byte.

Emits the totals per tool, the ~500-line timing and the markdown tables for RESULTS.md.
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
import statistics
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from benchlib import emit, params
from propagation_large import large_lines, time_large

from flor_flows.propagate import propagate

HERE = Path(__file__).resolve().parent
TOOLS = ("flordb", "flor_flows")
CORRECT, MISPLACED, REFUSED, MISSED = "correct", "misplaced", "refused", "missed"
TIMING_LINES = 500  # size of the synthesised timing case's new version
DIFF_LINES = 40  # longest diff shown per failure
FLORDB_TIMEOUT_S = 3000  # the whole FlorDB side (run.py gives the workload 3600 s)
FLORDB_LOG = Path("propagation-flordb.log")  # its stderr, in the scratch repo


@dataclass(frozen=True)
class Case:
    name: str  # the folder: <family>__<name>
    new: str
    old: str
    names: list[str] | None
    expected: str | None  # None in a refuse case
    refuse: str | None  # the substring a refusal reason must contain

    @property
    def family(self) -> str:
        return self.name.split("__")[0]

    @property
    def expects(self) -> str:
        if self.refuse is not None:
            return f'refusal "{self.refuse}"'
        return "no-op" if self.expected == self.old else "insertion"


@dataclass
class Run:
    source: str  # the old version after the tool ran
    refusals: list[str]  # refusal reasons or exceptions
    seconds: float | None  # per version (None: the tool had nothing to run)
    notes: list[str] = field(default_factory=list)


@dataclass
class Scored:
    case: Case
    run: Run
    verdict: str
    formatting: bool  # a correct insertion, byte for byte


# --------------------------------------------------------------------------------------------
# Cases


def text(path: Path) -> str:
    """A file's text with its line endings as they are (CRLF cases)."""
    return path.read_bytes().decode()


def load_cases(folder: Path) -> tuple[list[Case], list[str]]:
    """The complete cases under `folder`, and the folders skipped as incomplete."""
    cases, skipped = [], []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = {f: d / f for f in ("new.py", "old.py", "case.toml", "expected.py", "refuse.txt")}
        have = {f for f, p in files.items() if p.exists()}
        if not {"new.py", "old.py", "case.toml"} <= have or len(have) != 4:
            skipped.append(d.name)
            continue
        meta = tomllib.loads(text(files["case.toml"]))
        refuse = text(files["refuse.txt"]).strip() if "refuse.txt" in have else None
        expected = text(files["expected.py"]) if "expected.py" in have else None
        new, old = text(files["new.py"]), text(files["old.py"])
        cases.append(Case(d.name, new, old, meta.get("names"), expected, refuse))
    return cases, skipped


def log_name(node: ast.AST) -> str | None:
    """The logged name if `node` is a `flor.log("<name>", ...)` call."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "log"
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "flor"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return node.args[0].value
    return None


def log_statements(source: str) -> list[tuple[int, str]]:
    """(line, name) of the innermost statement around each `flor.log` call, in line order."""
    found: dict[int, str] = {}

    def visit(node: ast.AST, line: int) -> None:
        line = node.lineno if isinstance(node, ast.stmt) else line
        if (name := log_name(node)) is not None:
            found.setdefault(line, name)
        for child in ast.iter_child_nodes(node):
            visit(child, line)

    visit(ast.parse(source), 0)
    return sorted(found.items())


def logged_names(source: str) -> set[str]:
    """The names a source logs (none if it does not parse)."""
    try:
        return {name for _, name in log_statements(source)}
    except SyntaxError:
        return set()


def flordb_lines(case: Case) -> list[int]:
    """The new-version lines of the targets, to hand to backprop: the statements of `names`
    (present in old or not), else those logging a name old does not log."""
    logs = log_statements(case.new)
    if case.names is not None:
        return [line for line, name in logs if name in case.names]
    present = logged_names(case.old)
    return [line for line, name in logs if name not in present]


# --------------------------------------------------------------------------------------------
# The ~500-line timing case


def top_definitions(source: str) -> list[tuple[str, str]]:
    """(name, text) of the module-level functions and classes of a source, decorators included."""
    lines = source.splitlines()
    defs = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            defs.append((node.name, "\n".join(lines[start - 1 : node.end_lineno])))
    return defs


def helpers(cases: Iterable[Case], wanted_lines: int) -> str:
    """Distinct module-level definitions without `flor` from the cases' old versions, each
    renamed with a numeric suffix, until they reach `wanted_lines` lines."""
    chunks: list[str] = []
    seen: set[str] = set()
    for case in cases:
        if case.refuse is not None:
            continue
        for name, text in top_definitions(case.old):
            if "flor" in text or text in seen:
                continue
            seen.add(text)
            suffix = f"_{len(chunks)}"
            chunks.append(re.sub(rf"\b(def|class) {name}\b", rf"\1 {name}{suffix}", text, count=1))
            if sum(c.count("\n") + 3 for c in chunks) >= wanted_lines:
                return "\n\n\n".join(chunks)
    return "\n\n\n".join(chunks)


def after_imports(source: str, padding: str) -> str:
    """`source` with `padding` inserted before its first statement that is not an import or the
    docstring."""
    body = ast.parse(source).body
    first = next(
        (
            n
            for i, n in enumerate(body)
            if not isinstance(n, ast.Import | ast.ImportFrom)
            and not (i == 0 and isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
        ),
        None,
    )
    if first is None:
        return source.rstrip("\n") + "\n\n\n" + padding + "\n"
    decorators = getattr(first, "decorator_list", [])
    at = min([first.lineno, *(d.lineno for d in decorators)]) - 1
    lines = source.splitlines(keepends=True)
    return "".join(lines[:at]) + padding + "\n\n\n" + "".join(lines[at:])


def timing_case(cases: list[Case]) -> Case:
    """The longest insertion case, padded with helper functions to ~TIMING_LINES lines. Not a
    `newblock` case: FlorDB cannot map a new block, so its time would be that of a failure; not
    LARGE_CASE, which is timed on its own (`propagation_large`)."""
    base = max(
        (
            c
            for c in cases
            if c.expects == "insertion"
            and c.family != "newblock"
            and len(c.new.splitlines()) < 2 * TIMING_LINES  # not a large case (LARGE_CASE)
        ),
        key=lambda c: (len(c.new.splitlines()), c.name),
    )
    others = [c for c in cases if c is not base]
    padding = helpers(others, TIMING_LINES - len(base.new.splitlines()))
    expected = after_imports(base.expected or "", padding)
    return Case(
        f"{base.name} padded",
        after_imports(base.new, padding),
        after_imports(base.old, padding),
        base.names,
        expected,
        None,
    )


# --------------------------------------------------------------------------------------------
# Running the tools


def run_ours(case: Case, reps: int = 1) -> Run:
    """flor_flows' propagate on one case; seconds are the median of `reps` calls."""
    print(f"[propagation] flor_flows: {case.name}", file=sys.stderr, flush=True)
    seconds = []
    for _ in range(reps):
        t0 = time.perf_counter()
        result = propagate(case.new, case.old, case.names)
        seconds.append(time.perf_counter() - t0)
    notes = [
        f"placed `{p.name}` at line {p.line} (confidence {p.confidence}): `{p.code}`"
        for p in result.placements
    ]
    return Run(result.source, [str(r) for r in result.refusals], statistics.median(seconds), notes)


def run_flordb(python: Path, jobs: list[tuple[Case, int]]) -> list[Run]:
    """FlorDB's backprop on every (case, repetitions), in one process on its venv's python."""
    payload = [
        {"id": str(i), "new": c.new, "old": c.old, "lines": flordb_lines(c), "reps": reps}
        for i, (c, reps) in enumerate(jobs)
    ]
    cases_json, out = Path("propagation-flordb.in.json"), Path("propagation-flordb.json")
    cases_json.write_text(json.dumps(payload))
    env = {
        **os.environ,
        "BENCH_PARAMS": json.dumps({"cases": str(cases_json.resolve())}),
        "BENCH_OUT": str(out.resolve()),
    }
    with FLORDB_LOG.open("w") as err:
        subprocess.run(
            [str(python), str(HERE / "propagation_flordb.py")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=FLORDB_TIMEOUT_S,
            check=True,
        )
    results = json.loads(out.read_text())["results"]
    return [flordb_run(r, job) for r, job in zip(results, payload, strict=True)]


def flordb_run(result: dict, job: dict) -> Run:
    notes = [f"backprop found line {line} present already" for line in result["exists"]]
    seconds = statistics.median(result["seconds"]) if job["lines"] else None
    return Run(result["source"], result["errors"], seconds, notes)


# --------------------------------------------------------------------------------------------
# Scoring


def same_ast(a: str, b: str) -> bool:
    try:
        return ast.dump(ast.parse(a)) == ast.dump(ast.parse(b))
    except SyntaxError:
        return False


def judge(case: Case, run: Run, any_reason: bool) -> Scored:
    """Score one run; `any_reason`: any refusal counts in a refuse case (FlorDB's exceptions)."""
    if case.refuse is not None:
        if any(any_reason or case.refuse in r for r in run.refusals):
            verdict = CORRECT
        elif run.source != case.old:
            verdict = MISPLACED
        else:
            verdict = REFUSED if run.refusals else MISSED
        return Scored(case, run, verdict, False)
    if run.refusals:
        return Scored(case, run, REFUSED, False)
    if not same_ast(run.source, case.expected or ""):
        return Scored(case, run, MISPLACED, False)
    insertion = case.expected != case.old
    return Scored(case, run, CORRECT, insertion and run.source == case.expected)


def totals(scored: list[Scored]) -> dict:
    """The counts and times of a group of scored runs."""
    times = [s.run.seconds for s in scored if s.run.seconds is not None]
    count = {v: sum(s.verdict == v for s in scored) for v in (CORRECT, MISPLACED, REFUSED, MISSED)}
    insertions = [s for s in scored if s.verdict == CORRECT and s.case.expects == "insertion"]
    return {
        "cases": len(scored),
        **count,
        "formatting": sum(s.formatting for s in scored),
        "correct_insertions": len(insertions),
        "median_s": statistics.median(times) if times else None,
        "max_s": max(times) if times else None,
    }


# --------------------------------------------------------------------------------------------
# Report


def pair(values: dict[str, str]) -> str:
    """A table cell "FlorDB / flor_flows"; a tool not run shows as "-"."""
    return " / ".join(values.get(tool, "-") for tool in TOOLS)


def seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.3f}" if s < 1 else f"{s:.2f}"


def family_table(by_tool: dict[str, list[Scored]]) -> list[str]:
    """Per family and in total; every cell is "FlorDB / flor_flows"."""
    rows = [
        "| family | cases | correct | silent misplacements | refusals | missed "
        "| formatting preserved | median s/version | max s/version |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    families = sorted({s.case.family for group in by_tool.values() for s in group})
    for family in [*families, None]:
        t = {
            tool: totals([s for s in group if family is None or s.case.family == family])
            for tool, group in by_tool.items()
        }
        any_tool = next(iter(t.values()))
        cells = [
            "**total**" if family is None else family,
            str(any_tool["cases"]),
            *(pair({k: str(v[col]) for k, v in t.items()}) for col in (CORRECT, MISPLACED)),
            *(pair({k: str(v[col]) for k, v in t.items()}) for col in (REFUSED, MISSED)),
            pair({k: f"{v['formatting']}/{v['correct_insertions']}" for k, v in t.items()}),
            pair({k: seconds(v["median_s"]) for k, v in t.items()}),
            pair({k: seconds(v["max_s"]) for k, v in t.items()}),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def verdict_cell(s: Scored | None, tool: str) -> str:
    """The verdict, with the refusals of a failure (and FlorDB's "present already" notes; ours
    are in the failure list)."""
    if s is None:
        return "-"
    text = s.verdict
    if s.verdict == CORRECT and s.case.expects == "insertion" and not s.formatting:
        text += " (formatting changed)"
    if s.verdict != CORRECT:
        said = s.run.refusals + (s.run.notes if tool == "flordb" else [])
        text += "".join(f"; {r}" for r in said)
    return text.replace("|", "/").replace("\n", " ")


def case_table(by_tool: dict[str, list[Scored]]) -> list[str]:
    rows = ["| case | expects | FlorDB 4.0.1 | flor_flows |", "|---|---|---|---|"]
    index = {tool: {s.case.name: s for s in group} for tool, group in by_tool.items()}
    for s in by_tool["flor_flows"]:
        cells = [
            s.case.name,
            s.case.expects,
            *(verdict_cell(index.get(tool, {}).get(s.case.name), tool) for tool in TOOLS),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def diff(expected: str, produced: str) -> list[str]:
    """A unified diff expected -> produced, in a fenced block, at most DIFF_LINES lines."""
    lines = list(
        difflib.unified_diff(
            expected.splitlines(), produced.splitlines(), "expected.py", "produced", lineterm=""
        )
    )
    if len(lines) > DIFF_LINES:
        lines = [*lines[:DIFF_LINES], f"... ({len(lines) - DIFF_LINES} more diff lines)"]
    return ["  ```diff", *(f"  {ln}" for ln in lines), "  ```"]


def failures(scored: list[Scored]) -> list[str]:
    """Every case flor_flows gets wrong, or right with its formatting changed."""
    out = []
    for s in scored:
        if s.verdict == CORRECT and (s.formatting or s.case.expects != "insertion"):
            continue
        what = "correct AST, formatting changed" if s.verdict == CORRECT else s.verdict
        out.append(f"- **{s.case.name}** (expects {s.case.expects}): {what}")
        out += [f"  - refusal: {r}" for r in s.run.refusals]
        out += [f"  - {n}" for n in s.run.notes]
        if s.case.expected is not None and s.run.source != s.case.expected:
            out += diff(s.case.expected, s.run.source)
    return out or ["- none"]


def markdown(by_tool: dict[str, list[Scored]], large: dict | None = None) -> str:
    lines = [
        *large_lines(large),
        "### Per family (each cell: FlorDB / flor_flows)",
        "",
        *family_table(by_tool),
        "",
        "### Per case",
        "",
        *case_table(by_tool),
        "",
        "### Cases flor_flows gets wrong (or right with its formatting changed)",
        "",
        *failures(by_tool["flor_flows"]),
    ]
    return "\n".join(lines) + "\n"


def timing(s: Scored) -> dict:
    """The timing case's seconds per version and how it came out."""
    return {"seconds": s.run.seconds, "verdict": s.verdict, "refusals": s.run.refusals}


# --------------------------------------------------------------------------------------------


def main() -> None:
    p = params()
    cases, skipped = load_cases(Path(p["cases"]))
    if not cases:
        sys.exit(f"no complete case under {p['cases']}")
    timed = timing_case(cases)
    run_ours(cases[0])  # warm-up, uncounted: libcst's first parse
    ours = [judge(c, run_ours(c), any_reason=False) for c in cases]
    timed_ours = judge(timed, run_ours(timed, p["reps"]), any_reason=False)
    large = time_large(cases, lambda c: judge(c, run_ours(c), any_reason=False).verdict)
    by_tool = {"flor_flows": ours}
    results: dict = {"cases": len(cases), "skipped": skipped}
    if p["flordb_python"]:
        jobs = [(cases[0], 1), *((c, 1) for c in cases), (timed, p["reps"])]
        try:
            runs = run_flordb(Path(p["flordb_python"]), jobs)[1:]  # the first: warm-up
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            results["flordb_failed"] = f"{e} (log: {FLORDB_LOG.resolve()})"
        else:
            *case_runs, timed_run = runs
            by_tool["flordb"] = [
                judge(c, r, any_reason=True) for c, r in zip(cases, case_runs, strict=True)
            ]
            results["timing_flordb"] = timing(judge(timed, timed_run, any_reason=True))
    results |= {
        "totals": {tool: totals(group) for tool, group in by_tool.items()},
        "timing_case": timed.name,
        "timing_lines": [len(timed.new.splitlines()), len(timed.old.splitlines())],
        "timing_flor_flows": timing(timed_ours),
        "timing_large": large,
        "markdown": markdown(by_tool, large),
    }
    emit(**results)


if __name__ == "__main__":
    main()
