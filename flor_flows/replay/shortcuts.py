"""The transformation: mark an outer loop's body so a replay can run only part of it.

Like a libcst codemod, `MarkBody` is a small transformer with one contract and no policy:
given a loop (by its `flor.loop` name) and the lines its requested statements span, it
wraps the statements before them in `if flor._replay_head():` (when the head may go) and
those after them in `if flor._replay_tail():`, every other byte kept. Only the replayed copy
of a code version is changed; a forward run never sees these lines. Whether a body may be
cut short, and where, is decided in `skipping.shortcuts`; what the markers do at run time,
in `record.replay`.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from flor_flows.replay.skipping import Shortcut


class MarkBody(cst.CSTTransformer):
    """Guard the head and tail of one outer loop's body with the replay markers."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, shortcut: Shortcut) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.marked = False

    def visit_SimpleStatementLine(self, node: cst.SimpleStatementLine) -> bool:
        """No loop inside: not worth a visit (most of a script)."""
        return False

    def leave_For(self, original_node: cst.For, updated_node: cst.For) -> cst.For:
        """Guard the tail (and the head, when it may go) of the shortcut's loop body."""
        if not (
            self._is_the_loop(original_node) and isinstance(updated_node.body, cst.IndentedBlock)
        ):
            return updated_node
        head: list[cst.BaseStatement] = []
        needed: list[cst.BaseStatement] = []
        tail: list[cst.BaseStatement] = []
        for before, after in zip(original_node.body.body, updated_node.body.body, strict=True):
            where = self.get_metadata(PositionProvider, before)
            if where.end.line < self.shortcut.first_line:
                head.append(after)
            elif where.start.line > self.shortcut.last_line:
                tail.append(after)
            else:
                needed.append(after)
        body = [*self._guard("_replay_head", head, self.shortcut.head), *needed]
        body += self._guard("_replay_tail", tail, True)
        self.marked = True
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))

    def _is_the_loop(self, node: cst.For) -> bool:
        call = node.iter
        if not (isinstance(call, cst.Call) and isinstance(call.func, cst.Attribute)):
            return False
        first = call.args[0].value if call.args else None
        return (
            call.func.attr.value == "loop"
            and isinstance(first, cst.SimpleString)
            and first.evaluated_value == self.shortcut.loop
        )

    def _guard(
        self, marker: str, statements: Sequence[cst.BaseStatement], wanted: bool
    ) -> list[cst.BaseStatement]:
        if not statements or not wanted:
            return list(statements)
        test = cst.parse_expression(f"{self.shortcut.alias}.{marker}()")
        return [cst.If(test=test, body=cst.IndentedBlock(body=list(statements)))]


def mark(source: str, shortcut: Shortcut) -> str | None:
    """`source` with the loop of `shortcut` marked; None if the loop was not found."""
    transformer = MarkBody(shortcut)
    module = MetadataWrapper(cst.parse_module(source), unsafe_skip_copy=True).visit(transformer)
    return module.code if transformer.marked else None
