"""The wide table: every run and version as one pandas frame, one row per (run, loop context).

Values logged in an enclosing context (run-level, epoch-level) are broadcast onto the rows of
the contexts nested in it, whatever order the names are asked in. Forward values win over
replayed ones for the same cell; a name that has both also gets a `<name>@replay` column.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sqlalchemy import select

from flor_flows.record import values
from flor_flows.store import schema as s

if TYPE_CHECKING:
    from flor_flows.store.store import Store

WIDE_RUN_COLUMNS = ["run_id", "run_uid", "code_version", "started_at"]


def _columns(store: Store, sql: str, params: tuple, dtypes: dict[str, str]) -> pd.DataFrame:
    """Fetch with the DB-API cursor straight into typed numpy columns (no per-row objects)."""
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql(sql, params).cursor.fetchall()
    columns = zip(*rows, strict=True) if rows else [()] * len(dtypes)
    return pd.DataFrame(
        {
            name: np.array(col, dtype=dtype)
            for (name, dtype), col in zip(dtypes.items(), columns, strict=True)
        }
    )


def _runs(store: Store, project: str | None) -> pd.DataFrame:
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
            s.Run.error,
        )
        .join(s.Project, s.Project.id == s.Run.project_id)
        .outerjoin(s.CodeVersion, s.CodeVersion.id == s.Run.code_version_id)
        .order_by(s.Run.started_at, s.Run.id)
    )
    if project:
        query = query.where(s.Project.name == project)
    batches = select(s.DataBatch.run_id, s.DataBatch.name, s.DataBatch.uri, s.DataBatch.sha256)
    with store.engine.connect() as conn:
        runs = pd.DataFrame(conn.execute(query).mappings().all())
        data = pd.DataFrame(conn.execute(batches).mappings().all())
    if runs.empty:
        return pd.DataFrame(
            columns=["run_id", "run_uid", "code_version", "status", "started_at", "args"]
        )
    runs["started_at"] = pd.to_datetime(runs["started_at"], utc=True)
    runs["ended_at"] = pd.to_datetime(runs["ended_at"], utc=True)
    if not data.empty:
        uris = data.pivot(index="run_id", columns="name", values="uri").add_prefix("data.")
        runs = runs.merge(uris, left_on="run_id", right_index=True, how="left")
    return runs


def _expand_args(runs: pd.DataFrame) -> pd.DataFrame:
    args = pd.DataFrame.from_records(list(runs.pop("args")), index=runs.index)
    args = args.drop(columns=[c for c in args.columns if c in runs.columns])
    return pd.concat([runs, args], axis=1)


def run_table(store: Store, project: str | None = None) -> pd.DataFrame:
    """One row per run: uid, code version, status, times, args and data batches."""
    runs = _runs(store, project)
    return _expand_args(runs).drop(columns=["run_id"]).reset_index(drop=True)


def _typed(frame: pd.DataFrame) -> pd.Series:
    """One typed column from the stored (vtype, num, ival, txt) columns."""
    kinds = set(frame["vtype"].unique())
    if kinds <= {values.FLOAT, values.INT}:
        if kinds == {values.INT}:
            return frame["ival"].astype("Int64")
        ints = frame["vtype"].to_numpy() == values.INT
        return pd.Series(np.where(ints, frame["ival"], frame["num"]), index=frame.index)
    if kinds == {values.BOOL}:
        return frame["ival"].astype("boolean")
    cells = frame[["vtype", "num", "ival", "txt"]].astype(object)
    cells["num"] = cells["num"].where(frame["num"].notna(), None)
    return pd.Series(
        [values.decode(*row) for row in cells.itertuples(index=False)],
        index=frame.index,
        dtype=object,
    )


def _name_values(store: Store, name: str, signatures: dict[int, tuple[str, ...]]) -> pd.DataFrame:
    """Every stored value of `name`, typed, with its run, context, source and loop path.

    Missing context, signature and path entries come back as 0 / 0 / -1 so every key column
    is a plain int64.
    """
    with store.engine.connect() as conn:
        sigs = list(conn.scalars(select(s.LogName.sig_id).where(s.LogName.name == name)))
    depth = max((len(signatures.get(sig, ())) for sig in sigs), default=0)
    dtypes = {
        "id": "int64", "run_id": "int64", "ctx_id": "int64", "sig_id": "int64",
        "forward": "bool", "vtype": "int64", "num": "float64", "ival": "int64", "txt": "object",
    } | {f"i{k}": "int64" for k in range(depth)}  # fmt: skip
    select_list = (
        "id, run_id, COALESCE(ctx_id, 0), COALESCE(sig_id, 0), "
        "CASE WHEN source = 'forward' THEN 1 ELSE 0 END, vtype, num, COALESCE(ival, 0), txt"
        + "".join(f", COALESCE(i{k}, -1)" for k in range(depth))
    )
    mark = "?" if store.engine.dialect.paramstyle == "qmark" else "%s"
    frame = _columns(store, f"SELECT {select_list} FROM logs WHERE name = {mark}", (name,), dtypes)
    frame["value"] = _typed(frame)
    return frame.drop(columns=["vtype", "num", "ival", "txt"])


def _signatures(store: Store) -> dict[int, tuple[str, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(s.LoopSignature.id, s.LoopSignature.names)).all()
    return {sig: tuple(json.loads(names)) for sig, names in rows}


def _cells(store: Store, names: list[str], signatures: dict[int, tuple[str, ...]]) -> pd.DataFrame:
    """Rows keyed by (run_id, ctx_id) with their loop path and one column per name."""
    keys = ["run_id", "ctx_id"]
    rows: pd.DataFrame | None = None
    columns: list[pd.DataFrame] = []
    for name in names:
        frame = _name_values(store, name, signatures)
        forward = frame["forward"]
        best = frame.sort_values(["forward", "id"]).drop_duplicates(keys, keep="last")
        column = best[[*keys, "value"]].rename(columns={"value": name})
        if forward.any() and not forward.all():
            replayed = frame[~forward].sort_values("id").drop_duplicates(keys, keep="last")
            replayed = replayed[[*keys, "value"]].rename(columns={"value": f"{name}@replay"})
            column = column.merge(replayed, on=keys, how="left")
        columns.append(column)
        path = best.drop(columns=["id", "value", "forward"])
        rows = path if rows is None else pd.concat([rows, path]).drop_duplicates(keys)
    rows = rows.reset_index(drop=True)
    for column in columns:
        rows = rows.merge(column, on=keys, how="left")
    return rows


def _broadcast(
    rows: pd.DataFrame, names: list[str], signatures: dict[int, tuple[str, ...]]
) -> pd.DataFrame:
    """Fold rows of enclosing contexts onto the rows of the contexts nested in them."""
    sig = rows["sig_id"]
    depth_of = {x: len(signatures.get(x, ())) for x in sig.unique()}  # sig 0: run level
    depth = sig.map(depth_of).to_numpy()
    keep = np.ones(len(rows), dtype=bool)
    filled = rows.copy()
    for k in range(int(depth.max(initial=0))):
        prefix = sig.map({x: "/".join(signatures.get(x, ())[:k]) for x in depth_of})
        key_cols = ["run_id", *(f"i{j}" for j in range(k))]
        key = pd.MultiIndex.from_arrays([prefix, *(rows[c] for c in key_cols)])
        outer, inner = depth == k, depth > k
        if not outer.any() or not inner.any():
            continue
        enclosing = rows.loc[outer, names].set_axis(key[outer])
        enclosing = enclosing[~enclosing.index.duplicated(keep="last")]
        keep[outer] &= ~key[outer].isin(key[inner])
        found = enclosing.reindex(key[inner])
        for name in names:
            target = filled.loc[inner, name]
            filled.loc[inner, name] = target.where(target.notna(), found[name].to_numpy())
    return filled[keep]


def _loop_columns(rows: pd.DataFrame, signatures: dict[int, tuple[str, ...]]) -> list[str]:
    """Add one nullable integer column per loop name, from the flattened path."""
    loops: list[str] = []
    for sig in rows["sig_id"].unique():
        mask = (rows["sig_id"] == sig).to_numpy()
        for level, loop in enumerate(signatures.get(int(sig), ())):
            if loop not in loops:
                loops.append(loop)
                rows[loop] = pd.array([pd.NA] * len(rows), dtype="Int64")
            path = rows.loc[mask, f"i{level}"]
            rows.loc[mask, loop] = path.where(path >= 0).astype("Int64")
    return loops


def _loop_values(store: Store, rows: pd.DataFrame, loops: list[str]) -> list[str]:
    """`<loop>_value` columns for loops whose items are not their index (FlorDB's convention)."""
    run_ids = [int(r) for r in rows["run_id"].unique()]
    if not run_ids:
        return []
    query = select(s.Context.run_id, s.Context.ctx_id, s.Context.path_values).where(
        s.Context.path_values.is_not(None), s.Context.run_id.in_(run_ids)
    )
    with store.engine.connect() as conn:
        found = conn.execute(query).all()
    if not found:
        return []
    by_ctx = {(run, ctx): json.loads(vals) for run, ctx, vals in found}
    added: list[str] = []
    for index, row in rows[rows["ctx_id"] != 0].iterrows():
        path_values = by_ctx.get((row["run_id"], int(row["ctx_id"])))
        if path_values is None:
            continue
        names = [loop for loop in loops if pd.notna(row[loop])] or loops
        for loop, value in zip(names, path_values, strict=False):
            if value is None:
                continue
            column = f"{loop}_value"
            if column not in rows:
                rows[column] = pd.Series([None] * len(rows), index=rows.index, dtype=object)
                added.append(column)
            rows.at[index, column] = value
    return added


def wide_table(store: Store, names: list[str], project: str | None = None) -> pd.DataFrame:
    """One row per (run, loop context) holding the requested names."""
    runs = _runs(store, project)
    data = [c for c in runs.columns if c.startswith("data.")]
    runs = _expand_args(runs[[*WIDE_RUN_COLUMNS, *data, "args"]])
    signatures = _signatures(store)
    rows = _cells(store, names, signatures)
    rows = rows[rows["run_id"].isin(runs["run_id"])]
    value_columns = [c for c in rows.columns if c in names or c.endswith("@replay")]
    rows = _broadcast(rows.reset_index(drop=True), value_columns, signatures)
    loops = _loop_columns(rows, signatures)
    loops += _loop_values(store, rows, loops)
    runs = runs.drop(columns=[c for c in runs.columns if c in value_columns or c in loops])
    table = runs.merge(rows[["run_id", *loops, *value_columns]], on="run_id", how="inner")
    table = table.sort_values(["started_at", "run_id", *loops[: len(loops)]], kind="stable")
    return table.drop(columns=["run_id"]).reset_index(drop=True)
