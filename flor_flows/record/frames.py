"""Loop contexts: where in the nest of `flor.loop`s a value was logged.

A frame's id is a hash of its parent's id, loop name and iteration, so the forward run and
any later replay of the same run give the same context the same id.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, NamedTuple

from flor_flows.errors import UsageError
from flor_flows.values import MAX_DEPTH

_SCALARS = (int, float, str, bool)


class Frame(NamedTuple):
    """A loop context: the loops and iterations around a logged value, and its id."""

    ctx_id: int | None
    names: tuple[str, ...]  # loop names from the outermost in
    path: tuple[int | None, ...]  # iterations from the outermost in
    values: tuple[str | None, ...]  # item values along the path (see `item_value`)
    has_values: bool  # any of `values` is not None

    @property
    def depth(self) -> int:
        """How many loops deep the context is (0 at run level)."""
        return len(self.names)


ROOT = Frame(None, (), (), (), False)


def item_value(iteration: int | None, item: Any) -> str | None:
    """The item as stored beside the iteration: only scalars that differ from the index."""
    if isinstance(item, _SCALARS) and not (type(item) is int and item == iteration):
        return str(item)
    return None


_MASK = (1 << 63) - 1
_STRIDE = 0x9E3779B97F4A7C15  # odd: consecutive iterations spread over the id space


def _digest(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest()) & _MASK


@lru_cache(maxsize=4096)
def _loop_base(parent_id: int | None, name: str) -> int:
    return _digest(f"{parent_id}\x1f{name}")


def child(parent: Frame, name: str, iteration: int | None, value: str | None) -> Frame:
    """The frame of iteration `iteration` of loop `name` inside `parent`."""
    depth = len(parent.names) + 1
    if depth > MAX_DEPTH:
        raise UsageError(
            f"flor.loop {name!r} is nested {depth} deep; flor-flows records at most {MAX_DEPTH} levels"
        )
    if iteration is None:  # user-driven iteration: the item itself identifies the context
        ctx_id = _digest(f"{parent.ctx_id}\x1f{name}\x1f\x1f{value}")
    else:
        ctx_id = (_loop_base(parent.ctx_id, name) + iteration * _STRIDE) & _MASK
    return Frame(
        ctx_id,
        (*parent.names, name),
        (*parent.path, iteration),
        (*parent.values, value),
        parent.has_values or value is not None,
    )
