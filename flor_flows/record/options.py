"""The script's argparse options, recorded as the run's args without a line of user code.

Real training scripts take their hyperparameters from `argparse`, not `flor.arg`. Parsing
the process's own command line (`parse_args()` with no explicit list) hands the parsed
namespace to the run: recorded as args in a forward run, checked against the record in a
replay (which runs with the recorded argv, so they must agree).
"""

from __future__ import annotations

import argparse
import functools
import threading
from collections.abc import Callable
from typing import Any

_local = threading.local()


def install(on_parsed: Callable[[dict[str, Any]], None]) -> None:
    """Wrap `ArgumentParser.parse_known_args` (which `parse_args` calls) once per process."""
    original = argparse.ArgumentParser.parse_known_args
    if getattr(original, "__flor_flows__", False):
        return

    @functools.wraps(original)
    def parse_known_args(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None):  # noqa: ANN202
        depth = getattr(_local, "depth", 0)  # sub-parsers parse inside their parent's call
        _local.depth = depth + 1
        try:
            parsed = original(self, args, namespace)
        finally:
            _local.depth = depth
        if depth == 0 and args is None:  # the process's own command line, not a given list
            on_parsed(dict(vars(parsed[0])))
        return parsed

    parse_known_args.__flor_flows__ = True  # type: ignore[attr-defined]
    argparse.ArgumentParser.parse_known_args = parse_known_args  # type: ignore[method-assign]
