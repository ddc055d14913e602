"""Serve a project's training and backfill flows: `python -m deployments.serve`.

The flows are referenced by module path (`flows.training.train`), so their runs import the
installed `flows` package and work from any working directory. Prefect is imported only
when serving, so building the command line stays cheap.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from flor_flows.errors import FlorError, PrefectApiError, RequestError

if TYPE_CHECKING:
    from prefect.deployments.runner import RunnerDeployment

DESCRIPTION = """\
Serve a project's training and backfill flows from this process, against the Prefect
server at PREFECT_API_URL. Three deployments, run in child processes as their runs arrive:

- `train/on-demand`: one training run; the UI's Run button opens the request as a form,
  prefilled with the project, script and script arguments, for the batch to train on
  (leave `batch` empty for a script that reads its own data).
- `retrain/scheduled`: every 10 minutes (or on `--cron`/`--interval`), train on whatever
  arrived at the watched location. One run at a time: an overlapping run waits its turn.
  Its schedule is active while this process serves (the work-pool recipe,
  deployments/prefect.yaml, deploys it paused instead).
- `backfill/hindsight`: hindsight logging. Add flor.log statements to the script in the
  project's working tree (no commit needed), then fill in their `names` in the Run form
  (optionally `where` and `iterations`): the historical runs are replayed from their
  checkpoints and the new values stored under them.

Everything after `--` is the script's own command line, given to every run (the form's
`argv`), e.g. `flor-flows serve --script train.py -- --epochs 3 --lr 0.1`.

A run may give part of a request, e.g. `prefect deployment run backfill/hindsight --params
'{"request": {"names": ["grad_norm"]}}'`: Prefect then replaces the whole default request,
so the other fields take the form's defaults, the project being this one (its runs have
FLOR_FLOWS_PROJECT_DIR set).

