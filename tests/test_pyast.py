"""pyast: parses behind one lock, tried again when another thread's parse upset CPython 3.11's
shared AST depth (gh-106905), and only then."""

from __future__ import annotations

import pytest

from flor_flows import pyast


def _failing(times: int, message: str) -> tuple[list[int], object]:
    calls: list[int] = []

    def call(source: str) -> str:
        calls.append(1)
        if len(calls) <= times:
            raise SystemError(message)
        return source

    return calls, call


def test_a_depth_mismatch_is_tried_again_and_other_errors_are_not() -> None:
    calls, call = _failing(1, "AST constructor recursion depth mismatch (before=1, after=2)")
    assert pyast._locked(call, "x = 1") == "x = 1" and len(calls) == 2
    calls, call = _failing(pyast.TRIES, "AST constructor recursion depth mismatch")
    with pytest.raises(SystemError, match="mismatch"):
        pyast._locked(call, "x = 1")
    assert len(calls) == pyast.TRIES
    calls, call = _failing(1, "another error")
    with pytest.raises(SystemError, match="another"):
        pyast._locked(call, "x = 1")
    assert len(calls) == 1
    assert pyast.parse("x = 1").body[0].targets[0].id == "x"
