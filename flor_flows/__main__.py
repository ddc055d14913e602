"""The `flor-flows` command (`python -m flor_flows` too): run by the warm process next to
the background Prefect server when one answers (warm.py; FLOR_FLOWS_WARM=0 turns it off),
else in this process."""

from __future__ import annotations

import contextlib
import os
import sys

from flor_flows import background, cli, warm
from flor_flows.errors import FlorError


def main() -> None:
    """Run the command line, in the warm process when there is one, and exit with its code."""
    code = None
    with contextlib.suppress(FlorError):  # a bad FLOR_FLOWS_PREFECT: the command says so
        if os.environ.get("FLOR_FLOWS_WARM") != "0" and background.prefect_mode() == "background":
            code = warm.forward(sys.argv[1:], background.prefect_home())
    sys.exit(cli.main() if code is None else code)


if __name__ == "__main__":
    main()
