"""Which of a code version's files an entry script runs: itself and what it imports, transitively.

A backfill replays a run only when its entry script reaches the requested statements;
a run of another script of the project is not applicable to the request.
"""

from __future__ import annotations

import ast
import posixpath
from collections.abc import Iterator

from flor_flows import pyast


def reachable(files: dict[str, str], entry: str) -> set[str]:
    """The paths of `files` ({relative path: source}) that `entry` imports, itself included.

    Imports are resolved as Python would for a script run from its own directory (which
    is first on `sys.path`), or from the project root; relative imports from the importing
    module's package. Files that do not parse import nothing.
    """
    if entry not in files:
        return set()
    roots = dict.fromkeys([posixpath.dirname(entry), ""])
    found, todo = {entry}, [entry]
    while todo:
        path = todo.pop()
        for module, relative in _imports(files[path], path):
            parts = module.split(".")
            for base in [""] if relative else roots:
                for depth in range(1, len(parts) + 1):  # a.b.c imports a and a.b first
                    target = _module_file(files, posixpath.join(base, *parts[:depth]))
                    if target is not None and target not in found:
                        found.add(target)
                        todo.append(target)
    return found


def _module_file(files: dict[str, str], stem: str) -> str | None:
    for candidate in (f"{stem}.py", f"{stem}/__init__.py"):
        if candidate in files:
            return candidate
    return None


def _imports(source: str, path: str) -> Iterator[tuple[str, bool]]:
    """Dotted names of the modules `path` imports (each `from a import b` gives a and a.b),
    and whether they are relative to the root (relative imports, resolved)."""
    try:
        tree = pyast.parse(source)
    except (SyntaxError, ValueError):
        return
    package = posixpath.dirname(path).replace("/", ".")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from ((alias.name, False) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, *([base] if base else [])])
            relative = node.level > 0
            if base:
                yield base, relative
            for alias in node.names:
                yield (f"{base}.{alias.name}" if base else alias.name), relative
