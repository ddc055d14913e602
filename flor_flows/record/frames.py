"""Loop contexts: where in the nest of `flor.loop`s a value was logged.

A frame's id is a hash of its parent's id, loop name and iteration, so the forward run and
any later replay of the same run give the same context the same id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from flor_flows.errors import FlorError

MAX_DEPTH = 8  # loop levels flattened into the columns `logs.i0`..`logs.i7`
_SCALARS = (int, float, str, bool)


@dataclass(frozen=True, slots=True)
class Frame:
    ctx_id: int | None
    names: tuple[str, ...]  # loop names from the outermost in
    path: tuple[int | None, ...]  # iterations from the outermost in
    values: tuple[str | None, ...]  # item values along the path (see `item_value`)
    has_values: bool  # any of `values` is not None

    @property
    def depth(self) -> int:
        return len(self.names)


ROOT = Frame(None, (), (), (), False)


def item_value(iteration: int | None, item: Any) -> str | None:
    """The item as stored beside the iteration: only scalars that differ from the index."""
    if isinstance(item, _SCALARS) and not (type(item) is int and item == iteration):
        return str(item)
    return None


def child(parent: Frame, name: str, iteration: int | None, value: str | None) -> Frame:
    """The frame of iteration `iteration` of loop `name` inside `parent`."""
    depth = parent.depth + 1
    if depth > MAX_DEPTH:
        raise FlorError(
            f"flor.loop {name!r} is nested {depth} deep; flor-flows records at most {MAX_DEPTH} levels"
        )
    key = f"{parent.ctx_id}\x1f{name}\x1f{iteration}\x1f{value if iteration is None else ''}"
    ctx_id = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) >> 1
    path = (*parent.path, iteration)
    has_values = parent.has_values or value is not None
    return Frame(ctx_id, (*parent.names, name), path, (*parent.values, value), has_values)
