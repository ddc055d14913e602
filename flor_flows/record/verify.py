"""Verifying a replay: the run's own statements re-log their values, which must match the record.

A replay re-executes old code from checkpoints; if it is the original process again (same
argv, files, seeds, deterministic kernels) every value the run logged comes out the same.
The `Verifier` compares each re-logged value with the recorded one at the same loop context
and position (exact for ints, booleans and text; floats within a relative tolerance) and
keeps the first difference: a replay with one is `diverged` and its new values untrusted.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from flor_flows import values

if TYPE_CHECKING:
    from flor_flows.store.store import Store


def same(recorded: values.Encoded, replayed: values.Encoded, rtol: float) -> bool:
    """Whether two stored values agree: floats within `rtol` (NaN equals NaN), others exactly."""
    if recorded[0] != replayed[0]:
        return False
    if recorded[0] == values.FLOAT:
        a, b = recorded[1], replayed[1]
        if a is None or b is None:  # NaN is stored as a float with no number
            return a is b
        return math.isclose(a, b, rel_tol=rtol, abs_tol=0.0)
    return recorded == replayed


def where(names: tuple[str, ...], path: tuple[int | None, ...]) -> str:
    """A loop context for people: 'epoch=2, step=5', or 'run level'."""
    return ", ".join(f"{n}={i}" for n, i in zip(names, path, strict=True)) or "run level"


class Verifier:
    """Compares the values a replay re-logs with those its run recorded."""

    def __init__(self, store: Store, run_id: int, rtol: float, completed: bool) -> None:
        self.store, self.run_id, self.rtol = store, run_id, rtol
        self.completed = completed  # a failed run may have logged less in its last iteration
        self.recorded: dict[str, dict[int | None, list[values.Encoded]]] = {}
        self.position: Counter[tuple[int | None, str]] = Counter()
        self.checked = 0
        self.divergence: str | None = None

    def check(self, rows: list[tuple[Any, ...]]) -> None:
        """Compare rows in the writer's wire format: (ctx_id, names, path, name, value)."""
        for ctx, names, path, name, value in rows:
            by_context = self.recorded.get(name)
            if by_context is None:
                by_context = self.recorded[name] = self.store.forward_values(self.run_id, name)
            if not by_context:
                continue  # the run never logged this name: nothing to compare with
            k = self.position[ctx, name]
            self.position[ctx, name] = k + 1
            here = by_context.get(ctx, ())
            replayed = value.encoded if type(value) is values.Frozen else values.encode(value)
            if k >= len(here):
                if self.completed:
                    self.diverge(f"{name} at {where(names, path)}: logged by the replay only")
                continue
            self.checked += 1
            if not same(here[k], replayed, self.rtol):
                self.diverge(
                    f"{name} at {where(names, path)}: recorded {values.decode(*here[k])!r}, "
                    f"replayed {values.decode(*replayed)!r}"
                )

    def diverge(self, why: str) -> None:
        """Mark the replay diverged; the first reason is the one kept."""
        if self.divergence is None:
            self.divergence = why
