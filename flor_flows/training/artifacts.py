"""What a training flow run publishes: its records in the store, as Prefect artifacts.

The tables and charts are built from the store (plain functions, testable without Prefect):
values per outer iteration (nested loops summarised, never cut silently), numbers to 5
significant digits, no internal ids. `publish` creates the artifacts under keys fixed per
project, so the UI shows each key's history across runs.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import pandas as pd

from flor_flows import charts
from flor_flows.secrets import mask_secrets
from flor_flows.store import Store

MAX_ROWS = 500  # of a table artifact: for reading in the UI; the CLI has every row
SIGNIFICANT = 5  # digits of a float in a table artifact
HISTORY_RUNS = 50  # runs in the project history chart (the latest)
CHART_NAMES = 6  # logged names charted per run


def key_prefix(project_name: str) -> str:
    """An artifact-key-safe form of the project name (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", project_name.lower()).strip("-") or "project"


def short_uid(uid: str) -> str:
    """A run uid's random part, e.g. `ecf576` of `20261201T202443428587-ecf576`."""
    return uid.rpartition("-")[2]


def _rounded(value: Any) -> Any:  # noqa: ANN401 - any JSON value
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT}g}")
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows: missing cells become None, timestamps ISO strings to the second,
    floats to 5 significant digits, the values of secret-looking columns (args named like
    passwords, tokens, keys) masked."""
    frame = frame.copy()
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.DatetimeTZDtype):
            frame[column] = frame[column].dt.strftime("%Y-%m-%d %H:%M:%S")
    rows = json.loads(frame.to_json(orient="records", date_format="iso", double_precision=15))
    return [mask_secrets({k: _rounded(v) for k, v in row.items()}) for row in rows]


@dataclass(frozen=True)
class Table:
    """A table artifact's rows and the description that says what they are."""

    rows: list[dict[str, Any]]
    description: str


@dataclass(frozen=True)
class Folded:
    """A wide table folded to its outer loop: one row per (keys, outer iteration).

    `loop` is the outer loop's column (None: nothing was logged in a loop); `nested` the
    names that had several values per outer iteration, shown as `<name> (last)` and
    `<name> (mean)`.
    """

    frame: pd.DataFrame
    loop: str | None
    names: list[str]
    nested: list[str]

    def column(self, name: str) -> str:
        """The column that charts `name`: its per-iteration mean if it was nested."""
        if name not in self.nested:
            return name
        mean = f"{name} (mean)"
        return mean if mean in self.frame else f"{name} (last)"


def fold(
    store: Store, frame: pd.DataFrame, names: list[str], keys: list[str], carry: bool = False
) -> Folded:
    """Fold the wide table `frame` of `names` to the outer loop, per `keys` (e.g. the run):
    values logged once per outer iteration as they are, values of nested loops as the last
    and the mean of each iteration; with `carry`, the runs' other columns (args, data) too."""
    run_columns = set(store.runs(uids=frame["run_uid"].unique().tolist()).columns)
    values = [c for c in frame.columns if c.removesuffix("@replay") in names]
    loops = [c for c in frame.columns if c not in run_columns and c not in values and c != "seq"]
    loop = loops[0] if loops and not loops[0].endswith("_value") else None
    carried = [f"{loop}_value"] if loop and f"{loop}_value" in frame else []
    if carry:
        carried += [c for c in frame.columns if c in run_columns and c not in keys]
    by = [*keys, loop] if loop else keys
    grouped = frame.groupby(by, sort=False, dropna=False)
    folded = grouped[carried].first() if carried else grouped.size().to_frame().iloc[:, :0]
    nested = []
    for name in values:
        several = grouped[name].nunique() > 1
        if not several.any():
            folded[name] = grouped[name].last()
            continue
        nested.append(name)
        folded[f"{name} (last)"] = grouped[name].last()
        numbers = pd.to_numeric(frame[name], errors="coerce")
        if numbers.notna().sum() == frame[name].notna().sum():
            by_key = [frame[k] for k in by]
            folded[f"{name} (mean)"] = numbers.groupby(by_key, sort=False, dropna=False).mean()
    return Folded(folded.reset_index(), loop, values, nested)