Stop with Ctrl-C or SIGTERM: the deployments' schedules pause until the next serve.
"""

DEFAULT_INTERVAL = timedelta(minutes=10)
# The deployments served, by flow name, in the order `deployments` makes them.
DEPLOYMENTS = {"train": "on-demand", "retrain": "scheduled", "backfill": "hindsight"}
SUMMARY = "Serve a project's flows: " + ", ".join(f"{f}/{d}" for f, d in DEPLOYMENTS.items())
START_SERVER = (
    "start one with `flor-flows server` and point this process at it, e.g. "
    "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


def deployments(
    project: Path | str,
    script: str,
    watch: str,
    cron: str | None = None,
    interval: float | None = None,
    args: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> list[RunnerDeployment]:
    """The on-demand training, scheduled retraining and hindsight backfill deployments.

    `interval` is in seconds; with neither `cron` nor `interval` retraining runs every
    10 minutes. `args` (flor.arg values) and `argv` (the script's own command-line
    arguments) are the defaults of every training run.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.types.entrypoint import EntrypointType

    from flor_flows.config import find_root
    from flor_flows.replay.backfill import BackfillRequest
    from flor_flows.training.request import RetrainingRequest, TrainingRequest
    from flows.backfill import backfill
    from flows.retraining import retrain
    from flows.training import train

    if cron is not None and interval is not None:
        raise RequestError("give a cron expression or an interval for retraining, not both")
    root = Path(project).expanduser().resolve()
    find_root(root)  # a project must be a git repository: fail now, not at the first run
    if not (root / script).is_file():
        raise RequestError(f"training script {script!r} not found in {root}")
    args, argv = dict(args or {}), list(argv or [])
    on_demand = train.to_deployment(
        name=DEPLOYMENTS[train.name],
        parameters={
            "request": TrainingRequest(
                project=str(root), script=script, args=args, argv=argv
            ).model_dump()
        },
        description=f"Train {script} of {root} on a batch: fill in `batch` and press Run.",
        tags=["flor-flows"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    scheduled = retrain.to_deployment(
        name=DEPLOYMENTS[retrain.name],
        cron=cron,
        interval=None if cron else (interval or DEFAULT_INTERVAL),
        parameters={
            "request": RetrainingRequest(
                project=str(root), script=script, watch=watch, args=args, argv=argv
            ).model_dump()
        },
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        description=f"Retrain {script} of {root} on every new batch matching {watch}; the "
        "schedule is active while `flor-flows serve` runs (it pauses when serve stops).",
        tags=["flor-flows"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    # `names` is left out: the server accepts defaults missing required fields (it ignores
    # `required` when validating them) but not an empty list, which is below its min_length.
    hindsight = backfill.to_deployment(
        name=DEPLOYMENTS[backfill.name],
        parameters={
            "request": BackfillRequest.model_construct(project=str(root)).model_dump(
                exclude={"names"}
            )
        },
        description=f"Compute new flor.log values over the historical runs of {root}: add "
        "the statements to the code in the project's working tree (or give a git ref as "
        "`source_ref`), fill in their `names` (optionally `where` and `iterations`) and "
        "press Run.",
        tags=["flor-flows"],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )
    return [on_demand, scheduled, hindsight]


def serve(to_serve: list[RunnerDeployment]) -> None:
    """Register the deployments with the Prefect server and run their flow runs until stopped.

    Needs a Prefect server (PREFECT_API_URL): an ephemeral one would vanish with this process.
    """
    from prefect import serve as prefect_serve

    require_server()
    prefect_serve(*to_serve)


def require_server() -> None:
    """Fail with the way out when no Prefect server is configured."""
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise PrefectApiError(
            f"PREFECT_API_URL is not set: serving needs a Prefect server; {START_SERVER}"
        )


def name_value(item: str) -> tuple[str, str]:
    """NAME=VALUE from the command line."""
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {item!r}")
    return name, value


class ScriptArgvParser(argparse.ArgumentParser):
    """A parser whose command line ends, after the first `--`, with the script's own
    arguments: passed through unchanged as `script_argv`, never parsed here."""

    def parse_known_args(  # type: ignore[override]
        self, args: list[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        args = list(sys.argv[1:] if args is None else args)
        cut = args.index("--") if "--" in args else len(args)
        pairs = {flag for a in self._actions if a.type is name_value for flag in a.option_strings}
        namespace, extras = super().parse_known_args(_one_pair_each(args[:cut], pairs), namespace)
        namespace.script_argv = args[cut + 1 :]
        return namespace, extras

    def format_usage(self) -> str:
        return _with_script_args(super().format_usage())

    def format_help(self) -> str:
        return _with_script_args(super().format_help())


def _with_script_args(text: str) -> str:
    """`text` (usage, or help starting with it) with `[-- SCRIPT_ARGS ...]` ending the usage."""
    usage, sep, rest = text.partition("\n\n")
    return f"{usage.rstrip()} [-- SCRIPT_ARGS ...]\n{sep[1:]}{rest}"


def take_script_argv(parser: argparse.ArgumentParser) -> None:
    """Make `parser` (a sub-parser, say) take everything after `--` as `script_argv`."""
    parser.__class__ = ScriptArgvParser  # same state, one method more: argparse makes the
    # sub-parsers itself, and this is the only way to choose their class one by one


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `flor-flows serve` (and of `python -m deployments.serve`)."""
    take_script_argv(parser)
    parser.add_argument(
        "--project-dir",
        type=Path,
        metavar="DIR",
        help="the project (a git repository); default: cwd",
    )
    parser.add_argument(
        "--script", default="train.py", help="training script, relative to the project"
    )
    parser.add_argument(
        "--watch",
        metavar="GLOB",
        default="data/incoming/*.csv",
        help="fsspec glob where new batches arrive, relative to the project "
        "(default: data/incoming/*.csv)",
    )
    when = parser.add_mutually_exclusive_group()
    when.add_argument(
        "--cron", metavar="EXPR", help="retrain on this cron schedule, e.g. '0 3 * * *'"
    )
    when.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="retrain every SECONDS (default: every 10 minutes)",
    )
    add_pairs(parser, "--kwargs", "NAME=VALUE", "hyper-parameters for every run (flor.arg)")


def add_pairs(parser: argparse.ArgumentParser, flag: str, metavar: str, help_: str) -> None:
    """A `--flag NAME=VALUE ...` option of a ScriptArgvParser, parsed into (name, value)
    pairs; its values end at the first argument without `=` (see `_one_pair_each`)."""
    parser.add_argument(
        flag,
        action="append",
        type=name_value,
        default=[],
        metavar=metavar,
        help=help_ + " (several after one flag, up to an argument without =; repeatable)",
    )


def _one_pair_each(args: list[str], flags: set[str]) -> list[str]:
    """`--kwargs a=1 b=2 train.py` as `--kwargs=a=1 --kwargs=b=2 train.py`: the NAME=VALUE
    arguments after a pair option are its values, the first one without `=` (a positional)
    is not. A pair option with no NAME=VALUE after it stays, for argparse to judge."""
    out: list[str] = []
    flag = None
    for at, arg in enumerate(args):
        if flag is not None and "=" in arg and not arg.startswith("-"):
            out.append(f"{flag}={arg}")
            continue
        flag = None
        name, sep, _ = arg.partition("=")
        following = args[at + 1] if at + 1 < len(args) else ""
        if arg in flags and "=" in following and not following.startswith("-"):
            flag = arg  # not kept: each value after it carries it
            continue
        out.append(arg)
        if name in flags and sep:  # --kwargs=a=1 b=2
            flag = name
    return out


def run(args: argparse.Namespace) -> None:
    """Serve with parsed command-line options."""
    from flor_flows.training.request import PROJECT_DIR_ENV

    require_server()  # before building deployments: the first thing a user must fix
    project = (args.project_dir or Path.cwd()).expanduser().resolve()
    # The served flow runs inherit this process's environment: the project of a partial request.
    os.environ[PROJECT_DIR_ENV] = str(project)
    serve(
        deployments(
            project,
            args.script,
            args.watch,
            args.cron,
            args.interval,
            dict(args.kwargs),
            args.script_argv,
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    try:
        run(parser.parse_args(argv))
    except FlorError as exc:
        print(f"serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
