"""The transformation: insert statements into blocks of a module, every other byte kept.

Like a libcst codemod, it is a small transformer with one contract and no policy: given
(block, index) -> statements, it returns the module with those statements inserted before
the statement at `index` of each block (at its end when `index` is the block's length). It
walks only the path from the module to those blocks.
Which statements go where is decided in `placement`.
"""

from __future__ import annotations

from collections.abc import Sequence

import libcst as cst


class InsertStatements(cst.CSTTransformer):
    """Insert statements at given indices of given blocks, leaving everything else as it was."""

    def __init__(
        self,
        insertions: dict[int, dict[int, Sequence[cst.BaseStatement]]],
        path: set[int],
    ) -> None:
        super().__init__()
        self.insertions = insertions  # id(block node) -> index -> statements
        self.path = path  # ids of the nodes from the module down to those blocks

    def on_visit(self, node: cst.CSTNode) -> bool:
        """Descend only towards the blocks that change: the rest is kept as it is."""
        return id(node) in self.path

    def _body(self, original: cst.CSTNode, body: Sequence[cst.BaseStatement]) -> list:
        wanted = self.insertions.get(id(original), {})
        new_body: list[cst.BaseStatement] = []
        for index in range(len(body) + 1):
            new_body.extend(wanted.get(index, ()))
            if index < len(body):
                new_body.append(body[index])
        return new_body

    def leave_IndentedBlock(
        self, original_node: cst.IndentedBlock, updated_node: cst.IndentedBlock
    ) -> cst.IndentedBlock:
        """Insert this block's statements, if it has any."""
        if id(original_node) not in self.insertions:
            return updated_node
        return updated_node.with_changes(body=self._body(original_node, updated_node.body))

    def leave_Module(self, original_node: cst.Module, updated_node: cst.Module) -> cst.Module:
        """Insert the module body's statements, if it has any."""
        if id(original_node) not in self.insertions:
            return updated_node
        return updated_node.with_changes(body=self._body(original_node, updated_node.body))


class RenameNames(cst.CSTTransformer):
    """Rename variables (`Name` nodes), never attributes or keyword-argument names."""

    def __init__(self, renames: dict[str, str]) -> None:
        super().__init__()
        self.renames = renames

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.Name:
        """Rename the name when it is one to rename."""
        return updated_node.with_changes(
            value=self.renames.get(updated_node.value, updated_node.value)
        )

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.Attribute:
        """Keep the attribute's own name (`x.lr` stays `.lr` when `lr` is renamed)."""
        return updated_node.with_changes(attr=original_node.attr)

    def leave_Arg(self, original_node: cst.Arg, updated_node: cst.Arg) -> cst.Arg:
        """Keep the keyword of a keyword argument (`f(lr=lr)` keeps `lr=`)."""
        return updated_node.with_changes(keyword=original_node.keyword)
