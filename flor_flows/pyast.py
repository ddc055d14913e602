"""`ast.parse` and `compile` behind one lock.

CPython 3.11's AST constructor keeps its recursion depth in state shared by threads, so two
threads parsing at once can fail with `SystemError: AST constructor recursion depth
mismatch` (gh-106905). A backfill propagates its code versions in threads, so every parse
of flor-flows goes through here.
"""

from __future__ import annotations

import ast
import threading
from typing import Any

_LOCK = threading.Lock()


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> Any:  # noqa: ANN401
    """`ast.parse(source, filename, mode)`, one thread at a time."""
    with _LOCK:
        return ast.parse(source, filename, mode)


def compile_source(source: str, filename: str, mode: str = "exec") -> Any:  # noqa: ANN401
    """`compile(source, filename, mode)`, one thread at a time."""
    with _LOCK:
        return compile(source, filename, mode)
