"""What a training flow run publishes: its records in the store, as Prefect artifacts.

The tables are built from the store (plain functions, testable without Prefect); `publish`
creates the artifacts under keys fixed per project, so the UI shows each key's history
across runs.
"""

from __future__ import annotations

import json
import re
from typing import Any
from uuid import UUID

import pandas as pd

from flor_flows.secrets import mask_secrets
from flor_flows.store import Store

MAX_METRIC_ROWS = 5_000  # the UI struggles long before Prefect's (absent) size limit


def key_prefix(project_name: str) -> str:
    """An artifact-key-safe form of the project name (lowercase letters, digits, dashes)."""
    return re.sub(r"[^a-z0-9]+", "-", project_name.lower()).strip("-") or "project"


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """JSON-ready rows: missing cells become None, timestamps ISO strings, the values of
    secret-looking columns (args named like passwords, tokens, keys) masked."""
    rows = json.loads(frame.to_json(orient="records", date_format="iso"))
    return [mask_secrets(row) for row in rows]


def run_row(store: Store, uid: str) -> dict[str, Any]:
    """The run's row of `store.runs()`: status, code version, times, lineage, args, batches."""
    runs = store.runs(uids=[uid])
    if runs.empty:
        raise LookupError(f"no run {uid!r} in the store")
    return records(runs)[0]


def metrics_table(store: Store, uid: str) -> list[dict[str, Any]]:
    """Every name the run logged, one row per loop context (loop columns first)."""
    names = store.logged_names(uid)
    if not names:
        return []
    frame = store.dataframe(names, uids=[uid])
    run_columns = set(store.runs(uids=[uid]).columns)
    frame = frame[[c for c in frame.columns if c not in run_columns]]
    return records(frame.head(MAX_METRIC_ROWS))


def checkpoints_table(store: Store, uid: str) -> list[dict[str, Any]]:
    rows = store.checkpoints_of(store.run_id(uid))
    columns = ("loop_name", "iteration", "ctx_id", "uri", "bytes", "sha256", "seconds")
    return [{c: row[c] for c in columns} for row in rows]


def batches_table(store: Store, uid: str) -> list[dict[str, Any]]:
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
    """Create the run's four artifacts (inside a flow or task run); returns their ids by key."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    prefix = key_prefix(project_name)
    tables = {
        "metrics": (metrics_table(store, uid), "Logged values per loop context"),
        "checkpoints": (checkpoints_table(store, uid), "Checkpoints (loop context, uri, size)"),
        "data": (batches_table(store, uid), "Data batches the run trained on"),
    }
    ids = {}
    for name, (table, what) in tables.items():
        key = f"{prefix}-{name}"
        ids[key] = create_table_artifact(table, key=key, description=f"{what}, run `{uid}`")
    key = f"{prefix}-summary"
    ids[key] = create_markdown_artifact(
        summary_markdown(store, uid, ui_url), key=key, description=f"Run `{uid}`"
    )
    return ids
