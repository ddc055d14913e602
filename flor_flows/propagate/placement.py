"""Where each new statement goes in an old version, checked before it is accepted.

A statement goes right after the old image of its anchor: the statement it follows in the
new version. When it opens its block, it goes first in the image of that block; when its
anchor is new code, between the images of the matched statements around it, if those are
adjacent in the old version. A block the old version lacks is carried over whole when it
holds only log statements (a new `if step % 100 == 0:` around a log), and a `with` block
the old version lacks is looked through. Before a placement is accepted, every loop around
the statement in the new version must be around it in the old one too (when matched), no
loop of the old version may wrap it that the new version does not, and every name it reads
must be bound there. Each placement carries a confidence: the product of the similarities
of the matches it relies on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from flor_flows.propagate.codemod import RenameNames
from flor_flows.propagate.matching import Matching
from flor_flows.propagate.renaming import UNSURE, attributes, binding, compare, neighbour_evidence
from flor_flows.propagate.scope import bound_at, free_names
from flor_flows.propagate.statements import Module, Statement

FALLBACK_NEXT = 0.85  # placed before the image of the statement that follows it
FALLBACK_BETWEEN = 0.8  # its anchor is new code; the matched statements around it are adjacent
NEW_BLOCK = 0.9  # a new block of logs carried over whole
LOOK_THROUGH = 0.9  # a new `with` looked through
BLOCK_END = 0.7  # last in its block's image, as nothing before it has a counterpart
_EMPTY = cst.Module(body=[])


class Refused(Exception):
    """A statement cannot be placed: why, and the line of the old version it concerns."""

    def __init__(self, reason: str, line: int = 0) -> None:
        super().__init__(reason)
        self.reason, self.line = reason, line


@dataclass
class Spot:
    """A place in the old version: before statement `index` of `block`."""

    block: object  # statements.Block
    index: int
    confidence: float
    anchor: Statement | None  # the old statement it follows (None: first in its block)
    notes: list[str] = field(default_factory=list)


def _is_log(stmt: Statement) -> bool:
    return stmt.log_name is not None


def _only_logs(stmt: Statement) -> bool:
    """A compound statement whose bodies hold nothing but log statements."""
    inner = [s for block in stmt.blocks for s in block.statements]
    return bool(inner) and all(_is_log(s) or (s.blocks and _only_logs(s)) for s in inner)


class Placer:
    """Finds and checks where each new log statement goes in the old version."""

    def __init__(self, new: Module, old: Module, matching: Matching, targets: set[int]) -> None:
        self.new, self.old, self.matching, self.targets = new, old, matching, targets

    # -- the unit to insert and its spot ---------------------------------------------------
    def unit(self, target: Statement) -> Statement:
        """What to insert for `target`: itself, or the new block of logs around it."""
        unit = target
        while (
            unit.parent is not None
            and unit.parent.kind in ("if", "elif")
            and self.matching.get(unit.parent) is None
            and _only_logs(unit.parent)
        ):
            unit = unit.parent
        return unit

    def spot(self, unit: Statement) -> Spot:
        """Where `unit` goes in the old version, its confidence so far; Refused if nowhere."""
        siblings = unit.block.statements
        before = [s for s in siblings[: unit.index] if id(s) not in self.targets]
        after = [s for s in siblings[unit.index + 1 :] if id(s) not in self.targets]
        confidence = NEW_BLOCK if unit.blocks else 1.0
        if before:
            anchor = before[-1]
            match = self.matching.get(anchor)
            if match is not None:
                spot = Spot(
                    match.old.block, match.old.index + 1, confidence * match.similarity, match.old
                )
                if match.update:
                    spot.notes.append(
                        f"anchor updated: `{match.old.display}` -> `{anchor.display}`"
                    )
                return spot
            wrapped = self._wrapped(anchor, after, confidence)
            if wrapped is not None:
                return wrapped
            try:
                return self._between(unit, before, after, confidence)
            except Refused:
                if any(self.matching.get(s) for s in before + after):
                    raise
                return self._block_end(unit, confidence)  # nothing around it has a counterpart
        owner = unit.parent
        if owner is None:  # first statement of the module: before the image of the next one
            return self._before_next(unit, after, confidence)
        match = self.matching.get(owner)
        if match is not None:
            position = owner.blocks.index(unit.block)
            if position >= len(match.old.blocks):
                raise Refused(
                    f"the old `{match.old.display}` has no such clause", self.old.line(match.old)
                )
            return Spot(match.old.blocks[position], 0, confidence * match.similarity, None)
        if owner.kind == "with":  # a `with` the old version lacks: look through it
            spot = self.spot(owner)
            spot.confidence *= LOOK_THROUGH
            spot.notes.append(f"looked through `{owner.display}`, which the old version lacks")
            return spot
        if after:
            return self._before_next(unit, after, confidence)
        raise Refused(f"its block `{owner.display}` has no counterpart")

    def _wrapped(self, anchor: Statement, after: list[Statement], confidence: float) -> Spot | None:
        """A new compound anchor that wraps old statements of the image block (a new
        `if amp: ... else: <the old code>`): the spot follows the last of them."""
        if not anchor.blocks:
            return None
        inner = [self.matching.get(s) for s in self.new.statements if anchor.encloses(s)]
        images = [m.old for m in inner if m is not None]
        later = next((m for s in after if (m := self.matching.get(s))), None)
        block = images[-1].block if images else None
        home = self.matching.image_block(anchor)
        if block is None or home not in (None, block) or any(s.block is not block for s in images):
            return None
        last = max(images, key=lambda s: s.index)
        if later is not None and (later.old.block is not block or later.old.index <= last.index):
            return None
        spot = Spot(block, last.index + 1, confidence * FALLBACK_BETWEEN, last)
        spot.notes.append(f"its anchor `{anchor.display}` is new and wraps old `{last.display}`")
        return spot

    def _block_end(self, unit: Statement, confidence: float) -> Spot:
        """Last in the image of its block, when it is last in its block and no statement
        around it has a counterpart (the code before it was, say, moved into a function)."""
        owner = unit.parent
        match = self.matching.get(owner) if owner is not None else None
        if match is None or unit.index != len(unit.block.statements) - 1:
            anchor = unit.block.statements[unit.index - 1]
            raise Refused(f"its anchor `{anchor.display}` has no counterpart")
        block = match.old.blocks[owner.blocks.index(unit.block)]
        spot = Spot(block, len(block.statements), confidence * match.similarity * BLOCK_END, None)
        spot.notes.append(f"nothing before it has a counterpart: last in `{match.old.display}`")
        return spot

    def _before_next(self, unit: Statement, after: list[Statement], confidence: float) -> Spot:
        match = self.matching.get(after[0]) if after else None
        if match is None:
            raise Refused(f"`{unit.display}` has no matched neighbour: no counterpart to anchor it")
        return Spot(
            match.old.block, match.old.index, confidence * match.similarity * FALLBACK_NEXT, None
        )

    def _between(
        self, unit: Statement, before: list[Statement], after: list[Statement], confidence: float
    ) -> Spot:
        """The anchor is new code: place between matched neighbours, if they are adjacent."""
        anchor = before[-1]
        earlier = next(
            (self.matching.get(s) for s in reversed(before) if self.matching.get(s)), None
        )
        later = next((self.matching.get(s) for s in after if self.matching.get(s)), None)
        if earlier is not None and (
            later is None
            and earlier.old.index == len(earlier.old.block.statements) - 1
            or later is not None
            and later.old.block is earlier.old.block
            and later.old.index == earlier.old.index + 1
        ):
            spot = Spot(
                earlier.old.block,
                earlier.old.index + 1,
                confidence * earlier.similarity * FALLBACK_BETWEEN,
                earlier.old,
            )
            spot.notes.append(
                f"its anchor `{anchor.display}` is new; placed after `{earlier.old.display}`"
            )
            return spot
        raise Refused(f"its anchor `{anchor.display}` has no counterpart")

    # -- checks ------------------------------------------------------------------------------
    def check_loops(self, target: Statement, spot: Spot) -> None:
        """Same loops around the statement in both versions, as far as they are matched."""
        owner = spot.block.owner
        old_around = [owner, *owner.ancestors()] if owner is not None else []
        old_ids = {id(s) for s in old_around}
        old_home = owner.scope if owner is not None else None
        for loop in (a for a in target.ancestors() if a.is_loop):
            match = self.matching.get(loop)
            if match is None:
                if any(self.matching.get(a) for a in loop.ancestors() if a.is_loop):
                    # between matched loops: it would run at another loop level in old
                    raise Refused(f"its loop `{loop.display}` has no counterpart")
                continue  # an outer loop, e.g. around code inlined from an old function
            if id(match.old) not in old_ids:
                if match.old.function is not old_home:
                    continue  # the old code sits in a function, which that loop may call
                raise Refused(
                    f"it would leave the loop `{match.old.display}`", self.old.line(match.old)
                )
        images = {id(m.old): a for a in self.new.statements if (m := self.matching.get(a))}
        home = target.function
        for loop in (s for s in old_around if s.is_loop):
            counterpart = images.get(id(loop))
            if (
                counterpart is not None
                and counterpart.function is home  # a loop elsewhere may call the function
                and not counterpart.encloses(target)
            ):
                raise Refused(
                    f"it would run inside the loop `{loop.display}`, unlike in the new version",
                    self.old.line(loop),
                )

    def renamed(
        self, unit: Statement, spot: Spot, allowed: set[str]
    ) -> tuple[cst.CSTNode, dict[str, float], list[str]]:
        """The unit with the new version's names replaced by the old version's, each rename
        checked for soundness at the spot (see `renaming`).

        Returns the node, the confidence behind each rename, and notes saying what changed.
        """
        bound = bound_at(self.old, spot.block.owner, _order(spot)) | allowed
        renames, shares, notes = {}, {}, []
        for name in sorted(free_names(unit.node)):
            old_name, share, note = self._choose(name, unit, spot, bound)
            if old_name != name:
                renames[name], shares[name] = old_name, share
                notes.append(f"renamed {name} -> {old_name}" + (f" ({note})" if note else ""))
        node = unit.node.visit(RenameNames(renames)) if renames else unit.node
        return node, shares, notes

    def _candidates(self, name: str, unit: Statement) -> list[tuple[str, float, bool]]:
        """(old name, vote share, implied by the statement's neighbours), nearest evidence first."""
        found = [(o, 1.0, True) for o in neighbour_evidence(self.matching, unit, name)]
        local = self.matching.votes.get(id(unit.scope), {}).get(name)
        if local:
            total = sum(local.values())
            found += [(o, count / total, False) for o, count in local.most_common()]
        found.append((*self.matching.rename(name, unit), False))
        found.append((name, 1.0, False))
        seen: set[str] = set()
        return [c for c in found if not (c[0] in seen or seen.add(c[0]))]

    def _choose(
        self, name: str, unit: Statement, spot: Spot, bound: set[str]
    ) -> tuple[str, float, str | None]:
        """The first sound candidate bound at the spot; refused when every bound one is unsound."""
        problems, fallback = [], None
        for old_name, share, near in self._candidates(name, unit):
            if old_name not in bound:
                continue
            if old_name == name:
                return name, 1.0, None
            problem = self._unsound(name, old_name, unit, spot, near)
            if problem is None:
                return old_name, share, None
            reason, certain = problem
            if certain:
                problems.append(f"`{old_name}` cannot stand for it: {reason}")
            elif fallback is None:
                fallback = (old_name, min(share, UNSURE), reason)
        if fallback is not None:
            return fallback
        if problems:
            used = attributes(unit.node, name)
            uses = (
                f" (the statement uses {', '.join(f'`{name}.{a}`' for a in used)})" if used else ""
            )
            raise Refused(
                f"name {name!r} is not defined; {'; '.join(problems)}{uses}", self.line(spot)
            )
        return name, 1.0, None  # unbound: `check_names` says so

    def _unsound(
        self, name: str, old_name: str, unit: Statement, spot: Spot, near: bool
    ) -> tuple[str, bool] | None:
        """Why `name -> old_name` would change the name's role (and whether that is certain)."""
        new_binding = binding(self.new, name, unit.scope, unit.order)
        owner = spot.block.owner
        old_binding = binding(self.old, old_name, owner.scope if owner else None, _order(spot))
        differ = compare(new_binding, old_binding, self.matching.renames)
        if not near and (new_binding is None or new_binding.kind != "param"):
            others = [n for n, o in self.matching.renames.items() if o == old_name and n != name]
            if others:
                taken = f"it is the counterpart of `{others[0]}`"
                return (f"{taken}, and {differ[0]}" if differ else taken), True
        return differ

    def check_names(self, node: cst.CSTNode, spot: Spot, allowed: set[str]) -> None:
        """Every name the statement reads must be bound at the spot in the old version."""
        bound = bound_at(self.old, spot.block.owner, _order(spot)) | allowed
        missing = sorted(free_names(node) - bound)
        if missing:
            raise Refused(f"name {missing[0]!r} is not defined", self.line(spot))

    def line(self, spot: Spot) -> int:
        """The old line a spot follows: its anchor, else its block's header."""
        if spot.anchor is not None:
            return self.old.line(spot.anchor)
        owner = spot.block.owner
        return self.old.line(owner) if owner is not None else 1


def _order(spot: Spot) -> int:
    """The source order of the point a spot stands for."""
    block = spot.block
    if spot.index < len(block.statements):
        return block.statements[spot.index].order
    return end_order(block)


def end_order(block: object) -> int:
    """The source order just past the last statement of `block` (nested ones included)."""
    last = block.statements[-1]
    while last.blocks:
        inner = [s for b in last.blocks for s in b.statements]
        if not inner:
            break
        last = inner[-1]
    return last.order + 1


def code_of(node: cst.CSTNode) -> str:
    """A node's source code, stripped of surrounding whitespace (for reports)."""
    return _EMPTY.code_for_node(node).strip()
