"""`flor-flows` command line: thin commands over the library."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flor_flows.errors import FlorError


def _print_frame(frame, as_csv: bool) -> None:  # noqa: ANN001 - pandas is imported lazily
    import pandas as pd

    if as_csv:
        frame.to_csv(sys.stdout, index=False)
        return
    with pd.option_context(
        "display.width", 200, "display.max_columns", 40, "display.max_rows", 200
    ):
        print(frame.to_string(index=False) if len(frame) else "(no rows)")


def _store(args: argparse.Namespace):  # noqa: ANN202
    from flor_flows.store import open_store, project_store

    return open_store(args.store) if args.store else project_store(args.project_dir)


def cmd_runs(args: argparse.Namespace) -> None:
    runs = _store(args).runs()
    if not args.all_columns and len(runs):
        wanted = ["run_uid", "status", "code_version", "started_at", "entry_script"]
        wanted += [c for c in runs.columns if c.startswith("data.")]
        runs = runs[wanted].assign(code_version=runs["code_version"].str[:10])
    _print_frame(runs, args.csv)


def cmd_dataframe(args: argparse.Namespace) -> None:
    names = [n for n in args.names.split(",") if n] if args.names else []
    _print_frame(_store(args).dataframe(names), args.csv)


def cmd_query(args: argparse.Namespace) -> None:
    _print_frame(_store(args).query(args.sql), args.csv)


def cmd_demo(args: argparse.Namespace) -> None:
    from flor_flows import demo

    demo.main(["--workdir", str(args.workdir)] if args.workdir else [])


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="flor-flows",
        description="Multiversion hindsight logging for continuous training, on Prefect.",
    )
    sub = top.add_subparsers(dest="command", required=True)

    def reader(name: str, help_: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_, description=help_)
        cmd.add_argument(
            "--project-dir", type=Path, help="project (git repo) to read; default: cwd"
        )
        cmd.add_argument("--store", help="SQLAlchemy URL of the store (overrides the project's)")
        cmd.add_argument("--csv", action="store_true", help="print CSV instead of a table")
        return cmd

    runs = reader("runs", "List recorded runs with status, code version and data batches.")
    runs.add_argument("--all-columns", action="store_true", help="show every run column")
    runs.set_defaults(func=cmd_runs)
    frame = reader("dataframe", "Print the wide table of logged names over every run.")
    frame.add_argument("names", nargs="?", help="comma-separated names, e.g. loss,acc; none: runs")
    frame.set_defaults(func=cmd_dataframe)
    query = reader("query", "Run SQL on the store.")
    query.add_argument("sql")
    query.set_defaults(func=cmd_query)
    demo = sub.add_parser("demo", help="Run the record demo over several code versions.")
    demo.add_argument("--workdir", type=Path, help="where to create the demo project")
    demo.set_defaults(func=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except FlorError as exc:
        print(f"flor-flows: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
