"""`flor-flows server`, `prepare` and `serve`: a Prefect server, the fork servers of its warm
process, and the project's deployments."""

from __future__ import annotations

import argparse
import os
import sys

from deployments import serve as serving
from flor_flows import handover
from flor_flows.api import check_api
from flor_flows.background import prefect_home
from flor_flows.config import load_settings
from flor_flows.errors import NotAGitRepository, RequestError, StoreError
from flor_flows.replay import forkserver


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
    code = server_action(args.action, database, args.host or "127.0.0.1", args.port)
    if args.action == "start" and handover.wanted() and forkserver.enabled():
        # In its warm process, which keeps the fork servers: said on stderr (stdout: the URL).
        handover.forward(["prepare", "--quiet"], prefect_home())
    return code


def cmd_prepare(args: argparse.Namespace) -> None:
    """Start and wait for the fork servers of the project's latest runs (`engine.prepare`);
    each says on stderr how its replays will start."""
    from flor_flows.replay.engine import prepare

    try:
        said = prepare(load_settings(args.project_dir))
    except (NotAGitRepository, StoreError):  # no project, or no run to replay yet
        if args.quiet:
            return
        raise
    for line in said:
        print(line, file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> None:
    """Serve the project's deployments, once the Prefect server they need answers."""
    check_api(temporary_allowed=False)
    serving.run(args)
