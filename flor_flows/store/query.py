"""The wide table: every run and version as one pandas frame, one row per (run, loop context).

Values logged in an enclosing context (run-level, epoch-level) are broadcast onto the rows of
the contexts nested in it, whatever order the names are asked in. Forward values win over
replayed ones for the same cell; a name that has both also gets a `<name>@replay` column.

A name logged several times in one context (per batch, inside an epoch) keeps every value: the
table then has a `seq` column, 0, 1, ... in logging order, and one row per (run, context, seq).
Names logged at most once per context are broadcast onto every `seq` row of their context; an
enclosing context whose values repeat keeps its own rows. Values of diverged replays are left
out unless asked for.

Here are the reads (the SQL, on the store's engine); `store.cells` shapes what they return.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import connectorx
import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased

from flor_flows import values
from flor_flows.store import cells
from flor_flows.store import schema as s
from flor_flows.store.names import ARG, expand_args, known

WIDE_RUN_COLUMNS = ["run_id", "run_uid", "code_version", "started_at"]


def _connectorx_url(engine: Engine) -> str | None:
    """The database's URL in connectorx's form, when connectorx can read that database."""
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return f"sqlite://{os.path.abspath(url.database)}"
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    return None


def _fetch(engine: Engine, sql: str) -> pd.DataFrame:
    """Run a SELECT into a DataFrame, columnar (connectorx) where the database allows it."""
    source = _connectorx_url(engine)
    if source is not None:
        with warnings.catch_warnings():  # connectorx builds frames with a pandas-internal API
            warnings.simplefilter("ignore", DeprecationWarning)
            return connectorx.read_sql(source, sql)
    with engine.connect() as conn:
        result = conn.exec_driver_sql(sql)
        return pd.DataFrame.from_records(result.cursor.fetchall(), columns=list(result.keys()))


def _literal(text: str) -> str:
    """A SQL string literal (connectorx takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _runs(engine: Engine, project: str | None, uids: Sequence[str] | None = None) -> pd.DataFrame:
    resumed = aliased(s.Run)
    query = (
        select(
            s.Run.id.label("run_id"),
            s.Run.uid.label("run_uid"),
            s.Project.name.label("project"),
            s.CodeVersion.commit.label("code_version"),
            s.Run.status,
            s.Run.started_at,
            s.Run.ended_at,
            s.Run.entry_script,
            s.Run.args,
            s.Run.prefect_flow_run_id,
            resumed.uid.label("resumed_from"),
            s.Run.error,
            s.Run.host,
            s.Run.pid,
        )
        .join(s.Project, s.Project.id == s.Run.project_id)
        .outerjoin(s.CodeVersion, s.CodeVersion.id == s.Run.code_version_id)
        .outerjoin(resumed, resumed.id == s.Run.resumed_from_id)
        .order_by(s.Run.started_at, s.Run.id)
    )
    batches = select(s.DataBatch.run_id, s.DataBatch.name, s.DataBatch.uri, s.DataBatch.sha256)
    if project:
        query = query.where(s.Project.name == project)
    if uids is not None:
        query = query.where(s.Run.uid.in_(uids))
        batches = batches.join(s.Run, s.Run.id == s.DataBatch.run_id).where(s.Run.uid.in_(uids))
    with engine.connect() as conn:
        runs = pd.DataFrame(conn.execute(query).mappings().all())
        data = pd.DataFrame(conn.execute(batches).mappings().all())
    if runs.empty:
        return pd.DataFrame(
            columns=["run_id", "run_uid", "code_version", "status", "started_at", "args"]
        )
    runs["started_at"] = pd.to_datetime(runs["started_at"], utc=True)
    runs["ended_at"] = pd.to_datetime(runs["ended_at"], utc=True)
    _show_dead_runs(runs)
    if not data.empty:
        uris = data.pivot(index="run_id", columns="name", values="uri").add_prefix("data.")
        runs = runs.merge(uris, left_on="run_id", right_index=True, how="left")
    return runs


def _show_dead_runs(runs: pd.DataFrame) -> None:
    """Show runs of this host whose process is gone as failed (reading writes nothing: the
    next run recorded on this host marks them in the store)."""
    from flor_flows.process import DIED, HOST, alive

    host, pid = runs.pop("host"), runs.pop("pid")
    running = (runs["status"] == "running") & (host == HOST)
    dead = [bool(r) and not alive(int(p)) for r, p in zip(running, pid, strict=True)]
    runs.loc[dead, "status"] = "failed"
    runs.loc[dead, "error"] = runs.loc[dead, "error"].fillna(DIED)


def run_table(
    engine: Engine, project: str | None = None, uids: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per run: uid, code version, status, times, args and data batches."""
    runs = _runs(engine, project, uids)
    return expand_args(runs).drop(columns=["run_id"]).reset_index(drop=True)


def _typed(frame: pd.DataFrame, kinds: set[int]) -> pd.Series:
    """One typed column from the stored value columns that `_name_values` fetched."""
    if kinds == {values.FLOAT}:
        return frame["num"].astype("float64")
    if kinds == {values.INT}:
        return frame["ival"].astype("Int64")
    if kinds == {values.BOOL}:
        return frame["ival"].astype("boolean")
    if kinds == {values.FLOAT, values.INT}:
        ints = (frame["vtype"] == values.INT).to_numpy()
        return pd.Series(
            np.where(ints, frame["ival"].astype("float64"), frame["num"].astype("float64")),
            index=frame.index,
        )
    stored = frame[["vtype", "num", "ival", "txt"]].astype(object)
    stored = stored.where(frame[["vtype", "num", "ival", "txt"]].notna(), None)
    return pd.Series(
        [values.decode(*row) for row in stored.itertuples(index=False)],
        index=frame.index,
        dtype=object,
    )


def _value_columns(kinds: set[int]) -> list[str]:
    if kinds == {values.FLOAT}:
        return ["num"]
    if kinds in ({values.INT}, {values.BOOL}):
        return ["ival"]
    if kinds == {values.FLOAT, values.INT}:
        return ["vtype", "num", "ival"]
    return ["vtype", "num", "ival", "txt"]


def _name_values(
    engine: Engine,
    name: str,
    signatures: dict[int, tuple[str, ...]],
    run_ids: Sequence[int] | None,
    include_diverged: bool = False,
) -> pd.DataFrame:
    """Every stored value of `name`, typed, with its run, context, source and loop path.

    The `log_names` catalog says which signatures, types and sources exist, so only the
    columns this name needs are fetched. Values of a diverged replay only with `include_diverged`.
    """
    with engine.connect() as conn:
        catalog = conn.execute(
            select(s.LogName.sig_id, s.LogName.vtype, s.LogName.source).where(
                s.LogName.name == name
            )
        ).all()
    sigs = {row.sig_id for row in catalog}
    kinds = {row.vtype for row in catalog}
    sources = {row.source for row in catalog}
    depth = max((len(signatures.get(sig, ())) for sig in sigs), default=0)
    columns = ["run_id", "ctx_id"]
    columns += ["sig_id"] if len(sigs) > 1 else []
    columns += ["source"] if len(sources) > 1 else []
    columns += _value_columns(kinds) + [f"i{k}" for k in range(depth)]
    # Rows come in (run, write) order: `seq` numbers a context's values in logging order.
    where = f"name = {_literal(name)}"
    if run_ids is not None:
        where += f" AND run_id IN ({', '.join(str(int(r)) for r in run_ids) or 'NULL'})"
    if "replay" in sources and not include_diverged:
        diverged = f"SELECT id FROM replays WHERE status = {_literal('diverged')}"
        where += f" AND (replay_id IS NULL OR replay_id NOT IN ({diverged}))"
    sql = f"SELECT {', '.join(columns)} FROM logs WHERE {where} ORDER BY run_id, id"
    frame = _fetch(engine, sql)
    frame["ctx_id"] = frame["ctx_id"].fillna(0).astype("int64")
    if "sig_id" in frame:
        frame["sig_id"] = frame["sig_id"].fillna(0).astype("int64")
    else:
        frame["sig_id"] = next(iter(sigs), 0)
    if "source" in frame:
        frame["forward"] = (frame.pop("source") == "forward").to_numpy()
    else:
        frame["forward"] = sources == {"forward"}
    frame["value"] = _typed(frame, kinds)
    return frame.drop(columns=[c for c in ("vtype", "num", "ival", "txt") if c in frame])


def _signatures(engine: Engine) -> dict[int, tuple[str, ...]]:
    with engine.connect() as conn:
        rows = conn.execute(select(s.LoopSignature.id, s.LoopSignature.names)).all()
    return {sig: tuple(json.loads(names)) for sig, names in rows}


def _logged_rows(
    engine: Engine,
    names: list[str],
    signatures: dict[int, tuple[str, ...]],
    run_ids: Sequence[int] | None,
    include_diverged: bool,
) -> tuple[pd.DataFrame, list[str]]:
    """Rows keyed by (run_id, ctx_id[, seq]) with their loop path and one column per name,
    and the columns of the names that repeat in some context."""
    frames = [
        cells.name_cells(_name_values(engine, name, signatures, run_ids, include_diverged), name)
        for name in names
    ]
    many = [k for k, frame in enumerate(frames) if "seq" in frame]
    once = [k for k, frame in enumerate(frames) if "seq" not in frame]
    repeated = [c for k in many for c in frames[k].columns if c in (names[k], f"{names[k]}@replay")]
    keys = ["run_id", "ctx_id"]
    if not many:
        return cells.join(frames, names, keys), repeated
    rows = cells.join([frames[k] for k in many], [names[k] for k in many], [*keys, "seq"])
    if once:  # values logged once per context go onto every `seq` row of their context
        single = cells.join([frames[k] for k in once], [names[k] for k in once], keys)
        rows = rows.merge(single, on=[c for c in single.columns if c in rows.columns], how="outer")
    rows["seq"] = rows["seq"].fillna(0).astype("int64")
    return rows, repeated


def _loop_values(
    engine: Engine, rows: pd.DataFrame, signatures: dict[int, tuple[str, ...]]
) -> dict[str, pd.Series]:
    """`<loop>_value` columns for loops whose items are not their index (FlorDB's convention)."""
    query = select(s.Context.run_id, s.Context.ctx_id, s.Context.path_values).where(
        s.Context.path_values.is_not(None)
    )
    with engine.connect() as conn:
        found = conn.execute(query).all()
    if not found:
        return {}
    by_ctx = {(run, ctx): json.loads(vals) for run, ctx, vals in found}
    columns: dict[str, list] = {}
    keys = zip(rows["run_id"], rows["ctx_id"], rows["sig_id"], strict=True)
    for position, (run, ctx, sig) in enumerate(keys):
        path_values = by_ctx.get((int(run), int(ctx)), ())
        for loop, value in zip(signatures.get(int(sig), ()), path_values, strict=False):
            if value is not None:
                columns.setdefault(f"{loop}_value", [None] * len(rows))[position] = value
    return {
        name: pd.Series(column, index=rows.index, dtype=object) for name, column in columns.items()
    }


def wide_table(
    engine: Engine,
    names: list[str],
    project: str | None = None,
    uids: Sequence[str] | None = None,
    include_diverged: bool = False,
) -> pd.DataFrame:
    """One row per (run, loop context[, seq]) holding the requested names (of runs `uids`, or all).

    A name may be an arg (`lr`, or `arg.lr` where a logged name `lr` takes the plain one): a
    run holding an asked-for arg but none of the values still has a row. Values of replays
    whose status is 'diverged' are left out unless `include_diverged`.
    """
    runs = _runs(engine, project, uids)
    data = [c for c in runs.columns if c.startswith("data.")]
    runs = runs[[*WIDE_RUN_COLUMNS, *data, "args"]].reset_index(drop=True)
    logged, args = known(engine, names, runs)
    signatures = _signatures(engine)
    # Only the runs shown: another project's repeats must not add a `seq` column here.
    run_ids = None if uids is None and project is None else runs["run_id"].tolist()
    rows, repeated = (
        _logged_rows(engine, logged, signatures, run_ids, include_diverged)
        if logged
        else (pd.DataFrame({"run_id": [], "ctx_id": [], "sig_id": []}, dtype="int64"), [])
    )
    position = pd.Index(runs["run_id"]).get_indexer(rows["run_id"])
    rows, position = rows[position >= 0].reset_index(drop=True), position[position >= 0]
    value_columns = [c for c in rows.columns if c in logged or c.endswith("@replay")]
    if "seq" in rows:  # repeated names were joined first: show them in the order asked
        value_columns = [c for n in logged for c in (n, f"{n}@replay") if c in value_columns]
    rows = cells.broadcast(rows, value_columns, signatures, repeated)
    position = pd.Index(runs["run_id"]).get_indexer(rows["run_id"])
    loops = cells.loop_columns(rows, signatures) | _loop_values(engine, rows, signatures)
    # Order: runs by start time, then loop iterations, then seq; one lexsort over integer keys.
    sort_keys = [
        c.fillna(-1).to_numpy() for c in reversed(list(loops.values())) if c.dtype == "Int64"
    ]
    if "seq" in rows:  # right after the loop columns
        loops["seq"] = rows["seq"]
        sort_keys.insert(0, rows["seq"].to_numpy())
    order = np.lexsort([*sort_keys, position])
    # Each row's run, and its row of values (-1: a run with an asked-for arg but no values).
    holds = runs["args"].map(lambda recorded: bool(args.intersection(recorded or {})))
    alone = np.setdiff1d(np.flatnonzero(holds.to_numpy()), position)
    run_rows = np.concatenate([position[order], alone])
    value_rows = np.concatenate([order, np.full(len(alone), -1)])
    by_run = np.argsort(run_rows, kind="stable")
    run_rows, value_rows = run_rows[by_run], value_rows[by_run]
    taken = {*value_columns, *loops, *(n.removeprefix(ARG) for n in names if n.startswith(ARG))}
    table = expand_args(runs, taken)
    table = table.drop(columns=["run_id", *(c for c in runs.columns if c in taken)])
    table = table.take(run_rows).reset_index(drop=True)
    for name, column in loops.items():
        table[name] = column.array.take(value_rows, allow_fill=True)
    for name in value_columns:
        table[name] = rows[name].array.take(value_rows, allow_fill=True)
    return table
