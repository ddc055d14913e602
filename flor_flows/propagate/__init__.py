"""Propagation: carry today's new `flor.log` statements into an old version of a file.

`propagate(new_source, old_source)` returns the old source with each log statement it lacks
inserted after the image of its anchor, its names renamed to the old version's, every
other byte unchanged; or a refusal that names the statement and the reason. Nothing is
placed on hope: see `placement` for the checks and the confidence each placement carries,
`renaming` for when a rename is sound. The new version is read once with libcst (its
statements are re-printed); each old version is read with CPython's parser (`fastread`) and
written back by lines (`splice`), which keeps a 1,300-line version well under 0.2 s.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from difflib import SequenceMatcher
from functools import lru_cache
from pathlib import PurePosixPath

import libcst as cst

from flor_flows.errors import Unparsable
from flor_flows.propagate.codemod import InsertStatements
from flor_flows.propagate.fastread import AstBlock, FastModule, read_fast
from flor_flows.propagate.matching import Matching
from flor_flows.propagate.placement import Placer, Refused, code_of, end_order
from flor_flows.propagate.scope import bound_at, bound_by
from flor_flows.propagate.splice import splice
from flor_flows.propagate.statements import Module, Statement, read

__all__ = ["Placement", "Propagation", "Refusal", "propagate", "propagate_files"]

RENAMED_FILE = 0.5  # least line similarity for an old file to be a renamed new one
LOW_CONFIDENCE = 0.75  # placements below this are reported as uncertain
MIN_CONFIDENCE = 0.5  # and below this refused


@dataclass(frozen=True)
class Placement:
    """A log statement inserted into the old version: what, where, and how sure we are."""

    name: str  # the logged name
    code: str  # what was inserted (renamed to the old version's names)
    line: int  # 1-based line of the inserted statement in the result
    confidence: float
    notes: tuple[str, ...] = ()

    @property
    def low_confidence(self) -> bool:
        """Whether the placement is uncertain enough to be reported for review."""
        return self.confidence < LOW_CONFIDENCE


@dataclass(frozen=True)
class Refusal:
    """A logged name that was not carried into the old version, and why."""

    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class Propagation:
    """The old version with the log statements it gained, and those it could not."""

    source: str  # the old version with the statements inserted (unchanged if none were)
    placements: list[Placement] = field(default_factory=list)
    present: list[str] = field(default_factory=list)  # names the old version logs already
    refusals: list[Refusal] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every wanted log statement is in the result (none was refused)."""
        return not self.refusals


@lru_cache(maxsize=64)
def _read_new(source: str) -> Module:
    """The new version, read once for all the old versions it is propagated into."""
    return read(source)


def _targets(new: Module, old: Module, names: set[str] | None) -> tuple[list[Statement], list[str]]:
    """The log statements to carry over, and the wanted names the old version has already."""
    present = old.logs()
    wanted = [s for s in new.statements if s.log_name and (names is None or s.log_name in names)]
    return [s for s in wanted if s.log_name not in present], sorted(
        {s.log_name for s in wanted if s.log_name in present}
    )


def propagate(
    new_source: str, old_source: str, names: Iterable[str] | None = None, version: str = "old"
) -> Propagation:
    """Insert the `flor.log` statements of `new_source` that `old_source` lacks.

    `names` limits which logged names to carry (default: all); `version` names the old
    version in refusal messages (a commit, a tag). A name not found in the new version, an
    old version that does not parse, or a statement that cannot be placed safely gives a
    `Refusal`; the others are still placed.
    """
    wanted = set(names) if names is not None else None
    old = _try_read(old_source, read_fast)
    return _propagate(_read_new(new_source), old, old_source, wanted, version)


def _try_read(source: str, reader: Callable[[str], Module] = read) -> Module | Unparsable:
    try:
        return reader(source)
    except Unparsable as exc:
        return exc


