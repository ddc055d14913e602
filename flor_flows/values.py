"""What is logged, as both the record and the store see it: typed values and loop depth.

Typed encoding of logged values, so the wide table gets floats as floats.

A value is stored as (vtype, num, ival, txt). Values that are not JSON are stored as their
`str()`, as FlorDB does; numpy and torch scalars become Python numbers first.
"""

from __future__ import annotations

import json
import math
from typing import Any

FLOAT, INT, BOOL, TEXT, JSON, NONE = range(6)
Encoded = tuple[int, float | None, int | None, str | None]

_INT64 = 2**63
MAX_DEPTH = 8  # loop levels flattened into the columns `logs.i0`..`logs.i7`


def plain(value: Any) -> Any:
    """Numpy/torch scalars and 0-d arrays as Python scalars; other values unchanged."""
    item = getattr(value, "item", None)
    if item is not None and getattr(value, "ndim", 0) == 0 and callable(item):
        return item()
    return value


def encode(value: Any) -> Encoded:
    """Encode one value for the `logs` table."""
    value = plain(value)
    kind = type(value)
    if kind is float:
        # NaN is kept as a float with no number: SQLite cannot store NaN itself.
        return (FLOAT, None if math.isnan(value) else value, None, None)
    if kind is bool:
        return (BOOL, None, int(value), None)
    if kind is int:
        if -_INT64 <= value < _INT64:
            return (INT, None, value, None)
        return (TEXT, None, None, str(value))
    if kind is str:
        return (TEXT, None, None, storable(value))
    if value is None:
        return (NONE, None, None, None)
    try:
        return (JSON, None, None, json.dumps(value, allow_nan=True))
    except (TypeError, ValueError, RecursionError):
        pass
    try:
        text = str(value)
    except Exception as exc:  # noqa: BLE001 - a user's __str__ may raise anything; logging must not
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return (TEXT, None, None, storable(text))


def storable(text: str) -> str:
    """`text` as every store can hold it: NUL and lone surrogates escaped (`\\x00`, `\\ud800`).

    Such text is rare; the escaped form keeps what it was readable.
    """
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def decode(vtype: int, num: float | None, ival: int | None, txt: str | None) -> Any:
    """The Python value of one stored row."""
    if vtype == FLOAT:
        return math.nan if num is None else float(num)
    if vtype == INT:
        return int(ival)
    if vtype == BOOL:
        return bool(ival)
    if vtype == JSON:
        return json.loads(txt)
    if vtype == NONE:
        return None
    return txt


class Frozen:
    """A value encoded when it was logged, because the object may change afterwards."""

    __slots__ = ("encoded",)

    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded

    def __reduce__(self) -> tuple:
        return (Frozen, (self.encoded,))
