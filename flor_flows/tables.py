"""Tables for people and for machines: a DataFrame as terminal-width text, CSV or JSON.

Pure functions. Text shows columns chosen for reading (short run uids and code versions,
times to the second, file names without their directories), every missing value as `-`,
and fits a width: the widest cells are cut with `…`, and columns that still do not fit are
left out and named on a last line. CSV and JSON carry every column and value in full, a
missing value as an empty field and as null.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import datetime
from typing import IO, Any

import pandas as pd

MISSING = "-"
CUT = "…"
GAP = "  "
MIN_WIDTH = 6  # a column is cut to no less than this (or its header, if longer)

# Columns of the store's tables as text shows them: (title, how its values are shortened).
SHORT = {
    "run_uid": ("run", lambda uid: uid.rpartition("-")[2]),  # the uid's random part
    "resumed_from": ("parent", lambda uid: uid.rpartition("-")[2]),
    "code_version": ("version", lambda commit: commit[:7]),
    "prefect_flow_run_id": ("flow run", lambda flow_run: flow_run[:8]),
    "entry_script": ("script", None),
    "started_at": ("started", None),
    "ended_at": ("ended", None),
    "created_at": ("created", None),
    "updated_at": ("updated", None),
}


def readable(frame: pd.DataFrame, first: Sequence[str] = ()) -> pd.DataFrame:
    """`frame` for reading: the store's columns retitled and shortened (see SHORT), data batch
    URIs as their file names, and the columns `first` right after the run and its version."""
    leading = [c for c in ("run_uid", "code_version") if c in frame.columns]
    leading += [c for c in first if c in frame.columns and c not in leading]
    frame = frame[[*leading, *(c for c in frame.columns if c not in leading)]].copy()
    for column in frame.columns:
        shorten = SHORT.get(column, ("", None))[1]
        if shorten is not None:
            frame[column] = frame[column].map(lambda v, f=shorten: v if _missing(v) else f(v))
        elif column.startswith("data."):
            frame[column] = frame[column].map(lambda v: v if _missing(v) else v.rsplit("/")[-1])
    return frame.rename(columns={c: title for c, (title, _) in SHORT.items()})


def render(frame: pd.DataFrame, width: int) -> str:
    """`frame` as a text table no line of which is wider than `width` (see the module)."""
    if frame.empty:
        return "(no rows)"
    titles = [str(c) for c in frame.columns]
    cells = [[_cell(v) for v in frame[c]] for c in frame.columns]
    right = [_numeric(frame[c]) for c in frame.columns]
    natural = [max(len(t), *map(len, col)) for t, col in zip(titles, cells, strict=True)]
    floor = [min(n, max(MIN_WIDTH, len(t))) for n, t in zip(natural, titles, strict=True)]
    widths = _fit(natural, floor, width)
    shown = len(widths)
    lines = [_line(titles[:shown], widths, [False] * shown)]
    lines += [_line(list(row), widths, right[:shown]) for row in zip(*cells[:shown], strict=True)]
    if shown < len(titles):
        hidden = titles[shown:]
        note = f"({len(hidden)} more columns: {', '.join(hidden)}; --csv or --json shows all)"
        lines.append(_cut(note, width))
    return "\n".join(lines)


def write_csv(frame: pd.DataFrame, out: IO[str]) -> None:
    """Every column and value; a missing value is an empty field."""
    frame.to_csv(out, index=False)


def write_json(frame: pd.DataFrame, out: IO[str]) -> None:
    """Every column and value as a JSON array of objects (numbers to the last digit, times
    in ISO 8601); a missing value is null."""
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    json.dump(rows, out, default=_json_value)
    out.write("\n")


def _json_value(value: Any) -> Any:  # noqa: ANN401 - what json cannot write itself
    if isinstance(value, datetime):
        return value.isoformat()
    return value.item() if hasattr(value, "item") else str(value)


def _fit(natural: list[int], floor: list[int], width: int) -> list[int]:
    """Column widths that fit `width`: the widest cut first, down to their `floor`; then as
    many leading columns (at least one, cut to `width`) as fit."""
    widths = list(natural)
    excess = _total(widths) - width
    while excess > 0:
        cuttable = [i for i, w in enumerate(widths) if w > floor[i]]
        if not cuttable:
            break
        widest = max(cuttable, key=widths.__getitem__)
        others = max((widths[i] for i in cuttable if i != widest), default=0)
        new = max(floor[widest], min(others, widths[widest] - 1), widths[widest] - excess)
        excess -= widths[widest] - new
        widths[widest] = new
    while len(widths) > 1 and _total(widths) > width:
        widths.pop()
    widths[0] = min(widths[0], width)
    return widths


def _total(widths: list[int]) -> int:
    return sum(widths) + len(GAP) * (len(widths) - 1)


def _line(cells: list[str], widths: list[int], right: list[bool]) -> str:
    cut = [_cut(c, w) for c, w in zip(cells, widths, strict=True)]
    parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cut, widths, right, strict=True)]
    return GAP.join(parts).rstrip()


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + CUT


def _missing(value: Any) -> bool:  # noqa: ANN401 - any cell
    return value is None or (pd.api.types.is_scalar(value) and bool(pd.isna(value)))


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _cell(value: Any) -> str:  # noqa: ANN401 - any cell
    """One value as text: missing as `-`, numbers to 6 significant digits, times to the
    second, one line."""
    if _missing(value):
        return MISSING
    if isinstance(value, float) and not math.isinf(value):
        return f"{value:.6g}"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return " ".join(str(value).split("\n"))
