"""`ast.parse` and `compile` behind one lock.

CPython 3.11's AST constructor keeps its recursion depth in state shared by threads, so two
threads parsing at once can fail with `SystemError: AST constructor recursion depth
mismatch` (gh-106905). A backfill propagates its code versions in threads, so every parse
of flor-flows goes through here; a parse another library makes at the same time (Prefect's
own, in the flow's threads) can still collide with ours, so that error is tried again: the
shared depth is set anew at each parse.
"""

from __future__ import annotations

import ast
import threading
from collections.abc import Callable
from typing import Any

_LOCK = threading.Lock()
TRIES = 3


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> Any:  # noqa: ANN401
    """`ast.parse(source, filename, mode)`, one thread at a time."""
    return _locked(ast.parse, source, filename, mode)


def compile_source(source: str, filename: str, mode: str = "exec") -> Any:  # noqa: ANN401
    """`compile(source, filename, mode)`, one thread at a time."""
    return _locked(compile, source, filename, mode)


def _locked(call: Callable[..., Any], *args: Any) -> Any:  # noqa: ANN401
    """`call(*args)` under the lock, again where another thread's parse upset it."""
    for _ in range(TRIES - 1):
        try:
            with _LOCK:
                return call(*args)
        except SystemError as exc:
            if "recursion depth mismatch" not in str(exc):
                raise
    with _LOCK:
        return call(*args)
