"""The wide table: every run and version as one pandas frame, one row per (run, loop context).

Values logged in an enclosing context (run-level, epoch-level) are broadcast onto the rows of
the contexts nested in it, whatever order the names are asked in. Forward values win over
replayed ones for the same cell; a name that has both also gets a `<name>@replay` column.

A name logged several times in one context (per batch, inside an epoch) keeps every value: the
table then has a `seq` column, 0, 1, ... in logging order, and one row per (run, context, seq).
Names logged at most once per context are broadcast onto every `seq` row of their context; an
enclosing context whose values repeat keeps its own rows. Values of diverged replays are left
out unless asked for.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import connectorx
import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import aliased

from flor_flows import values
from flor_flows.store import schema as s
from flor_flows.store.names import ARG, expand_args, known

if TYPE_CHECKING:
    from flor_flows.store.store import Store

WIDE_RUN_COLUMNS = ["run_id", "run_uid", "code_version", "started_at"]


def _connectorx_url(store: Store) -> str | None:
    """The store's URL in connectorx's form, when connectorx can read that database."""
    url = store.engine.url
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return f"sqlite://{os.path.abspath(url.database)}"
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql").render_as_string(hide_password=False)
    return None


def _fetch(store: Store, sql: str) -> pd.DataFrame:
    """Run a SELECT into a DataFrame, columnar (connectorx) where the database allows it."""
    source = _connectorx_url(store)
    if source is not None:
        with warnings.catch_warnings():  # connectorx builds frames with a pandas-internal API
            warnings.simplefilter("ignore", DeprecationWarning)
            return connectorx.read_sql(source, sql)
    with store.engine.connect() as conn:
        result = conn.exec_driver_sql(sql)
        return pd.DataFrame.from_records(result.cursor.fetchall(), columns=list(result.keys()))


def _literal(text: str) -> str:
    """A SQL string literal (connectorx takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _runs(store: Store, project: str | None, uids: Sequence[str] | None = None) -> pd.DataFrame:
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
    with store.engine.connect() as conn:
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
    store: Store, project: str | None = None, uids: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per run: uid, code version, status, times, args and data batches."""
    runs = _runs(store, project, uids)
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
    cells = frame[["vtype", "num", "ival", "txt"]].astype(object)
    cells = cells.where(frame[["vtype", "num", "ival", "txt"]].notna(), None)
    return pd.Series(
        [values.decode(*row) for row in cells.itertuples(index=False)],
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
    store: Store,
    name: str,
    signatures: dict[int, tuple[str, ...]],
    run_ids: Sequence[int] | None,
    include_diverged: bool = False,
) -> pd.DataFrame:
    """Every stored value of `name`, typed, with its run, context, source and loop path.

    The `log_names` catalog says which signatures, types and sources exist, so only the
    columns this name needs are fetched. Values of a diverged replay only with `include_diverged`.
    """
    with store.engine.connect() as conn:
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
    frame = _fetch(store, sql)
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


def _signatures(store: Store) -> dict[int, tuple[str, ...]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(s.LoopSignature.id, s.LoopSignature.names)).all()
    return {sig: tuple(json.loads(names)) for sig, names in rows}


_MIX = np.uint64(0x9E3779B97F4A7C15)


def _may_repeat(frame: pd.DataFrame) -> bool:
    """Whether a (run, ctx, source) may hold several values: a cheap test, sure when False."""
    key = frame["ctx_id"].to_numpy(np.uint64) ^ (frame["run_id"].to_numpy(np.uint64) * _MIX)
    return not pd.Index(key ^ frame["forward"].to_numpy(np.uint64)).is_unique


def _name_cells(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """One name's cells keyed by (run, ctx[, seq]); `seq` only if some context repeats.

    The k-th forward and the k-th replayed value of a context share a cell: the forward one
    wins it, and a name that has both also gets `<name>@replay`.
    """
    keys = ["run_id", "ctx_id"]
    forward = frame["forward"]
    if _may_repeat(frame):  # rows are in write order: number each context's values
        frame["seq"] = frame.groupby([*keys, "forward"], sort=False).cumcount()
        keys.append("seq")
    elif forward.all():
        return frame.drop(columns=["forward"]).rename(columns={"value": name})
    if not forward.all():  # forward values win: put them last, keeping write order
        frame = frame.sort_values("forward", kind="stable")
    best = frame.drop_duplicates(keys, keep="last").rename(columns={"value": name})
    if forward.any() and not forward.all():
        replayed = frame.loc[~frame["forward"], [*keys, "value"]]
        best = best.merge(replayed.rename(columns={"value": f"{name}@replay"}), on=keys, how="left")
    best = best.drop(columns=["forward"])
    return best if "seq" not in best or (best["seq"] > 0).any() else best.drop(columns=["seq"])


def _join(frames: list[pd.DataFrame], names: list[str], keys: list[str]) -> pd.DataFrame:
    """Outer join of name frames on their shared path; names in the same cells share a frame."""
    groups: list[pd.DataFrame] = []
    for frame, name in zip(frames, names, strict=True):
        same = next((g for g in groups if _same_keys(g, frame, keys)), None)
        if same is None:
            groups.append(frame.reset_index(drop=True))
        else:
            for column in (name, f"{name}@replay"):
                if column in frame:
                    same[column] = frame[column].to_numpy()
    rows = groups[0]
    for group in groups[1:]:
        path = [c for c in group.columns if c in rows.columns]
        rows = rows.merge(group, on=path, how="outer")
    return rows


def _cells(
    store: Store,
    names: list[str],
    signatures: dict[int, tuple[str, ...]],
    run_ids: Sequence[int] | None,
    include_diverged: bool,
) -> tuple[pd.DataFrame, list[str]]:
    """Rows keyed by (run_id, ctx_id[, seq]) with their loop path and one column per name,
    and the columns of the names that repeat in some context."""
    frames = [
        _name_cells(_name_values(store, name, signatures, run_ids, include_diverged), name)
        for name in names
    ]
    many = [k for k, frame in enumerate(frames) if "seq" in frame]
    once = [k for k, frame in enumerate(frames) if "seq" not in frame]
    repeated = [c for k in many for c in frames[k].columns if c in (names[k], f"{names[k]}@replay")]
    keys = ["run_id", "ctx_id"]
    if not many:
        return _join(frames, names, keys), repeated
    rows = _join([frames[k] for k in many], [names[k] for k in many], [*keys, "seq"])
    if once:  # values logged once per context go onto every `seq` row of their context
        single = _join([frames[k] for k in once], [names[k] for k in once], keys)
        rows = rows.merge(single, on=[c for c in single.columns if c in rows.columns], how="outer")
    rows["seq"] = rows["seq"].fillna(0).astype("int64")
    return rows, repeated


def _same_keys(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> bool:
    return len(left) == len(right) and all(
        np.array_equal(left[k].to_numpy(), right[k].to_numpy()) for k in keys
    )


def _broadcast(
    rows: pd.DataFrame,
    names: list[str],
    signatures: dict[int, tuple[str, ...]],
    repeated: Sequence[str] = (),
) -> pd.DataFrame:
    """Fold rows of enclosing contexts onto the rows of the contexts nested in them
    (with `seq`, a context keeps its rows when a `repeated` column has several values in it)."""
    sig = rows["sig_id"]
    depth_of = {x: len(signatures.get(x, ())) for x in sig.unique()}  # sig 0: run level
    if len(set(depth_of.values())) < 2:
        return rows  # every row at one depth: nothing encloses anything
    depth = sig.map(depth_of).to_numpy()
    keep = np.ones(len(rows), dtype=bool)
    filled = rows.copy()
    for k in range(int(depth.max(initial=0))):
        outer, inner = depth == k, depth > k
        if not outer.any() or not inner.any():
            continue
        prefix = sig.map({x: "/".join(signatures.get(x, ())[:k]) for x in depth_of})
        key_cols = ["run_id", *(f"i{j}" for j in range(k))]
        key = pd.MultiIndex.from_arrays([prefix, *(rows[c] for c in key_cols)])
        enclosing = rows.loc[outer, names].set_axis(key[outer])
        if "seq" in rows:
            enclosing, stays = _singles(enclosing, [c for c in names if c in repeated])
            keep[outer] &= ~key[outer].isin(key[inner]) | key[outer].isin(stays)
        else:
            enclosing = enclosing[~enclosing.index.duplicated(keep="last")]
            keep[outer] &= ~key[outer].isin(key[inner])
        found = enclosing.reindex(key[inner])
        for name in names:
            target = filled.loc[inner, name]
            filled.loc[inner, name] = target.where(target.notna(), found[name].to_numpy())
    return filled[keep]


def _singles(enclosing: pd.DataFrame, repeated: list[str]) -> tuple[pd.DataFrame, pd.Index]:
    """Per enclosing context, the values to broadcast (not a `repeated` column's several ones)
    and the contexts where some value repeats: those keep their rows."""
    grouped = enclosing.groupby(level=list(range(enclosing.index.nlevels)), dropna=False)
    singles = grouped.last()
    several = grouped[repeated].count() > 1
    singles[repeated] = singles[repeated].mask(several)
    return singles, singles.index[several.any(axis=1).to_numpy()]


def _loop_columns(
    rows: pd.DataFrame, signatures: dict[int, tuple[str, ...]]
) -> dict[str, pd.Series]:
    """One nullable integer column per loop name, read from the flattened path."""
    sigs = rows["sig_id"].unique()
    loops: dict[str, pd.Series] = {}
    for sig in sigs:
        for level, loop in enumerate(signatures.get(int(sig), ())):
            column = rows[f"i{level}"].astype("Int64")
            if len(sigs) > 1:
                column = column.where(rows["sig_id"] == sig)
            loops[loop] = column if loop not in loops else loops[loop].fillna(column)
    return loops


def _loop_values(
    store: Store, rows: pd.DataFrame, signatures: dict[int, tuple[str, ...]]
) -> dict[str, pd.Series]:
    """`<loop>_value` columns for loops whose items are not their index (FlorDB's convention)."""
    query = select(s.Context.run_id, s.Context.ctx_id, s.Context.path_values).where(
        s.Context.path_values.is_not(None)
    )
    with store.engine.connect() as conn:
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
        name: pd.Series(cells, index=rows.index, dtype=object) for name, cells in columns.items()
    }


def wide_table(
    store: Store,
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
    runs = _runs(store, project, uids)
    data = [c for c in runs.columns if c.startswith("data.")]
    runs = runs[[*WIDE_RUN_COLUMNS, *data, "args"]].reset_index(drop=True)
    logged, args = known(store, names, runs)
    signatures = _signatures(store)
    # Only the runs shown: another project's repeats must not add a `seq` column here.
    run_ids = None if uids is None and project is None else runs["run_id"].tolist()
    rows, repeated = (
        _cells(store, logged, signatures, run_ids, include_diverged)
        if logged
        else (pd.DataFrame({"run_id": [], "ctx_id": [], "sig_id": []}, dtype="int64"), [])
    )
    position = pd.Index(runs["run_id"]).get_indexer(rows["run_id"])
    rows, position = rows[position >= 0].reset_index(drop=True), position[position >= 0]
    value_columns = [c for c in rows.columns if c in logged or c.endswith("@replay")]
    if "seq" in rows:  # repeated names were joined first: show them in the order asked
        value_columns = [c for n in logged for c in (n, f"{n}@replay") if c in value_columns]
    rows = _broadcast(rows, value_columns, signatures, repeated)
    position = pd.Index(runs["run_id"]).get_indexer(rows["run_id"])
    loops = _loop_columns(rows, signatures) | _loop_values(store, rows, signatures)
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
