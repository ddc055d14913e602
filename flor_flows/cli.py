"""`flor-flows` command line: the parser and its dispatch; each command lives in commands/."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from importlib.metadata import version
from pathlib import Path

from deployments import serve as serving
from flor_flows.commands import read
from flor_flows.commands.propagate import cmd_propagate
from flor_flows.commands.replay import cmd_replay
from flor_flows.commands.server import cmd_prepare, cmd_serve, cmd_server
from flor_flows.commands.train import cmd_train
from flor_flows.errors import FlorError

Subparsers = argparse._SubParsersAction  # what `add_subparsers` returns

SERVER_HELP = """\
Run a Prefect server (API and UI) for flor-flows, in the foreground until Ctrl-C.

Without --database the server keeps its state in SQLite at $PREFECT_HOME/prefect.db
(PREFECT_HOME defaults to ~/.prefect): fine for one user and a few runs at a time.
With --database postgresql://user[:password]@host[:port]/dbname it uses PostgreSQL
(the database must exist; Prefect creates its tables): use it when several flows,
workers or users share the server, as SQLite answers concurrent writers with
"database is locked" errors. postgres://, postgresql+psycopg:// and sqlite:///path URLs
are accepted too; they are converted to the async drivers Prefect needs. Keep a
password out of the command line (where `ps` shows it): give the URL in the environment
variable FLOR_FLOWS_SERVER_DATABASE instead of --database.

Then point flow processes at it: export PREFECT_API_URL=http://HOST:PORT/api

`flor-flows server start` runs the same server in the background instead (on a free port
unless --port is given, its log in $PREFECT_HOME/flor-flows-server.log) and prints its API
URL; `flor-flows server status` shows it (exit 1 if none answers), `flor-flows server stop`
stops it. `flor-flows train` and `replay` without PREFECT_API_URL use that server, and start
it when none runs (FLOR_FLOWS_SERVER_DATABASE applies); FLOR_FLOWS_PREFECT=temporary gives
them Prefect's temporary server of each command instead. Run in a project with recorded
runs, `server start` also prepares its replays (`flor-flows prepare`).
"""

PREPARE_HELP = """Start the fork servers that replays of the project's latest runs fork from (each imports
its entry script's libraries once: torch takes seconds), and wait until they are ready,
so that the next `flor-flows replay` waits for no library. They are kept by the background
server's warm process (`flor-flows server start`, which runs this in a project) until 10
minutes without a replay or `flor-flows server stop`; each holds its libraries in memory
(torch: about 300 MB). Without a background server, or with FLOR_FLOWS_REPLAY_FORK=0,
nothing is prepared.
"""


def cmd_demo(args: argparse.Namespace) -> None:
    """Run the demo (see `demo`), in --workdir when given."""
    from flor_flows import demo

    demo.main(["--workdir", str(args.workdir)] if args.workdir else [])


def parser() -> argparse.ArgumentParser:
    """The `flor-flows` command line: every command, each dispatching to its `cmd_` function."""
    top = argparse.ArgumentParser(
        prog="flor-flows",
        description="Multiversion hindsight logging for continuous training, on Prefect. "
        "Tables fit the terminal (COLUMNS); --csv and --json print every column in full.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version('flor-flows')}")
    sub = top.add_subparsers(dest="command", required=True)
    read.add_commands(sub, replay=lambda argv: cmd_replay(parser().parse_args(argv)))
    _add_replay(sub)
    _add_propagate(sub)
    _add_demo(sub)
    _add_servers(sub)
    _add_train(sub)
    return top


def _add_replay(sub: Subparsers) -> None:
    """`replay`: a hindsight request over historical runs."""
    rep = sub.add_parser(
        "replay",
        help="Compute new logged values over historical runs (one backfill flow run).",
        description="Propagate today's flor.log statements for --apply NAMES into every "
        "historical code version and replay the selected runs from their checkpoints; the "
        "values are stored under the historical runs (source = replay). Never prompts.",
    )
    rep.add_argument("--apply", required=True, metavar="NAMES", help="comma-separated names")
    rep.add_argument("--where", help="runs and iterations to replay, e.g. 'acc < 0.9'")
    rep.add_argument(
        "--iter",
        action="append",
        default=[],
        metavar="LOOP=SEL",
        help="per outer loop: all, last, none or i,j (e.g. epoch=last); repeatable",
    )
    rep.add_argument(
        "--runs", metavar="UIDS", help="only these of the selected runs (comma-separated uids)"
    )
    rep.add_argument("--dry-run", action="store_true", help="print the plan and stop")
    rep.add_argument("--max-parallel", type=int, default=2, metavar="N", help="replays at once")
    rep.add_argument(
        "--from", dest="source_ref", metavar="REF", help="take the statements from a git ref"
    )
    rep.add_argument(
        "--all", action="store_true", help="replay even where the values exist already"
    )
    rep.add_argument(
        "--project-dir", type=Path, metavar="DIR", help="the project (git repo); default: cwd"
    )
    rep.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the propagations and replays on the Dask cluster whose scheduler is at "
        "ADDRESS (e.g. tcp://10.0.0.5:8786); needs prefect-dask (the `dask` extra)",
    )
    rep.set_defaults(func=cmd_replay)


def _add_propagate(sub: Subparsers) -> None:
    """`propagate`: carry log statements from one version of a file into another."""
    prop = sub.add_parser(
        "propagate",
        help="Carry NEW's flor.log statements into OLD (an older version of the file).",
        description="Insert each flor.log statement of NEW that OLD lacks after the image of "
        "its anchor in OLD, renamed to OLD's names, every other byte of OLD unchanged. "
        "Exit 0 when everything was placed (or nothing was missing), 3 when a statement "
        "cannot be placed safely (the reason is on stderr).",
    )
    prop.add_argument("new", type=Path, help="the new version, holding the log statements")
    prop.add_argument("old", type=Path, help="the old version to insert them into")
    prop.add_argument(
        "--name", action="append", help="only this logged name (repeatable); default: all"
    )
    out = prop.add_mutually_exclusive_group()
    out.add_argument("-o", "--output", type=Path, help="write the result here instead of stdout")
    out.add_argument("--diff", action="store_true", help="print a unified diff instead")
    prop.set_defaults(func=cmd_propagate)


def _add_demo(sub: Subparsers) -> None:
    """`demo`: the record demo."""
    demo = sub.add_parser("demo", help="Run the record demo over several code versions.")
    demo.add_argument("--workdir", type=Path, help="where to create the demo project")
    demo.set_defaults(func=cmd_demo)


def _add_servers(sub: Subparsers) -> None:
    """`server` (the Prefect server), `prepare` (its fork servers) and `serve` (the
    project's flows)."""
    server = _described(
        sub,
        "server",
        "Run a Prefect server for flor-flows (SQLite by default, or PostgreSQL).",
        SERVER_HELP,
    )
    server.add_argument(
        "action",
        nargs="?",
        choices=["start", "stop", "status"],
        help="start, stop or show the background server; none: run one in the foreground",
    )
    server.add_argument(
        "--database", metavar="URL", help="PostgreSQL or SQLite URL; default: Prefect's SQLite"
    )
    server.add_argument("--host", help="address to listen on; default: 127.0.0.1")
    server.add_argument(
        "--port", type=int, help="port to listen on; default: 4200 (start: a free one)"
    )
    server.set_defaults(func=cmd_server)

    prepare = _described(
        sub,
        "prepare",
        "Start the fork servers the project's next replays fork from, and wait for them.",
        PREPARE_HELP,
    )
    prepare.add_argument(
        "--project-dir", type=Path, metavar="DIR", help="the project (git repo); default: cwd"
    )
    prepare.add_argument(
        "--quiet",
        action="store_true",
        help="say nothing outside a project, or where no run can be replayed yet",
    )
    prepare.set_defaults(func=cmd_prepare)

    serve = _described(sub, "serve", serving.SUMMARY + ".", serving.DESCRIPTION)
    serving.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)


