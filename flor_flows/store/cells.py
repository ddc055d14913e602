"""How the values of logged names become the cells of the wide table (`store.query`), in
pandas alone: one name's cells, the names joined on their shared loop path, the values of
enclosing contexts broadcast onto the rows nested in them, and the loop columns.

Kept apart from the reads (`query`): nothing here touches the database. Every frame is
keyed by run_id, ctx_id, sig_id and the flattened loop path i0, i1, ... (plus `seq` where a
context holds several values of a name).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

_MIX = np.uint64(0x9E3779B97F4A7C15)


def _may_repeat(frame: pd.DataFrame) -> bool:
    """Whether a (run, ctx, source) may hold several values: a cheap test, sure when False."""
    key = frame["ctx_id"].to_numpy(np.uint64) ^ (frame["run_id"].to_numpy(np.uint64) * _MIX)
    return not pd.Index(key ^ frame["forward"].to_numpy(np.uint64)).is_unique


def name_cells(frame: pd.DataFrame, name: str) -> pd.DataFrame:
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


def join(frames: list[pd.DataFrame], names: list[str], keys: list[str]) -> pd.DataFrame:
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


def _same_keys(left: pd.DataFrame, right: pd.DataFrame, keys: list[str]) -> bool:
    return len(left) == len(right) and all(
        np.array_equal(left[k].to_numpy(), right[k].to_numpy()) for k in keys
    )


def broadcast(
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


def loop_columns(
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
