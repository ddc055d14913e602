"""`flor-flows` command line: thin commands over the library."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

from deployments import serve as serving
from flor_flows import errors, read_commands
from flor_flows.api import check_api, ephemeral_defaults, use_api
from flor_flows.errors import FlorError, TrainingFailed

T = TypeVar("T")

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
them Prefect's temporary server of each command instead.
"""


def _dask_runner(address: str):  # noqa: ANN202 - prefect_dask is imported only here
    """A task runner on the Dask scheduler at `address`; its workers report to our API."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise FlorError(
            f"--dask needs prefect-dask ({exc}); install it with: pip install 'flor-flows[dask]'"
        ) from exc
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # each worker would start a private temporary server
        raise FlorError(
            "--dask needs a Prefect server the Dask workers can reach: start one "
            "(flor-flows server --host 0.0.0.0) and set PREFECT_API_URL to its address"
        )
    return DaskTaskRunner(address=address)


def cmd_replay(args: argparse.Namespace) -> int:
    """One backfill flow run: compute --apply names over the historical runs it selects."""
    ephemeral_defaults()
    from flor_flows.replay.backfill import BackfillRequest, check_versions, resolve
    from flor_flows.replay.plan import format_plan
    from flor_flows.replay.selection import parse_iter

    parse_iter(args.iter or [])  # its own message, before the form's pattern
    request = _request(
        BackfillRequest,
        flags={"names": "--apply", "iterations": "--iter", "runs": "--runs"},
        project=str((args.project_dir or Path.cwd()).resolve()),
        names=[n for n in args.apply.split(",") if n],
        where=args.where,
        iterations=args.iter,
        only_missing=not args.all,
        source_ref=args.source_ref,
        max_parallel=args.max_parallel,
        runs=[uid for uid in (args.runs or "").split(",") if uid],
    )
    if not args.dry_run:  # a bad option or an API that does not answer: before the store
        runner = _dask_runner(args.dask) if args.dask else None
        check_api()
    resolved = resolve(request)  # a bad name, filter or loop: an error before Prefect starts
    if args.dry_run:  # the plan, each version checked: no flow run, no Prefect, no writes
        print(format_plan(resolved.items, check_versions(resolved)))
        return 0
    use_api(background=not args.dask)  # Dask workers cannot reach a server on 127.0.0.1
    from flows.backfill import backfill

    flow = backfill.with_options(task_runner=runner) if runner else backfill
    _reconcile(Path(request.project))
    watch = _watch_api(_backfill_api_lost, "backfill")
    try:
        state = _stoppable(
            lambda: flow(request, return_state=True),
            "{n} replays stopped; run the same command again to resume",
        )
    finally:
        if watch is not None:
            watch.stop()
    print(state.message or state.name, file=sys.stderr if not state.is_completed() else sys.stdout)
    return 0 if state.is_completed() else 1


def _stoppable(call: Callable[[], T], stopped: str) -> T:
    """`call()` (a flow run) in a thread, this (the main) thread waiting: SIGINT or SIGTERM
    stops its scripts and exits at once (see `_stop_and_exit`), saying `stopped` (a format
    string of `n`, how many scripts were running).

    Running the flow off the main thread keeps Prefect from installing its own SIGTERM
    handler (it can only do so in the main thread), whose crash handling takes seconds
    and leaves the replays running meanwhile.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="flor-flows-flow", daemon=True)
    handler = functools.partial(_stop_and_exit, worker=worker, stopped=stopped)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# Seconds after the signal, all within 5: the replays get until STOP_CHILDREN_GRACE to
# record themselves stopped (then SIGKILL), the flow until STOP_FLOW_UNTIL to wind down,
# the temporary Prefect server until STOP_SERVER_UNTIL to shut down (then SIGKILL).
STOP_CHILDREN_GRACE = 2.0
STOP_FLOW_UNTIL = 3.0
STOP_SERVER_UNTIL = 3.8


