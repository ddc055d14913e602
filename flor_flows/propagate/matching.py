"""Matching the statements of two versions, and the renames between them.

Passes, each on what the previous left unmatched (after GumTree's phases, at the
granularity of statements): identical statements aligned in order; then, inside each gap
between aligned runs, statements of the same shape (equal but for renamed names), then
similar ones; then statements moved out of order, when their text is unique in both;
last, what is left on both sides aligned by shape (code moved and renamed at once).
Renames are voted per function, so a parameter renamed inside one function is not
overruled by a module-level variable of the same name.
Every match carries a similarity in (0, 1]: 1 for identical text.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from difflib import SequenceMatcher

from flor_flows.propagate.statements import Module, Statement

SIMILAR = 0.6  # least similarity of two statements' shapes to pair them inside a gap
SHAPE_MATCH = 0.9  # the similarity credited to a match by shape (a rename)
MOVED = 0.85  # the similarity credited to a statement matched out of order
CONTAINER_DICE = 0.5  # least share of matched children to pair two compound statements
UPDATE_MIN = 0.3  # least token similarity for an update (same place between matched neighbours)
UPDATE = 0.8  # the similarity credited to an update, plus UPDATE_GAIN x its token similarity
UPDATE_GAIN = 0.15


@dataclass(frozen=True)
class Match:
    """A new statement's old counterpart, and how alike the two are."""

    old: Statement
    similarity: float
    update: bool = False  # the same statement edited (GumTree's update): its text differs


