"""`flor-flows propagate`: today's log statements carried into an old version of a file."""

from __future__ import annotations

import argparse
import sys

from flor_flows.commands.inputs import read_text


def cmd_propagate(args: argparse.Namespace) -> int:
    """Print (or write) OLD with NEW's log statements; exit 3 if any cannot be placed."""
    import difflib

    from flor_flows.propagate import propagate

    old = read_text(args.old)
    result = propagate(read_text(args.new), old, args.name or None, version=str(args.old))
    for placement in result.placements:
        level = "warning: low confidence" if placement.low_confidence else "placed"
        notes = "; ".join(placement.notes)
        print(
            f"flor-flows: {level} {placement.name} at line {placement.line} "
            f"(confidence {placement.confidence:.2f}{'; ' + notes if notes else ''})",
            file=sys.stderr,
        )
    for refusal in result.refusals:
        print(f"flor-flows: cannot place {refusal}", file=sys.stderr)
    if args.diff:
        name = str(args.old)
        diff = difflib.unified_diff(
            old.splitlines(keepends=True),
            result.source.splitlines(keepends=True),
            fromfile=f"a/{name}",
            tofile=f"b/{name}",
        )
        sys.stdout.writelines(diff)
    elif args.output:
        args.output.write_text(result.source)
    else:
        sys.stdout.write(result.source)
    return 0 if result.ok else 3
