"""The `flor-flows` command (`python -m flor_flows` too): run by the warm process next to
the background Prefect server when one answers (warm.py; FLOR_FLOWS_WARM=0 turns it off),
else in this process."""

from __future__ import annotations

import sys

from flor_flows import background, cli, handover


def main() -> None:
    """Run the command line, in the warm process when there is one, and exit with its code."""
    home = background.prefect_home()
    code = handover.forward(sys.argv[1:], home) if handover.wanted() else None
    sys.exit(cli.main() if code is None else code)


if __name__ == "__main__":
    main()