class Matching:
    """new statement -> its old counterpart, and new name -> old name."""

    def __init__(self, new: Module, old: Module, ignore: set[int]) -> None:
        self.new, self.old = new, old
        self.pairs: dict[int, Match] = {}  # id(new statement) -> match
        self._taken: set[int] = set()
        left = [s for s in new.statements if id(s) not in ignore]
        right = old.statements
        anchors = self._align(left, right, key=lambda s: s.text, similarity=1.0)
        gaps = _gaps(left, right, anchors)
        for a_gap, b_gap in gaps:
            found = self._align(a_gap, b_gap, key=lambda s: s.shape, similarity=SHAPE_MATCH)
            for a_sub, b_sub in _gaps(a_gap, b_gap, found):
                self._similar(a_sub, b_sub)
        self._moved(left, right)
        rest_left = [s for s in left if id(s) not in self.pairs]
        rest_right = [s for s in right if id(s) not in self._taken]
        self._align(rest_left, rest_right, key=lambda s: s.shape, similarity=MOVED * SHAPE_MATCH)
        self._containers()
        rest_left = [s for s in left if s.blocks and id(s) not in self.pairs]
        rest_right = [s for s in right if s.blocks and id(s) not in self._taken]
        self._similar(rest_left, rest_right)  # compound headers left over: by similarity
        self._updates(left)
        self.votes = self._votes()
        self.renames = self._one_to_one()

    def get(self, stmt: Statement) -> Match | None:
        """The match of a new statement; None if it has no old counterpart."""
        return self.pairs.get(id(stmt))

    def _pair(self, a: Statement, b: Statement, similarity: float) -> None:
        if a.kind != b.kind and not {a.kind, b.kind} <= {"for", "while"}:
            return  # a loop may become another kind of loop; nothing else changes kind
        self.pairs[id(a)] = Match(b, similarity)
        self._taken.add(id(b))

    def _align(self, left: list[Statement], right: list[Statement], key, similarity: float):  # noqa: ANN001
        """Pair equal keys in order (longest common runs first); returns the pairs made."""
        matcher = SequenceMatcher(
            None, [key(s) for s in left], [key(s) for s in right], autojunk=False
        )
        made = []
        for block in matcher.get_matching_blocks():
            for k in range(block.size):
                a, b = left[block.a + k], right[block.b + k]
                self._pair(a, b, similarity)
                if id(a) in self.pairs:
                    made.append((block.a + k, block.b + k))
        return made

    def _similar(self, left: list[Statement], right: list[Statement]) -> None:
        """Pair the remaining statements of a gap by shape similarity, in order."""
        start = 0
        for a in left:
            best, best_ratio = None, SIMILAR
            for position in range(start, len(right)):
                b = right[position]
                if id(b) in self._taken:
                    continue
                ratio = SequenceMatcher(
                    None, a.shape.split(), b.shape.split(), autojunk=False
                ).ratio()
                if ratio > best_ratio:
                    best, best_ratio = position, ratio
            if best is not None:
                self._pair(a, right[best], best_ratio * SHAPE_MATCH)
                if id(a) in self.pairs:
                    start = best + 1

    def _moved(self, left: list[Statement], right: list[Statement]) -> None:
        """Pair statements whose text is unique in both versions, wherever they moved."""
        counts_a = Counter(s.text for s in left)
        counts_b = Counter(s.text for s in right)
        by_text = {s.text: s for s in right if counts_b[s.text] == 1}
        for a in left:
            if id(a) in self.pairs or counts_a[a.text] != 1:
                continue
            b = by_text.get(a.text)
            if b is not None and id(b) not in self._taken:
                self._pair(a, b, MOVED)

    def _containers(self) -> None:
        """Bottom-up: an unmatched compound statement whose children mostly match the children
        of one unmatched old compound statement is its counterpart (a rewritten loop header)."""
        for a in reversed(self.new.statements):  # inner blocks first
            if not a.blocks or id(a) in self.pairs:
                continue
            children = [s for block in a.blocks for s in block.statements]
            parents: Counter[int] = Counter()
            owners = {}
            for child in children:
                match = self.pairs.get(id(child))
                if match is not None and match.old.parent is not None:
                    parents[id(match.old.parent)] += 1
                    owners[id(match.old.parent)] = match.old.parent
            if not parents:
                continue
            key, shared = parents.most_common(1)[0]
            b = owners[key]
            if id(b) in self._taken:
                continue
            old_children = [s for block in b.blocks for s in block.statements]
            dice = 2 * shared / (len(children) + len(old_children))
            if dice >= CONTAINER_DICE:
                self._pair(a, b, SHAPE_MATCH * dice)

    def image_block(self, stmt: Statement) -> object | None:
        """The old block that corresponds to the block holding `stmt` (None: unknown)."""
        owner = stmt.parent
        if owner is None:
            return self.old.top
        match = self.pairs.get(id(owner))
        if match is None:
            return None
        position = owner.blocks.index(stmt.block)
        return match.old.blocks[position] if position < len(match.old.blocks) else None

    def _window(self, stmt: Statement, block: object) -> tuple[int, int]:
        """The positions of `block` between the images of `stmt`'s matched neighbours."""
        siblings = stmt.block.statements
        low, high = 0, len(block.statements)
        for s in reversed(siblings[: stmt.index]):
            match = self.pairs.get(id(s))
            if match is not None and match.old.block is block:
                low = match.old.index + 1
                break
        for s in siblings[stmt.index + 1 :]:
            match = self.pairs.get(id(s))
            if match is not None and match.old.block is block:
                high = match.old.index
                break
        return low, high

    def _updates(self, left: list[Statement]) -> None:
        """GumTree's update: a statement whose parent matches and which sits between the images
        of its matched neighbours, with similar text, is that old statement edited. Pairs the
        unmatched ones, and marks the similar pairs that satisfy it (a surer match)."""
        for a in left:  # source order: parents first
            if a.log_name is not None:
                continue
            match = self.pairs.get(id(a))
            if match is not None and a.shape == match.old.shape:
                continue  # identical, or renamed
            block = self.image_block(a)
            if block is None:
                continue
            low, high = self._window(a, block)
            if match is not None:
                if match.old.block is block and low <= match.old.index < high:
                    ratio = _ratio(a.text, match.old.text)
                    similarity = max(match.similarity, UPDATE + UPDATE_GAIN * ratio)
                    self.pairs[id(a)] = Match(match.old, similarity, update=True)
                continue
            best, best_ratio = None, UPDATE_MIN
            for b in block.statements[low:high]:
                if id(b) in self._taken or b.log_name is not None:
                    continue
                ratio = _ratio(a.text, b.text)
                if ratio >= best_ratio:
                    best, best_ratio = b, ratio
            if best is not None:
                self._pair(a, best, UPDATE + UPDATE_GAIN * best_ratio)
                if id(a) in self.pairs:
                    self.pairs[id(a)] = Match(best, self.pairs[id(a)].similarity, update=True)

    def _votes(self) -> dict[object, dict[str, Counter[str]]]:
        """Per new function (None: module), for each new name, the old names in its place."""
        votes: dict[object, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        for a in self.new.statements:
            match = self.pairs.get(id(a))
            if match is None or a.shape != match.old.shape:
                continue
            scope = id(a.scope)
            for new_name, old_name in zip(a.names, match.old.names, strict=True):
                votes[scope][new_name][old_name] += 1
                votes[None][new_name][old_name] += 1
        return votes

    def _one_to_one(self) -> dict[str, str]:
        """new name -> old name over the whole file, strongest evidence first, each old name
        used once: in `scheduler.step()` vs `opt.step()` the old `opt` belongs to
        `optimizer`, which stood in its place many more times."""
        ranked = sorted(
            (
                (count, new, old)
                for new, votes in self.votes[None].items()
                for old, count in votes.items()
            ),
            key=lambda item: (-item[0], item[1] != item[2]),
        )
        renames: dict[str, str] = {}
        taken: set[str] = set()
        for _, new, old in ranked:
            if new not in renames and old not in taken:
                renames[new] = old
                taken.add(old)
        return renames

    def rename(self, name: str, where: Statement) -> tuple[str, float]:
        """The old name of `name` as read at `where`, and the share of votes it won.

        Evidence from the enclosing function comes first, then the whole file's.
        """
        local = self.votes.get(id(where.scope), {}).get(name)
        if local:
            old, count = local.most_common(1)[0]
            return old, count / sum(local.values())
        overall = self.votes[None].get(name)
        old = self.renames.get(name, name)
        if not overall or old not in overall:
            return old, 1.0
        return old, overall[old] / sum(overall.values())


def _ratio(a: str, b: str) -> float:
    return SequenceMatcher(None, a.split(), b.split(), autojunk=False).ratio()


def _gaps(left: list, right: list, pairs: list[tuple[int, int]]) -> list[tuple[list, list]]:
    """The stretches of `left` and `right` between consecutive aligned pairs."""
    gaps = []
    prev_a, prev_b = -1, -1
    for a, b in [*pairs, (len(left), len(right))]:
        if a - prev_a > 1 and b - prev_b > 1:
            gaps.append((left[prev_a + 1 : a], right[prev_b + 1 : b]))
        prev_a, prev_b = a, b
    return gaps