def capped(frame: pd.DataFrame, limit: int = MAX_ROWS) -> tuple[pd.DataFrame, str]:
    """At most `limit` rows (the first and the last halves) and what was left out, if so."""
    if len(frame) <= limit:
        return frame, ""
    head, tail = limit // 2, limit - limit // 2
    shown = pd.concat([frame.head(head), frame.tail(tail)])
    return shown, f"{limit} of {len(frame)} rows shown: the first {head} and the last {tail}. "


def _every_value(names: list[str]) -> str:
    return f"Every value: `flor-flows dataframe {','.join(names)}`."


def run_metrics(store: Store, uid: str) -> Folded | None:
    """The run's logged values folded to its outer loop; None if it logged nothing."""
    names = store.logged_names(uid)
    if not names:
        return None
    return fold(store, store.dataframe(names, uids=[uid]), names, ["run_uid"])


def metrics_table(folded: Folded | None, uid: str) -> Table:
    """One row per outer iteration of the run (nested values as last and mean), no ids."""
    if folded is None:
        return Table([], f"Run `{uid}` logged no values.")
    frame, note = capped(folded.frame.drop(columns=["run_uid"]))
    per = f"one row per `{folded.loop}`" if folded.loop else "the values logged outside loops"
    nested = ""
    if folded.nested:
        names = ", ".join(f"`{n}`" for n in folded.nested)
        nested = f" {names} logged in nested loops: the last and the mean of each iteration."
    text = f"Run `{uid}`, {per} ({len(folded.frame)} rows).{nested} {note}"
    return Table(records(frame), text + _every_value(folded.names))


def metrics_chart(folded: Folded | None, uid: str) -> str | None:
    """Markdown: a chart per logged name over the outer loop; None if nothing to draw."""
    if folded is None or folded.loop is None:
        return None
    groups = {folded.column(n): [folded.column(n)] for n in folded.names[:CHART_NAMES]}
    panels = charts.panels_by_column(folded.frame, folded.loop, groups)
    if not panels:
        return None
    caption = f"Per `{folded.loop}`; nested values as their mean per `{folded.loop}`."
    return charts.markdown(f"Run {short_uid(uid)}", panels, caption)


def history_chart(store: Store, uid: str, project: str) -> str | None:
    """Markdown: each name the run logged, at the end of every run of the project (the
    latest `HISTORY_RUNS`, in order), one point per run; None if nothing to draw."""
    names = store.logged_names(uid)[:CHART_NAMES]
    if not names:
        return None
    uids = store.runs(project=project)["run_uid"].tolist()[-HISTORY_RUNS:]
    folded = fold(store, store.dataframe(names, uids=uids), names, ["run_uid"])
    final = folded.frame.groupby("run_uid", sort=False).last().reset_index()
    final["run"] = range(len(final))
    groups = {folded.column(n): [folded.column(n)] for n in names}
    panels = [
        charts.Panel(p.title, p.series, "run", tuple(final["run_uid"].map(short_uid)))
        for p in charts.panels_by_column(final, "run", groups)
    ]
    if not panels:
        return None
    caption = (
        f"The last value of each name in each of the {len(final)} latest runs of `{project}` "
        "that logged it, oldest first (nested values as the mean of the last iteration)."
    )
    return charts.markdown(f"{project}: history", panels, caption)