def _propagate(
    new: Module, old: Module | Unparsable, old_source: str, wanted: set[str] | None, version: str
) -> Propagation:
    """`propagate` on sources already read (`propagate_files` reads each file once)."""
    if isinstance(old, Unparsable):
        reason = f"version {version} does not parse as Python 3 ({old})"
        found = sorted({s.log_name for s in new.statements if s.log_name})
        return Propagation(old_source, refusals=[Refusal(n, reason) for n in wanted or found])
    targets, present = _targets(new, old, wanted)
    result = Propagation(old_source, present=present)
    for name in sorted((wanted or set()) - {s.log_name for s in new.statements if s.log_name}):
        result.refusals.append(Refusal(name, "no flor.log of this name in the new version"))
    if not targets:
        return result

    target_ids = {id(t) for t in targets}
    # No anchor is a log statement the old version lacks, requested or not (another new one)
    logged = old.logs()
    absent = {id(s) for s in new.statements if s.log_name and s.log_name not in logged}
    placer = Placer(new, old, Matching(new, old, ignore=absent), absent | target_ids)
    insertions: dict[int, dict[int, list[cst.BaseStatement]]] = defaultdict(
        lambda: defaultdict(list)
    )
    accepted: list[tuple[Statement, cst.BaseStatement, float, list[str]]] = []
    alias_root = {alias.split(".")[0] for alias in new.log_aliases}
    units: dict[int, list[Statement]] = defaultdict(list)  # a new block may carry several logs
    for target in targets:
        units[id(placer.unit(target))].append(target)
    for target in targets:
        unit = placer.unit(target)
        members = units.pop(id(unit), None)
        if members is None:
            continue  # placed (or refused) with the block it shares with an earlier target
        try:
            spot = placer.spot(unit)
            if not _insertable(spot.block.node):
                raise Refused("its place is a one-line block", placer.line(spot))
            for member in members:
                placer.check_loops(member, spot)
            node, shares, renamed = placer.renamed(unit, spot, alias_root)
            placer.check_names(node, spot, allowed=alias_root)
        except Refused as exc:
            where = f"at line {exc.line} of" if exc.line else "in"
            reason = f"{exc.reason} {where} version {version}"
            result.refusals.extend(Refusal(m.log_name, reason) for m in members)
            continue
        confidence = spot.confidence
        for share in shares.values():
            confidence *= share
        if confidence < MIN_CONFIDENCE:
            reason = f"placement confidence {confidence:.2f} is too low in version {version}"
            result.refusals.extend(Refusal(m.log_name, reason) for m in members)
            continue
        inserted = _statement(node)
        insertions[id(spot.block.node)][spot.index].append(inserted)
        accepted.extend((m, inserted, confidence, [*spot.notes, *renamed]) for m in members)

    if not accepted:
        return result
    if not (alias_root & bound_at(old, None, len(old.statements))):
        _add_import(new, old, alias_root, insertions)
    if isinstance(old, FastModule):
        result.source, lines = splice(old, insertions)
    else:
        path = _path_to(old, set(insertions))
        result.source = old.tree.visit(InsertStatements(insertions, path)).code
        lines = _first_lines(old, insertions, old_source, result.source)
    for target, inserted, confidence, notes in accepted:
        result.placements.append(
            Placement(
                target.log_name,
                code_of(inserted),
                lines.get(id(inserted), 0),
                round(confidence, 3),
                tuple(notes),
            )
        )
    return result


def _insertable(node: object) -> bool:
    """A block a statement can go into on its own line (not `if x: y`, not a clause)."""
    if isinstance(node, AstBlock):
        return not (node.one_line or node.clause)
    return isinstance(node, cst.IndentedBlock | cst.Module)


def _path_to(module: Module, block_ids: set[int]) -> set[int]:
    """Ids of every node on the way from the module to the blocks `block_ids`."""
    blocks = {id(b.node): b for s in module.statements for b in s.blocks}
    path = {id(module.tree)}
    for block_id in block_ids:
        block = blocks.get(block_id)
        while block is not None:
            path.add(id(block.node))
            owner = block.owner
            if owner is None:
                break
            path.add(id(owner.node))
            block = owner.block
    return path


def _first_lines(old: Module, insertions: dict, before: str, after: str) -> dict[int, int]:
    """id(inserted statement) -> its first line in `after`, read off a line diff.

    The inserted lines, in file order, are dealt out to the inserted statements in file
    order (cheaper than resolving libcst positions over the whole module).
    """
    blocks = {id(b.node): b for s in old.statements for b in s.blocks} | {id(old.tree): old.top}
    ordered = sorted(
        ((_position(blocks[block_id], index), k, node)
         for block_id, at in insertions.items()
         for index, nodes in at.items()
         for k, node in enumerate(nodes)),
        key=lambda item: (item[0], item[1]),
    )  # fmt: skip
    added = [
        line
        for tag, _, _, j1, j2 in SequenceMatcher(
            None, before.splitlines(), after.splitlines(), autojunk=False
        ).get_opcodes()
        if tag in ("insert", "replace")
        for line in range(j1 + 1, j2 + 1)
    ]
    found, used = {}, 0
    for _, _, node in ordered:
        found[id(node)] = added[used] if used < len(added) else 0
        used += code_of(node).count("\n") + 1
    return found


def _position(block: object, index: int) -> int:
    """Source order of the point before statement `index` of `block`."""
    if index < len(block.statements):
        return block.statements[index].order
    return end_order(block)


