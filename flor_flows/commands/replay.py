"""`flor-flows replay`: one backfill flow run over the historical runs it selects."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flor_flows.api import check_api, ephemeral_defaults, use_api
from flor_flows.commands.inputs import typed_request
from flor_flows.commands.stopping import exit_now
from flor_flows.commands.watching import run_watched
from flor_flows.errors import ConfigError, PrefectApiError


def _dask_runner(address: str):  # noqa: ANN202 - prefect_dask is imported only here
    """A task runner on the Dask scheduler at `address`; its workers report to our API."""
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise ConfigError(
            f"--dask needs prefect-dask ({exc}); install it with: pip install 'flor-flows[dask]'"
        ) from exc
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # each worker would start a private temporary server
        raise PrefectApiError(
            "--dask needs a Prefect server the Dask workers can reach: start one "
            "(flor-flows server --host 0.0.0.0) and set PREFECT_API_URL to its address"
        )
    return DaskTaskRunner(address=address)


def cmd_replay(args: argparse.Namespace) -> int:
    """One backfill flow run: compute --apply names over the historical runs it selects."""
    ephemeral_defaults()
    from flor_flows.replay.backfill import BackfillRequest, check_versions, resolve
    from flor_flows.replay.engine import start_setup
    from flor_flows.replay.plan import format_plan
    from flor_flows.replay.selection import parse_iter

    parse_iter(args.iter or [])  # its own message, before the form's pattern
    request = typed_request(
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
        print(format_plan(resolved.items, check_versions(resolved), request.max_parallel))
        if left_out := resolved.left_out():
            print(left_out)
        return 0
    use_api(background=not args.dask)  # Dask workers cannot reach a server on 127.0.0.1
    if resolved.items and not args.dask:  # its replays here: their libraries load meanwhile
        first = resolved.items[0]
        start_setup(resolved.settings, first.code_version, first.entry_script)
    from flows.backfill import backfill

    flow = backfill.with_options(task_runner=runner) if runner else backfill
    state = run_watched(
        lambda: flow(request, return_state=True),
        Path(request.project),
        _backfill_api_lost,
        "backfill",
        "{n} replays stopped; run the same command again to resume",
    )
    print(state.message or state.name, file=sys.stderr if not state.is_completed() else sys.stdout)
    return 0 if state.is_completed() else 1


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
    exit_now(0 if done else 1)