def _described(
    sub: Subparsers, name: str, summary: str, description: str
) -> argparse.ArgumentParser:
    """A command whose --help shows `description` as written (its own line breaks)."""
    return sub.add_parser(
        name,
        help=summary,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _add_train(sub: Subparsers) -> None:
    """`train`: one training flow run of a script."""
    train = sub.add_parser(
        "train",
        help="Run one training flow run of SCRIPT (on a batch, if given); prints the run uid.",
        description="Run one training flow run of SCRIPT and print the run's uid.\n\n"
        "Everything after `--` is the script's own command line, passed through unchanged\n"
        "(its argparse options, say). Without --batch the script reads its own data.\n"
        "Uses the Prefect server at PREFECT_API_URL, or else a local one in the background\n"
        "(see `flor-flows server --help`; FLOR_FLOWS_PREFECT=temporary: one per command).",
        epilog="examples:\n"
        "  flor-flows train train.py -- --epochs 2 --lr 0.5\n"
        "  flor-flows train train.py --batch data/new.csv --kwargs lr=0.01\n"
        "  flor-flows train train.py --batch s3://bucket/new.parquet -- --epochs 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.take_script_argv(train)
    train.add_argument("script", help="the training script, relative to the project")
    train.add_argument(
        "--batch",
        metavar="URI",
        help="the new data batch, read by the script as flor.data('batch', ...); "
        "default: none, the script reads its own data",
    )
    serving.add_pairs(train, "--data", "NAME=URI", "other batches, for flor.data(NAME, ...)")
    serving.add_pairs(train, "--kwargs", "NAME=VALUE", "hyper-parameters (flor.arg)")
    train.add_argument(
        "--no-warm-start",
        action="store_true",
        help="train from scratch instead of from the latest checkpointed run",
    )
    train.add_argument(
        "--project-dir", type=Path, metavar="DIR", help="the project (git repo); default: cwd"
    )
    train.set_defaults(func=cmd_train)


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit code. A reader that closed our output (`| head`) ends the
    command quietly with 141, as git and ls end (killed by SIGPIPE)."""
    args = parser().parse_args(argv)
    try:
        code = args.func(args) or 0
        sys.stdout.flush()
    except FlorError as exc:
        print(f"flor-flows: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Python's recipe: output to devnull, so that the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    sys.exit(main())
