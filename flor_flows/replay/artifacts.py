"""What a backfill flow run publishes: its result per run and code version, as a table and
a chart, and a live status table of its runs.

The result and the chart are plain functions of the store; `StatusBoard` keeps one table
artifact up to date (Prefect's PATCH /artifacts/{id}) as the replays finish.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from uuid import UUID

from flor_flows import charts
from flor_flows.publishing import published
from flor_flows.replay import plan
from flor_flows.store import Store
from flor_flows.training.artifacts import (
    Folded,
    Table,
    capped,
    fold,
    records,
    short_uid,
)

if TYPE_CHECKING:
    from flor_flows.replay.engine import Version

VERSION = 10  # characters of a commit shown
CHART_RUNS = 12  # runs drawn in the backfill chart (the latest)
ERROR_CHARS = 300  # of an error in the status table


def diff_key(prefix: str, commit: str) -> str:
    """The key of a code version's diff artifact: one per version, e.g. proj-backfill-diff-1a2b3c4d5e."""
    return f"{prefix}-backfill-diff-{commit[:VERSION].lower()}"


def publish_diff(version: Version, prefix: str) -> None:
    """What was inserted into one code version, or why not, as a markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    parts = [f"# Code version `{version.commit[:VERSION]}`"]
    for path, result in version.propagations.items():
        parts += [
            f"- `{p.name}` in {path} at line {p.line}, confidence {p.confidence:.2f}"
            for p in result.placements
        ]
        parts += [f"- refused in {path}: {r}" for r in result.refusals]
        if path in version.diffs:
            parts.append(f"```diff\n{version.diffs[path]}```")
    published(
        create_markdown_artifact,
        "\n".join(parts),
        key=diff_key(prefix, version.commit),
        description=f"The new statements in code version `{version.commit[:VERSION]}`.",
    )


def publish_result(store: Store, names: Sequence[str], prefix: str) -> None:
    """The new values across runs and code versions: a table and a chart."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    folded = backfill_result(store, names)
    table = result_table(folded, names)
    published(
        create_table_artifact,
        table.rows,
        key=f"{prefix}-backfill-result",
        description=table.description,
    )
    chart = result_chart(folded, names)
    if chart is not None:
        published(
            create_markdown_artifact,
            chart,
            key=f"{prefix}-backfill-chart",
            description=f"{', '.join(names)} per iteration, a line per run.",
        )


def backfill_result(store: Store, names: Sequence[str]) -> Folded | None:
    """The values of `names` in every run that has them, folded to the outer loop per run and
    code version, with the runs' other columns; None if no run has any."""
    names = list(names)
    frame = store.dataframe(names)
    if frame.empty:
        return None
    return fold(store, frame, names, ["run_uid", "code_version"], carry=True)


def result_table(folded: Folded | None, names: Sequence[str]) -> Table:
    """Columns run, version, iteration, then the new names, then the rest (times, data, args)."""
    every = f"Every value: `flor-flows dataframe {','.join(names)}`."
    if folded is None:
        return Table([], f"No run has values of {', '.join(names)}. {every}")
    frame = folded.frame.assign(
        run_uid=folded.frame["run_uid"].map(short_uid),
        code_version=folded.frame["code_version"].str[:VERSION],
    ).rename(columns={"run_uid": "run", "code_version": "version"})
    loop = [folded.loop] if folded.loop else []
    new = [c for c in frame.columns if c.split(" (")[0].removesuffix("@replay") in names]
    first = ["run", "version", *loop, *new]
    frame = frame[[*first, *(c for c in frame.columns if c not in first)]]
    shown, note = capped(frame)
    runs = folded.frame["run_uid"].nunique()
    per = f"one row per run and `{folded.loop}`" if folded.loop else "one row per run"
    text = f"{', '.join(names)} in {runs} runs, {per} ({len(frame)} rows). {note}{every}"
    return Table(records(shown), text)


def result_chart(folded: Folded | None, names: Sequence[str]) -> str | None:
    """Markdown: a panel per new name, a line per run (labelled with its code version)."""
    if folded is None or folded.loop is None:
        return None
    frame = folded.frame
    runs = frame["run_uid"].unique().tolist()[-CHART_RUNS:]
    frame = frame[frame["run_uid"].isin(runs)]
    label = frame["run_uid"].map(short_uid) + " @ " + frame["code_version"].str[:VERSION]
    frame = frame.assign(line=label)
    groups = {folded.column(n): [folded.column(n)] for n in names if n in folded.names}
    panels = charts.panels_by_column(frame, folded.loop, groups, by="line")
    if not panels:
        return None
    caption = (
        f"Per `{folded.loop}`, a line per run (run @ code version); the {len(runs)} latest of "
        f"{folded.frame['run_uid'].nunique()} runs with values."
    )
    return charts.markdown(f"Backfill of {', '.join(names)}", panels, caption)


class StatusBoard:
    """The live status table of a backfill: run, version, status, seconds, error.

    Created as the replays start (every run `planned`), then updated in place (the same
    artifact id, new data) each time a run changes status; `seconds` is the wall time from
    its first replay's start to its final status.
    """

    def __init__(self, key: str, items: Sequence[plan.Item]) -> None:
        from prefect.artifacts import create_table_artifact

        self.key = key
        self.rows: dict[str, dict[str, Any]] = {}
        for item in items:
            self.rows.setdefault(
                item.run_uid,
                {
                    "run": short_uid(item.run_uid),
                    "version": item.code_version[:VERSION],
                    "status": "planned",
                    "seconds": None,
                    "error": None,
                },
            )
        self.started: dict[str, float] = {}
        self.artifact_id: UUID | None = published(
            create_table_artifact, list(self.rows.values()), key=key, description=self.description()
        )

    def description(self) -> str:
        """The artifact's caption: how many runs are in each status now."""
        counts: dict[str, int] = {}
        for row in self.rows.values():
            counts[row["status"]] = counts.get(row["status"], 0) + 1
        states = ", ".join(f"{n} {status}" for status, n in counts.items())
        return f"Backfill status of {len(self.rows)} runs: {states} (updated as runs finish)."

    def set(self, run_uid: str, status: str, error: str | None = None) -> None:
        """Record `status` for the run and update the artifact (while the API is up)."""
        from prefect.client.schemas.actions import ArtifactUpdate

        row = self.rows[run_uid]
        if status == "replaying":
            self.started.setdefault(run_uid, time.monotonic())
        elif run_uid in self.started:  # a final status
            row["seconds"] = round(time.monotonic() - self.started[run_uid], 1)
        row["status"] = status
        row["error"] = None if error is None else error[-ERROR_CHARS:]
        if self.artifact_id is None:  # not published: the API was down
            return
        update = ArtifactUpdate(
            data=json.dumps(list(self.rows.values())), description=self.description()
        )
        published(_patch, self.artifact_id, update)


def _patch(artifact_id: UUID, update: Any) -> None:  # noqa: ANN401 - an ArtifactUpdate
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_artifact(artifact_id, update)
