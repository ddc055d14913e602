"""RESULTS.md: the sections measured by this run, in METRICS order, after a header on the
machine, the implementations' versions and the source measured; the sections this run does not
measure are kept from the file's previous contents (each marked with SECTION_MARK). Also the
cell formats the sections share."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import re
import subprocess
from collections.abc import Collection
from pathlib import Path

from harness import BENCH, FLORDB, IMPLS, OURS, OURS_PY, WORK, Failed, Row, Section, rel

SECTION_MARK = "<!-- bench metric: {} -->"


def fmt(v: float | Failed | None, unit: str) -> str:
    if v is None:
        return ""
    if isinstance(v, Failed):
        return f"failed: {v}"
    if isinstance(v, int):
        return f"{v:,} {unit}".rstrip()
    digits = 2 if abs(v) < 10 else 1 if abs(v) < 100 else 0
    return f"{v:,.{digits}f} {unit}"


def render_row(row: Row, ours_only: bool) -> str:
    theirs, ours = row.values.get(FLORDB.key), row.values.get(OURS.key)
    ratio = ""
    if isinstance(theirs, float) and isinstance(ours, float) and ours > 0 and theirs > 0:
        ratio = f"{theirs / ours:,.{1 if theirs / ours < 100 else 0}f}x"
    goal, met = "", ""
    if row.goal is not None:
        goal = f"<= {fmt(row.goal, row.unit)}"
        met = (
            "MISSED (failed)"
            if isinstance(ours, Failed)
            else "**met**"
            if ours <= row.goal
            else "MISSED"
        )
    cells = [row.measure, fmt(theirs, row.unit), fmt(ours, row.unit), ratio, goal, met, row.before]
    if ours_only:
        cells = [row.measure, fmt(ours, row.unit), goal, met]
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


def source_state() -> str:
    """Git HEAD of the project plus hashes of flor_flows/ and flows/ (the tree may be uncommitted)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH.parent, capture_output=True, text=True
    ).stdout.strip()
    digests = []
    for package in ("flor_flows", "flows"):  # flows/: the backfill flow the replay metric runs
        h = hashlib.sha256()
        for f in sorted((BENCH.parent / package).rglob("*.py")):
            h.update(f"{f.relative_to(BENCH.parent)}\0".encode() + f.read_bytes())
        digests.append(f"sha256({package}/**/*.py) {h.hexdigest()[:12]}")
    return f"git HEAD {head or '(no commit yet)'}, {', '.join(digests)}"


def versions(python: Path) -> dict:
    code = (
        "import importlib.metadata as m, json, platform\n"
        "pk = ['flordb', 'flor-flows', 'prefect', 'pandas', 'numpy', 'GitPython', 'SQLAlchemy',"
        " 'torch', 'scikit-learn', 'tqdm']\n"
        "v = {}\n"
        "for p in pk:\n"
        "    try: v[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps({'python': platform.python_version(), 'packages': v}))"
    )
    try:
        out = subprocess.run(
            [str(python), "-c", code], cwd=WORK, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
        return {"python": f"unavailable ({e})", "packages": {}}


def render_section(name: str, section: Section, measured: str) -> str:
    """A section of RESULTS.md; SECTION_MARK names its metric for later partial runs."""
    header = (
        ["| measure | flor_flows | goal | met? |", "|---|---|---|---|"]
        if section.ours_only
        else [
            "| measure | FlorDB 4.0.1 | flor_flows | FlorDB / ours | goal | met? | FlorDB before |",
            "|---|---|---|---|---|---|---|",
        ]
    )
    lines = [f"## {section.title}", SECTION_MARK.format(name), "", *header]
    lines += [render_row(r, section.ours_only) for r in section.rows]
    lines += ["", *(f"- {n}" for n in section.notes), f"- Measured {measured}"]
    if section.extra:
        lines += ["", section.extra.rstrip("\n")]
    return "\n".join(lines) + "\n"


def kept_sections(dest: Path, measured: list[str], metrics: Collection[str]) -> dict[str, str]:
    """The sections of the previous `dest` whose metrics (of `metrics`, all there are) this
    run does not measure."""
    if not dest.exists():
        return {}
    kept = {}
    for block in re.split(r"(?m)^(?=## )", dest.read_text())[1:]:
        mark = re.search(SECTION_MARK.format(r"(\w+)"), block)
        if mark and mark[1] in metrics and mark[1] not in measured:
            kept[mark[1]] = block.rstrip("\n") + "\n"
    return kept


def report(
    sections: dict[str, Section],
    kept: dict[str, str],
    argv: list[str],
    started: datetime.datetime,
    took: float,
    quick: bool,
    sources: tuple[str, str],
    metrics: Collection[str],
) -> str:
    """The whole file: its header, then the `sections` measured and the `kept` ones, in the
    order of `metrics`."""
    load = os.getloadavg()
    changed = " **(flor_flows changed during the run: figures may mix versions)**"
    command = f"`{rel(OURS_PY)} bench/run.py{''.join(' ' + a for a in argv)}`"
    lines = [
        "# FlorDB 4.0.1 vs flor_flows: side-by-side benchmark"
        + (" (QUICK smoke run)" if quick else ""),
        "",
        f"- Command: {command} (from the project's root; `bench/setup_flordb.sh` makes the FlorDB "
        "venv first)",
        f"- Date: {started:%Y-%m-%d %H:%M} (local), {took / 60:.1f} min in all",
        f"- Machine: {platform.machine()}, nproc {os.cpu_count()}, {platform.platform()}, "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}",
    ]
    for impl in IMPLS:
        v = versions(impl.python)
        pk = ", ".join(f"{k} {val}" for k, val in v["packages"].items())
        lines.append(f"- {impl.key}: `{rel(impl.python)}`, Python {v['python']}; {pk}")
    lines += [
        f"- flor_flows source at the start: {sources[0]}"
        + (f"; at the end: {sources[1]}{changed}" if sources[1] != sources[0] else " (unchanged)"),
        "- Every figure comes from fresh subprocesses, each in its own scratch git repo under "
        "`bench/.work/` (git init + an initial commit). Scripts: `bench/workloads/`.",
        "- Columns: FlorDB / flor_flows figures; *FlorDB / ours* is the ratio (higher = ours "
        "cheaper); the goal applies to flor_flows; *FlorDB before* is the earlier research "
        "measurement (`shared/research/flordb.md`).",
    ]
    if kept:
        lines.append(
            f"- Kept from earlier runs, not measured by this command: {', '.join(kept)}. "
            "Each section's last line says when, by which command and on which source it was "
            "measured."
        )
    measured = f"{started:%Y-%m-%d %H:%M} by {command}; flor_flows source: {sources[0]}"
    blocks = [
        render_section(name, sections[name], measured) if name in sections else kept[name]
        for name in metrics
        if name in sections or name in kept
    ]
    return "\n".join(["\n".join(lines) + "\n", *blocks])


def compact(iterations: object) -> str:
    """Iteration numbers as ranges: [0, 1, 2, 5] -> "0-2,5"."""
    if not isinstance(iterations, list):
        return str(iterations)
    if not iterations:
        return "none"
    parts, start = [], iterations[0]
    for a, b in zip(iterations, [*iterations[1:], None], strict=True):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def phase_cell(r: dict, key: str) -> str:
    """The seconds of one phase (`key`) of every process of a result, joined with " + "."""
    return " + ".join(f"{p[key]:.1f}" for p in r.get("processes", []) if key in p) or "-"