def _stop_and_exit(signum: int, _frame: object, worker: threading.Thread, stopped: str) -> None:
    """Stop every script (replays, training) and this process's temporary Prefect server;
    exit 128 + signum."""
    from flor_flows.training import launch

    if launch.stopping.is_set():  # a second signal: the first one is already on it
        return
    start = time.monotonic()
    running = launch.stop_children(grace=STOP_CHILDREN_GRACE)
    _cancel_backfill_items()
    # The flow sees its replays end as stopped (launch.stopping), starts no more, and
    # records that; give it the time that is left, not more.
    worker.join(max(0.0, start + STOP_FLOW_UNTIL - time.monotonic()))
    _stop_temporary_servers(start + STOP_SERVER_UNTIL)
    print(f"flor-flows: interrupted: {stopped.format(n=running)}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit, not sys.exit: an orderly exit would wait for Prefect's teardown (its
    # atexit hooks stop the temporary server with a 5 s wait, flush logs and events to an
    # API that may be gone, and join the flow's non-daemon worker threads), which can take
    # far longer than a user waits after Ctrl-C. Everything worth keeping is already in the
    # store: the replays flushed their values before exiting, and our output is flushed.
    os._exit(128 + signum)


def _cancel_backfill_items() -> None:
    """Mark the runs this process's backfill holds cancelled: the same request run again
    resumes them."""
    from flor_flows.replay.backfill import LEASES
    from flor_flows.store import open_store

    for store_url, backfill_id, holder in list(LEASES):
        open_store(store_url).cancel_leased(backfill_id, holder)


def _stop_temporary_servers(deadline: float) -> None:
    """Stop the ephemeral Prefect API server(s) this process started (PREFECT_API_URL unset).

    Prefect keeps them in `SubprocessASGIServer._instances` (by port) and stops them at
    exit with a 5 s grace; here the grace ends at `deadline`, then SIGKILL.
    """
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:  # never imported: no temporary server was started
        return
    servers = list(server_module.SubprocessASGIServer._instances.values())
    running = [s.server_process for s in servers if s.server_process is not None]
    running = [proc for proc in running if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)


def _request(model: type[T], flags: dict[str, str] | None = None, **fields: object) -> T:
    """A flow's typed request from the command line; its validation errors as a FlorError
    naming the options (`flags`: field -> option where the two differ; else --field)."""
    from pydantic import ValidationError

    flags = flags or {}
    try:
        return model(**fields)
    except ValidationError as exc:
        why = "; ".join(
            f"{flags.get(str(e['loc'][0]), '--' + str(e['loc'][0]).replace('_', '-'))}: " + _said(e)
            for e in exc.errors()
        )
        raise FlorError(why) from exc


def _said(error: Any) -> str:  # noqa: ANN401 - a pydantic ErrorDetails
    """A validation error in words: a name pattern is explained, not shown."""
    from flor_flows.training.request import NAME_PATTERN

    if error["type"] == "string_pattern_mismatch" and error["ctx"]["pattern"] == NAME_PATTERN:
        return f"{error['input']!r} is not a name (letters, digits and _, not first a digit)"
    return error["msg"].removeprefix("Value error, ")


# Source files larger than this are refused unread: no script is that long, and a log or data
# file given by mistake would otherwise be read whole.
MAX_SOURCE_BYTES = 10 * 1024 * 1024
NOT_REGULAR = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a device"}


def _read_text(path: Path) -> str:
    """A source file's text: a regular file of UTF-8 (a BOM is dropped), universal newlines
    as `Path.read_text`; anything else is a FlorError before it is read (never a hang)."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            kind = NOT_REGULAR.get(stat.S_IFMT(mode), "a special file")
            raise FlorError(f"cannot read {path}: it is {kind}, not a regular file")
        with path.open("rb") as file:
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise FlorError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_SOURCE_BYTES:
        raise FlorError(
            f"cannot read {path}: larger than {MAX_SOURCE_BYTES // 2**20} MB, too large for "
            "a source file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")
        hint = ": it looks like UTF-16; save it as UTF-8" if utf16 else ""
        raise FlorError(
            f"cannot read {path}: not UTF-8 text ({exc.reason} at byte {exc.start}){hint}"
        ) from exc
    return text.replace("\r\n", "\n").replace("\r", "\n")


def cmd_propagate(args: argparse.Namespace) -> int:
    """Print (or write) OLD with NEW's log statements; exit 3 if any cannot be placed."""
    import difflib

    from flor_flows.propagate import propagate

    old = _read_text(args.old)
    result = propagate(_read_text(args.new), old, args.name or None, version=str(args.old))
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


def cmd_demo(args: argparse.Namespace) -> None:
    from flor_flows import demo

    demo.main(["--workdir", str(args.workdir)] if args.workdir else [])


def cmd_server(args: argparse.Namespace) -> int:
    """Prefect's server in the foreground (its exit code is ours), or start, stop or show the
    background one."""
    from flor_flows.background import server_action
    from flor_flows.secrets import redact_url
    from flor_flows.server import run_server

    if args.action in ("stop", "status") and (args.database or args.host or args.port is not None):
        raise FlorError(f"server {args.action} takes no --database, --host or --port")
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


def cmd_train(args: argparse.Namespace) -> int:
    """One training flow run; prints the run's uid, or its failure (exit code 1)."""
    ephemeral_defaults()
    from flor_flows.training.request import TrainingRequest
    from flows.training import train

    request = _request(
        TrainingRequest,
        project=str((args.project_dir or Path.cwd()).resolve()),
        script=args.script,
        batch=args.batch,
        data=dict(args.data),
        args=dict(args.kwargs),
        argv=args.script_argv,
        warm_start=not args.no_warm_start,
    )
    _check_inputs(request)
    use_api()
    _reconcile(Path(request.project))
    watch = _watch_api(_api_lost, "training")
    try:
        state = _stoppable(
            lambda: train(request, return_state=True),
            "the training script was stopped; its run is recorded as failed",
        )
    finally:
        if watch is not None:
            watch.stop()
    if not state.is_completed():
        _raise_input_error(state, args.script)
        print(f"flor-flows: training failed: {state.message}", file=sys.stderr)
        return 1
    print(state.result())
    return 0


def _check_inputs(request: Any) -> None:  # noqa: ANN401 - a TrainingRequest
    """A script or local batch that is not there is an error now, before Prefect starts."""
    project = Path(request.project).expanduser().resolve()
    if not (project / request.script).is_file():  # as the flow says it (launch.new_launch)
        raise FlorError(f"training script {request.script!r} not found in {project}")
    uris = {"batch": request.batch, **request.data} if request.batch else dict(request.data)
    for name, uri in uris.items():
        if "://" in uri:
            continue  # any other filesystem: checked when the flow reads it
        path = Path(request.project) / uri
        if not path.is_file():
            raise FlorError(
                f"--{'batch' if name == 'batch' else 'data ' + name}: {path} is not a file"
            )


def _reconcile(project: Path) -> None:
    """Settle the project's flow runs that a lost Prefect API left Running (see reconcile);
    an API or a store that cannot be read for it is a warning: the command goes on."""
    import httpx
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    from flor_flows.config import load_settings
    from flor_flows.reconcile import reconcile

    if not PREFECT_API_URL.value():  # a temporary API: no server outlived its flow runs
        return
    try:
        settled = reconcile(load_settings(project))
    except (httpx.HTTPError, ObjectNotFound) as exc:
        print(f"flor-flows: warning: could not reconcile flow runs: {exc}", file=sys.stderr)
        return
    if settled:
        print(
            f"flor-flows: {len(settled)} flow run(s) left Running by a lost Prefect API now have "
            "the state their work has in the store",
            file=sys.stderr,
        )


def _watch_api(on_lost: Callable[[Any, float], None], kind: str) -> Any:  # noqa: ANN401
    """Watch PREFECT_API_URL during a `kind` flow run, "training" or "backfill" (see
    ApiWatch): `on_lost` once the API is down and the flow's work settled. None without one."""
    from prefect.settings import PREFECT_API_URL

    from flor_flows.reconcile import ApiWatch, settled_backfill, settled_launch
    from flor_flows.replay.backfill import RELEASED
    from flor_flows.training import launch

    if not PREFECT_API_URL.value():
        return None
    if kind == "training":
        before = {run.run_uid for run, _ in launch.launches()}
        watch = ApiWatch(on_lost, lambda: settled_launch(before))
    else:
        released = len(RELEASED)
        watch = ApiWatch(on_lost, lambda: settled_backfill(released))
    watch.start()
    return watch


def _api_lost(run: Any, down_for: float) -> None:  # noqa: ANN401 - a launch.Launch
    """The Prefect API went away and `run` has settled in the store: say how it ended there
    and exit at once (0 if it completed, 1 if not)."""
    from prefect.settings import PREFECT_API_URL

    from flor_flows.errors import StoreError
    from flor_flows.secrets import redact_url
    from flor_flows.store import open_store

    try:
        record = open_store(run.settings.store_url).run_record(run.run_uid)
    except StoreError:  # the flow failed before its script recorded anything
        record = {"status": "not recorded", "error": None}
    status = record["status"]
    if status == "completed":
        print(run.run_uid)
    where = redact_url(str(PREFECT_API_URL.value()))
    print(
        f"flor-flows: warning: the Prefect API at {where} went away during the flow run "
        f"(no answer for {down_for:.0f} s); run {run.run_uid} {status} in the store; its "
        "flow run stays Running in Prefect until the next `flor-flows train` or `replay` of "
        "this project once the API is back",
        file=sys.stderr,
    )
    if status != "completed" and record["error"]:
        error = record["error"].strip()
        why = _raised_line(error) or error.splitlines()[0]  # the exception, not its header
        print(f"flor-flows: training failed: {why}", file=sys.stderr)
    _exit_now(0 if status == "completed" else 1)


def _backfill_api_lost(lease: tuple[str, int, str], down_for: float) -> None:
    """The Prefect API went away and the backfill of `lease` ran to its end in the store
    (its replays need no API): say what the store has and exit at once (0 if every run was
    replayed, 1 if not)."""
    from prefect.settings import PREFECT_API_URL

    from flor_flows.reconcile import backfill_summary
    from flor_flows.secrets import redact_url

    summary, done = backfill_summary(lease)
    where = redact_url(str(PREFECT_API_URL.value()))
    print(
        f"flor-flows: warning: the Prefect API at {where} went away during the flow run "
        f"(no answer for {down_for:.0f} s); {summary} in the store; its flow run stays "
        "Running in Prefect until the next `flor-flows train` or `replay` of this project "
        "once the API is back",
        file=sys.stderr,
    )
    if not done:
        print(
            f"flor-flows: {summary.split(':')[0]} did not replay every run: "
            "`flor-flows replay` with the same options again retries the rest",
            file=sys.stderr,
        )
    _exit_now(0 if done else 1)


def _exit_now(code: int) -> None:
    """Flush and exit at once, leaving a flow that lost its Prefect API behind.

    os._exit, not sys.exit: the flow is still inside Prefect's client retries (about a
    minute per request), and an orderly exit would wait for them, then for Prefect's atexit
    hooks flushing logs and events to the API that is gone. The store already has
    everything the flow's work recorded.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# The exception line of a traceback that ends in one of our errors.
FLOR_ERROR_LINE = re.compile(r"flor_flows\.errors\.(\w+): (.+)")
TRACEBACK = "Traceback (most recent call last):"


def _raised_line(text: str) -> str:
    """The exception line (`module.Class: message`) of the last traceback in `text`: the
    first unindented line after its header, as warnings printed at exit may follow it."""
    lines = text.splitlines()
    if TRACEBACK not in lines:
        return ""
    start = len(lines) - lines[::-1].index(TRACEBACK)
    return next((line for line in lines[start:] if line and not line[0].isspace()), "")


def _raise_input_error(state: Any, script: str) -> None:  # noqa: ANN401 - a Prefect State
    """The failed training flow's cause as a FlorError (exit 2, one line) when it was an
    error of input, configuration or environment: the flow's own (a store, a batch, ...), or
    the one the script stopped on (a `--kwargs` value flor.arg cannot convert, ...). A
    script that failed for any other reason is a failed training run (exit 1, its tail)."""
    from prefect.states import get_state_exception

    if not state.is_failed():
        return
    cause = get_state_exception(state)
    if not isinstance(cause, FlorError):
        return
    if not isinstance(cause, TrainingFailed):
        raise FlorError(f"training failed: {cause}") from cause
    found = FLOR_ERROR_LINE.fullmatch(_raised_line(str(cause)))
    kind = getattr(errors, found[1], None) if found else None
    if found and isinstance(kind, type) and issubclass(kind, FlorError):
        raise FlorError(f"training failed: {script} stopped: {found[2]}") from cause


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="flor-flows",
        description="Multiversion hindsight logging for continuous training, on Prefect. "
        "Tables fit the terminal (COLUMNS); --csv and --json print every column in full.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version('flor-flows')}")
    sub = top.add_subparsers(dest="command", required=True)

    read_commands.add_commands(sub, replay=lambda argv: cmd_replay(parser().parse_args(argv)))
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
    demo = sub.add_parser("demo", help="Run the record demo over several code versions.")
    demo.add_argument("--workdir", type=Path, help="where to create the demo project")
    demo.set_defaults(func=cmd_demo)

    server = sub.add_parser(
        "server",
        help="Run a Prefect server for flor-flows (SQLite by default, or PostgreSQL).",
        description=SERVER_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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

    serve = sub.add_parser(
        "serve",
        help=serving.SUMMARY + ".",
        description=serving.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serving.add_arguments(serve)
    serve.set_defaults(func=cmd_serve)

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
    return top


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
