"""The fast reader of old versions gives the same statements as the libcst reader."""

from __future__ import annotations

from pathlib import Path

import pytest

from flor_flows.errors import Unparsable
from flor_flows.propagate.fastread import read_fast
from flor_flows.propagate.statements import read

CASES = Path(__file__).parent / "data" / "propagation"
SOURCES = sorted(c / "old.py" for c in CASES.iterdir() if (c / "old.py").is_file())


def _outline(module: object) -> list[tuple]:
    def where(stmt: object) -> tuple:
        owner = stmt.block.owner
        return (owner.order if owner is not None else -1, stmt.index)

    return [
        (s.order, s.kind, s.text, s.shape, s.names, s.log_name, where(s), len(s.blocks))
        for s in module.statements
    ]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_both_readers_agree(path: Path) -> None:
    source = path.read_bytes().decode()
    try:
        slow = read(source)
    except Unparsable:
        with pytest.raises(Unparsable):
            read_fast(source)
        return
    fast = read_fast(source)
    assert _outline(fast) == _outline(slow)
    assert fast.log_aliases == slow.log_aliases
    assert [s.display for s in fast.statements] == [s.display for s in slow.statements]
