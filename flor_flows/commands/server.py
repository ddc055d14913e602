"""`flor-flows server` and `flor-flows serve`: a Prefect server, and the project's deployments."""

from __future__ import annotations

import argparse
import os
import sys

from deployments import serve as serving
from flor_flows.api import check_api
from flor_flows.errors import RequestError


def cmd_server(args: argparse.Namespace) -> int:
    """Prefect's server in the foreground (its exit code is ours), or start, stop or show the
    background one."""
    from flor_flows.background import server_action
    from flor_flows.secrets import redact_url
    from flor_flows.server import run_server

    if args.action in ("stop", "status") and (args.database or args.host or args.port is not None):
        raise RequestError(f"server {args.action} takes no --database, --host or --port")
    database = args.database or os.environ.get("FLOR_FLOWS_SERVER_DATABASE") or None
    if args.database and redact_url(args.database) != args.database:
        print(
            "flor-flows: warning: a password on the command line is visible to every user "
            "(ps); set FLOR_FLOWS_SERVER_DATABASE=URL instead of --database",
            file=sys.stderr,
        )
    if args.action is None:
        return run_server(database, args.host or "127.0.0.1", args.port or 4200)
    return server_action(args.action, database, args.host or "127.0.0.1", args.port)


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the project's deployments, once the Prefect server they need answers."""
    check_api(temporary_allowed=False)
    serving.run(args)
