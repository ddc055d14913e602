"""The `--iter` selection: which outer iterations `--iter LOOP=all|last|none|I,J-K` keeps."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from flor_flows.errors import RequestError


@dataclass(frozen=True)
class Selection:
    """The outer iterations `--iter LOOP=...` keeps: all, the last, none, or listed ranges."""

    kind: Literal["all", "last", "none", "list"]
    ranges: tuple[tuple[int, int], ...] = ()  # inclusive bounds, for "list"

    def narrow(self, recorded: Sequence[int]) -> tuple[int, ...]:
        """The kept iterations among `recorded` (ascending); "none" keeps none."""
        if self.kind == "all":
            return tuple(recorded)
        if self.kind == "last":
            return tuple(recorded[-1:])
        return tuple(i for i in recorded if any(lo <= i <= hi for lo, hi in self.ranges))

    def __str__(self) -> str:
        if self.kind != "list":
            return self.kind
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


_ITERATIONS = re.compile(r"(\d{1,9})(?:-(\d{1,9}))?", re.ASCII)
_ITER_FORM = "LOOP=all|last|none|I,J-K (e.g. epoch=last or epoch=0,3-5)"


def parse_iter(specs: Iterable[str]) -> dict[str, Selection]:
    """`--iter` options, e.g. ["epoch=0,3-5"], as one selection per outer loop name."""
    selections: dict[str, Selection] = {}
    for spec in specs:
        loop, sep, text = (part.strip() for part in spec.partition("="))
        if not sep or not loop.isidentifier() or not text:
            raise RequestError(f"--iter {spec!r}: expected {_ITER_FORM}")
        if loop in selections:
            raise RequestError(f"--iter: loop {loop!r} is selected twice")
        selections[loop] = _selection(spec, text)
    return selections


def _selection(spec: str, text: str) -> Selection:
    if text in ("all", "last", "none"):
        return Selection(text)
    ranges = set()
    for part in (p.strip() for p in text.split(",")):
        match = _ITERATIONS.fullmatch(part)
        if match is None:
            raise RequestError(
                f"--iter {spec!r}: {part!r} is not an iteration (0, 1, ...) or a range "
                f"(2-5); expected {_ITER_FORM}"
            )
        lo, hi = int(match[1]), int(match[2] or match[1])
        if hi < lo:
            raise RequestError(f"--iter {spec!r}: the range {part} is empty")
        ranges.add((lo, hi))
    return Selection("list", tuple(sorted(ranges)))


def check_loops(iters: dict[str, Selection], loops: Iterable[str]) -> None:
    """FlorError when `iters` selects a loop that is none of `loops`, the outer loops of the
    runs to replay (replay selects iterations of a run's outer loop only)."""
    outer = sorted(set(loops))
    unknown = sorted(set(iters) - set(outer))
    if unknown:
        raise RequestError(
            f"--iter {', '.join(unknown)}: not the outer loop of any run to replay; replay "
            f"selects iterations of the outer loop ({', '.join(outer) or 'none recorded'})"
        )


def compact(iterations: Iterable[int]) -> str:
    """Iterations as ranges: 0, 1, 2, 3, 4, 7 -> "0-4,7"."""
    parts = []
    ordered = sorted(set(iterations))
    for _, group in itertools.groupby(enumerate(ordered), key=lambda p: p[1] - p[0]):
        run = [i for _, i in group]
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)