def _statement(node: cst.CSTNode) -> cst.BaseStatement:
    """The node as a statement to insert: without the comments and blank lines above it."""
    return node.with_changes(leading_lines=())


def _add_import(new: Module, old: Module, aliases: set[str], insertions: dict) -> None:
    """Bring the new version's `import flor_flows as flor` (or alike) into the old version,
    after the old version's imports at the top of the module."""
    line = next((s.node for s in new.top.statements if bound_by(s) & aliases), None)
    if line is None:
        return
    after = 0
    for position, stmt in enumerate(old.top.statements):
        if stmt.text.startswith(("import ", "from ")) or (position == 0 and stmt.text[:1] in "'\""):
            after = position + 1
        elif after:
            break
    top = old.top.node if isinstance(old, FastModule) else old.tree
    insertions[id(top)][after].append(_statement(line))


def _counterpart(
    path: str,
    new_module: Module | Unparsable,
    new_text: str,
    old: dict[str, tuple[Module | Unparsable, str]],
    new: dict,
) -> str | None:
    """The old file `path` was: itself, else the most similar old file that no longer exists,
    else the one such file of the same name (moved, and changed since).

    Similarity is over statement shapes, so a file whose variables were renamed too is found.
    A wrong counterpart costs refusals, never a wrong placement: placements are checked.
    """
    if path in old:
        return path
    shapes = _shapes(new_module, new_text)
    best, best_ratio = None, RENAMED_FILE
    gone = {candidate: found for candidate, found in old.items() if candidate not in new}
    for candidate, (module, text) in gone.items():
        ratio = SequenceMatcher(None, shapes, _shapes(module, text), autojunk=False).ratio()
        if ratio >= best_ratio:
            best, best_ratio = candidate, ratio
    moved = [c for c in gone if PurePosixPath(c).name == PurePosixPath(path).name]
    return best or (moved[0] if len(moved) == 1 else None)


def _shapes(module: Module | Unparsable, source: str) -> list[str]:
    if isinstance(module, Unparsable):
        return source.splitlines()
    return [s.shape for s in module.statements]


def _logged(module: Module | Unparsable) -> set[str]:
    """The names a file's `flor.log` calls log (none if it does not parse)."""
    return set() if isinstance(module, Unparsable) else set(module.logs())


def propagate_files(
    new: dict[str, str],
    old: dict[str, str],
    names: Iterable[str] | None = None,
    version: str = "old",
) -> dict[str, Propagation]:
    """`propagate` over a project: {path: source} of the new and of an old version.

    Log statements may live in any Python file; each file is followed across a rename
    (the most similar old file that the new version no longer has), and several new files
    may have one old file (a module split out of the script): each one's statements go into
    it in turn. A name the old version logs in any file is already there. Returns the
    propagation per old path that changes or is refused; a new file with no counterpart
    gives refusals under its own path.
    """
    wanted = set(names) if names is not None else None
    new_read = {path: _try_read(text, _read_new) for path, text in new.items()}  # once per backfill
    old_read = {path: (_try_read(text, read_fast), text) for path, text in old.items()}
    logged_old = {n for module, _ in old_read.values() for n in _logged(module)}
    results: dict[str, Propagation] = {}
    for path, module in new_read.items():
        missing = {n for n in _logged(module) if wanted is None or n in wanted} - logged_old
        if not missing:
            continue
        target = _counterpart(path, module, new[path], old_read, new)
        if target is None:
            reason = f"{path} has no counterpart in version {version}"
            results[path] = Propagation("", refusals=[Refusal(n, reason) for n in sorted(missing)])
            continue
        earlier = results.get(target)
        if earlier is None:
            results[target] = _propagate(module, *old_read[target], missing, f"{version}:{target}")
            continue
        into = earlier.source  # with the statements of the new files before this one
        found = _propagate(module, _try_read(into, read_fast), into, missing, f"{version}:{target}")
        results[target] = Propagation(
            found.source,
            [*_moved(earlier.placements, into, found.source), *found.placements],
            sorted({*earlier.present, *found.present}),
            [*earlier.refusals, *found.refusals],
        )
    return results


def _moved(placements: list[Placement], before: str, after: str) -> list[Placement]:
    """`placements` in `before` at their lines in `after`, which only adds lines to it."""
    lines = SequenceMatcher(None, before.splitlines(), after.splitlines(), autojunk=False)
    at = {a + k: b + k for a, b, size in lines.get_matching_blocks() for k in range(size)}
    return [replace(p, line=at[p.line - 1] + 1) for p in placements]
