"""The transformation for an old version read by `fastread`: insert statements by line.

The same contract as `codemod.InsertStatements` (block, index) -> statements, every other byte
kept, done on the old source's lines: a statement inserted before statement `index` of a block
goes right after the last line of the statement before it (after its continuation lines and
trailing comment, before the comments and blank lines that lead the next one), or right after
the block's header when it comes first. It is indented like the block and ends its lines like
the old file; a compound statement's body is indented one more unit of the old file.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst

from flor_flows.propagate.fastread import AstBlock, FastModule
from flor_flows.propagate.statements import Block, Statement


def _end(stmt: Statement) -> int:
    """The last line of a statement (of its whole body, for a compound one)."""
    group = getattr(stmt, "group", None)
    return (group[-1] if group else stmt.node).end_lineno


def _start(stmt: Statement) -> int:
    node = stmt.node
    return min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])


def insertion_line(module: FastModule, block: Block, index: int) -> int:
    """The 0-based index of the line before which statements inserted at `index` go."""
    if index > 0:
        return _end(block.statements[index - 1])
    marker = block.node
    if block.owner is not None:
        return marker.header_end
    return _start(block.statements[0]) - 1 if block.statements else len(module.lines)


def _code(module: FastModule, node: cst.BaseStatement, indent: str) -> list[str]:
    code = cst.Module(
        body=[node], default_indent=module.indent_unit, default_newline=module.newline
    ).code
    return [indent + line for line in code.splitlines(keepends=True)]


def splice(
    module: FastModule, insertions: dict[int, dict[int, Sequence[cst.BaseStatement]]]
) -> tuple[str, dict[int, int]]:
    """The old source with the statements inserted, and id(statement) -> its first line."""
    blocks = {id(b.node): b for s in module.statements for b in s.blocks}
    blocks[id(module.top.node)] = module.top
    points = []
    for block_id, at in insertions.items():
        block = blocks[block_id]
        indent = block.node.indent if isinstance(block.node, AstBlock) else ""
        for index, nodes in at.items():
            line = insertion_line(module, block, index)
            points += [(line, -len(indent), k, node, indent) for k, node in enumerate(nodes)]
    points.sort(key=lambda p: (p[0], p[1], p[2]))
    lines = list(module.lines)
    if lines and not lines[-1].endswith(("\n", "\r")) and any(p[0] >= len(lines) for p in points):
        lines[-1] += module.newline
    out: list[str] = []
    first: dict[int, int] = {}
    done = 0
    for line, _, _, node, indent in points:
        out += lines[done:line]
        done = line
        first[id(node)] = len(out) + 1
        out += _code(module, node, indent)
    out += lines[done:]
    return "".join(out), first