def human_bytes(size: int) -> str:
    """`size` bytes as text: 512 B, 49.9 KiB, 1.2 GiB."""
    if size < 1024:
        return f"{size} B"
    amount = size / 1024
    for unit in ("KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"


def checkpoints_table(store: Store, uid: str) -> list[dict[str, Any]]:
    """The run's checkpoints: loop, iteration, size, seconds to write, uri, sha256."""
    return [
        {
            "loop": row["loop_name"],
            "iteration": row["iteration"],
            "size": human_bytes(row["bytes"]),
            "seconds": _rounded(round(row["seconds"], 4)),
            "bytes": row["bytes"],
            "uri": row["uri"],
            "sha256": row["sha256"],
        }
        for row in store.checkpoints_of(store.run_id(uid))
    ]


def run_row(store: Store, uid: str) -> dict[str, Any]:
    """The run's row of `store.runs()`: status, code version, times, lineage, args, batches."""
    runs = store.runs(uids=[uid])
    if runs.empty:
        raise LookupError(f"no run {uid!r} in the store")
    return records(runs)[0]


def batches_table(store: Store, uid: str) -> list[dict[str, Any]]:
    """The run's data batches as table rows: name, URI, hash, size and stored copy."""
    batches = store.run_record(uid)["data"].values()
    columns = ("name", "uri", "sha256", "bytes", "stored_uri")
    return [{c: batch[c] for c in columns} for batch in batches]


def _flow_run_link(flow_run_id: str | None, ui_url: str | None) -> str:
    if not flow_run_id:
        return "-"
    return f"[{flow_run_id}]({ui_url}/runs/flow-run/{flow_run_id})" if ui_url else flow_run_id


def summary_markdown(store: Store, uid: str, ui_url: str | None = None) -> str:
    """A run's code version, args, data, lineage, outcome and links, as markdown."""
    row = run_row(store, uid)
    resumed = row.get("resumed_from")
    lineage = "trained from scratch"
    if resumed:
        parent = run_row(store, resumed)
        link = _flow_run_link(parent.get("prefect_flow_run_id"), ui_url)
        lineage = f"warm-started from run `{resumed}` (flow run {link})"
    fixed = {"run_id", "run_uid", "project", "code_version", "status", "started_at", "ended_at"}
    fixed |= {"entry_script", "prefect_flow_run_id", "resumed_from", "error"}
    args = {k: v for k, v in row.items() if k not in fixed and not k.startswith("data.")}
    batches = {k.removeprefix("data."): v for k, v in row.items() if k.startswith("data.")}
    lines = [
        f"# Run `{uid}`: {row['status']}",
        "",
        "| | |",
        "| --- | --- |",
        f"| script | `{row['entry_script']}` |",
        f"| code version | `{row['code_version']}` |",
        f"| started / ended | {row['started_at']} / {row['ended_at']} |",
        f"| lineage | {lineage} |",
        f"| flow run | {_flow_run_link(row.get('prefect_flow_run_id'), ui_url)} |",
        f"| args | {', '.join(f'`{k}={v}`' for k, v in args.items() if v is not None) or '-'} |",
        f"| data | {', '.join(f'`{k}`: {v}' for k, v in batches.items() if v) or '-'} |",
    ]
    if row.get("error"):
        lines += ["", "## Error", "", "```", str(row["error"])[-2000:], "```"]
    return "\n".join(lines) + "\n"


def publish(store: Store, uid: str, project_name: str, ui_url: str | None) -> dict[str, UUID]:
    """Create the run's artifacts (inside a flow or task run); returns their ids by key.

    Tables: metrics per outer iteration, checkpoints, data; markdown: the summary, a chart of
    the run's metrics and one of the project's history (each key's latest version is the
    newest run's).
    """
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    prefix = key_prefix(project_name)
    folded = run_metrics(store, uid)
    metrics = metrics_table(folded, uid)
    tables = {
        "metrics": metrics,
        "checkpoints": Table(
            checkpoints_table(store, uid),
            f"Checkpoints of run `{uid}`: outer iteration, size, seconds to write, file.",
        ),
        "data": Table(batches_table(store, uid), f"Data batches run `{uid}` trained on."),
    }
    ids = {}
    for name, table in tables.items():
        key = f"{prefix}-{name}"
        ids[key] = create_table_artifact(table.rows, key=key, description=table.description)
    project = run_row(store, uid)["project"]
    markdowns = {
        "summary": (summary_markdown(store, uid, ui_url), f"Run `{uid}`: code, data, lineage."),
        "metrics-chart": (metrics_chart(folded, uid), f"Run `{uid}`: logged values per iteration."),
        "history": (history_chart(store, uid, project), f"`{project}`: every run's last values."),
    }
    for name, (text, description) in markdowns.items():
        if text is not None:
            key = f"{prefix}-{name}"
            ids[key] = create_markdown_artifact(text, key=key, description=description)
    return ids
