"""The commands of `flor-flows` that read the store: runs, dataframe, query, backfills.

Text tables fit the terminal (see `tables`); --csv and --json print every column in full.
Reading creates nothing: a project without a store is an error (see `store.reader`).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from flor_flows.errors import CorruptStore, RequestError

T = TypeVar("T")


def _print_frame(frame: Any, args: argparse.Namespace, first: list[str] | None = None) -> None:
    """`frame` as `args` ask: CSV or JSON (every column, in full), else a table that fits the
    terminal; for reading (see `tables.readable`, `first` leading) unless `first` is None."""
    from flor_flows import tables

    if args.csv:
        tables.write_csv(frame, sys.stdout)
    elif args.json:
        tables.write_json(frame, sys.stdout)
    else:
        shown = frame if first is None else tables.readable(frame, first)
        print(tables.render(shown, shutil.get_terminal_size().columns))


def _store(args: argparse.Namespace):  # noqa: ANN202
    """The store to read: a store that does not exist yet is an error, not created; one this
    process cannot write is read read-only."""
    from flor_flows.config import load_settings
    from flor_flows.store import reader

    return reader(args.store or load_settings(args.project_dir).store_url)


def _read(args: argparse.Namespace, read: Callable[[Any], T]) -> T:
    """`read(store)` on the store to read; a damaged SQLite file is a FlorError (see Store)."""
    from sqlalchemy.exc import DatabaseError

    store = _store(args)
    try:
        return read(store)
    # sqlite3 reports a damaged file (whose pages past the schema are read only now) as the
    # broad DatabaseError, connectorx (the wide table's reader) as RuntimeError: CorruptStore
    # tells a damaged file apart; any other error goes on as it was.
    except (DatabaseError, RuntimeError) as exc:
        corrupt = CorruptStore.from_error(str(store.engine.url.database), exc)
        if corrupt is None:
            raise
        raise corrupt from exc


def cmd_runs(args: argparse.Namespace) -> None:
    """The recorded runs; as text, the main columns and data batches unless --all-columns."""
    runs = _read(args, lambda store: store.runs())
    if not (args.all_columns or args.csv or args.json) and len(runs):
        wanted = ["run_uid", "status", "code_version", "started_at", "entry_script"]
        wanted += ["resumed_from", "prefect_flow_run_id"]
        runs = runs[wanted + [c for c in runs.columns if c.startswith("data.")]]
    _print_frame(runs, args, first=[])


def cmd_dataframe(args: argparse.Namespace) -> None:
    """The wide table; as text, the loops and the asked names lead, after run and version."""
    names = [n for n in args.names.split(",") if n] if args.names else []

    def read(store: Any) -> tuple[Any, set[str]]:  # noqa: ANN401 - a Store
        frame = store.dataframe(names, include_diverged=args.include_diverged)
        return frame, set(store.runs().columns) if names else set(frame.columns)

    frame, run_columns = _read(args, read)
    asked = {*names, *(f"{n}@replay" for n in names)}
    _print_frame(frame, args, [c for c in frame.columns if c not in run_columns or c in asked])


def cmd_query(args: argparse.Namespace) -> None:
    """The rows of an SQL query on the store, as given."""
    _print_frame(_read(args, lambda store: store.query(args.sql)), args)


def cmd_backfills(args: argparse.Namespace) -> int:
    """The hindsight requests, or one's runs; --retry-failed replays that request's runs that
    failed, diverged or were cancelled, as `flor-flows replay --runs` does."""
    from flor_flows.replay.backfill import RETRIED, STATUSES
    from flor_flows.store import backfills

    if args.id is None:
        if args.retry_failed:
            raise RequestError(
                "--retry-failed needs the ID of a backfill (see `flor-flows backfills`)"
            )
        _print_frame(_read(args, lambda store: backfills.requests(store, STATUSES)), args, [])
        return 0
    (names, selection), items = _read(
        args, lambda store: (backfills.request(store, args.id), backfills.items(store, args.id))
    )
    if not args.retry_failed:
        if not (args.csv or args.json):
            items["error"] = items["error"].str.strip().str.split("\n").str[0]
        _print_frame(items, args, [])
        return 0
    failed = items.loc[items["status"].isin(RETRIED), "run_uid"].tolist()
    if not failed:
        print(f"backfill {args.id} has no run to retry ({', '.join(RETRIED)})")
        return 0
    replay = ["replay", "--apply", ",".join(names), "--runs", ",".join(failed)]
    replay += _selection_options(selection)
    replay += ["--max-parallel", str(args.max_parallel)] + (["--dry-run"] if args.dry_run else [])
    replay += ["--project-dir", str(args.project_dir)] if args.project_dir else []
    print(
        f"flor-flows: retrying {len(failed)} run(s): flor-flows {' '.join(replay)}", file=sys.stderr
    )
    return args.replay(replay)


def _selection_options(selection: dict[str, Any]) -> list[str]:
    """The `flor-flows replay` options that repeat a request's selection."""
    options = ["--where", selection["where"]] if selection.get("where") else []
    for spec in selection.get("iterations") or []:
        options += ["--iter", spec]
    options += ["--all"] if selection.get("only_missing") is False else []
    options += ["--source-ref", selection["source_ref"]] if selection.get("source_ref") else []
    return options


def add_commands(sub: Any, replay: Callable[[list[str]], int]) -> None:  # noqa: ANN401
    """The reading commands, on the `flor-flows` command line's subparsers `sub`; `replay`
    runs a `flor-flows replay` command line (for `backfills --retry-failed`)."""

    def reader(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument(
            "--project-dir", type=Path, help="project (git repo) to read; default: cwd"
        )
        cmd.add_argument("--store", help="SQLAlchemy URL of the store (overrides the project's)")
        machine = cmd.add_mutually_exclusive_group()
        machine.add_argument("--csv", action="store_true", help="print CSV: every column, in full")
        machine.add_argument(
            "--json", action="store_true", help="print a JSON array of rows: every column, in full"
        )
        return cmd

    runs = reader("runs", "List recorded runs with status, code version and data batches.")
    runs.add_argument("--all-columns", action="store_true", help="show every run column")
    runs.set_defaults(func=cmd_runs)
    frame = reader("dataframe", "Print the wide table of logged names over every run.")
    frame.add_argument("names", nargs="?", help="comma-separated names, e.g. loss,acc; none: runs")
    frame.add_argument(
        "--include-diverged",
        action="store_true",
        help="also show values of replays that diverged from their run's record (untrusted)",
    )
    frame.set_defaults(func=cmd_dataframe)
    query = reader("query", "Run SQL on the store.")
    query.add_argument("sql")
    query.set_defaults(func=cmd_query)
    fills = reader("backfills", "List the hindsight requests (backfills), or the runs of one.")
    fills.add_argument("id", nargs="?", type=int, metavar="ID", help="the backfill's runs")
    fills.add_argument(
        "--retry-failed",
        action="store_true",
        help="replay again the runs of backfill ID that failed, diverged or were cancelled "
        "(each over the iterations still missing its values)",
    )
    fills.add_argument("--dry-run", action="store_true", help="with --retry-failed: the plan")
    fills.add_argument("--max-parallel", type=int, default=2, metavar="N", help="replays at once")
    fills.set_defaults(func=cmd_backfills, replay=replay)
