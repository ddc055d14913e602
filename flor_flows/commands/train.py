"""`flor-flows train`: one training flow run of a script."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

from flor_flows import errors
from flor_flows.api import ephemeral_defaults, use_api
from flor_flows.commands.inputs import typed_request
from flor_flows.commands.stopping import exit_now
from flor_flows.commands.watching import run_watched
from flor_flows.errors import FlorError, RequestError, TrainingFailed


def cmd_train(args: argparse.Namespace) -> int:
    """One training flow run; prints the run's uid, or its failure (exit code 1)."""
    ephemeral_defaults()
    from flor_flows.training.request import TrainingRequest
    from flows.training import train

    request = typed_request(
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
    state = run_watched(
        lambda: train(request, return_state=True),
        Path(request.project),
        _api_lost,
        "training",
        "the training script was stopped; its run is recorded as failed",
    )
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
        raise RequestError(f"training script {request.script!r} not found in {project}")
    uris = {"batch": request.batch, **request.data} if request.batch else dict(request.data)
    for name, uri in uris.items():
        if "://" in uri:
            continue  # any other filesystem: checked when the flow reads it
        path = Path(request.project) / uri
        if not path.is_file():
            raise RequestError(
                f"--{'batch' if name == 'batch' else 'data ' + name}: {path} is not a file"
            )


def _api_lost(run: Any, down_for: float) -> None:  # noqa: ANN401 - a children.Launch
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
        why = raised_line(error) or error.splitlines()[0]  # the exception, not its header
        print(f"flor-flows: training failed: {why}", file=sys.stderr)
    exit_now(0 if status == "completed" else 1)


# The exception line of a traceback that ends in one of our errors.
FLOR_ERROR_LINE = re.compile(r"flor_flows\.errors\.(\w+): (.+)")


TRACEBACK = "Traceback (most recent call last):"


def raised_line(text: str) -> str:
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
        raise TrainingFailed(f"training failed: {cause}") from cause
    found = FLOR_ERROR_LINE.fullmatch(raised_line(str(cause)))
    kind = getattr(errors, found[1], None) if found else None
    if found and isinstance(kind, type) and issubclass(kind, FlorError):
        raise TrainingFailed(f"training failed: {script} stopped: {found[2]}") from cause
