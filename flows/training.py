"""The training flow: one versioned training run of a project's script, published as tables."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_UI_URL
from prefect.states import Completed, State

from flor_flows import children
from flor_flows.store import open_store
from flor_flows.training import artifacts, launch
from flor_flows.training.request import TrainingRequest
from flor_flows.versioning.code import CodeVersion
from flor_flows.versioning.data import Batch

NO_BATCH = "no batch given: the script reads its own data"


def batch_name(uri: str) -> str:
    """A batch's file name, e.g. 2026-11-03.csv of s3://bucket/incoming/2026-11-03.csv."""
    return uri.rstrip("/").rsplit("/", 1)[-1]


def _run_name() -> str:
    """`train-<script>-<batch file>`, e.g. train-train.py-2026-11-03.csv."""
    request = TrainingRequest.model_validate(flow_run.parameters.get("request") or {})
    return f"train-{request.script}-{batch_name(request.batch or 'no-batch')}"


@task(cache_policy=NO_CACHE)
def snapshot_code(run: children.Launch) -> CodeVersion:
    """Version the project's code as it is now (a commit under a hidden ref)."""
    return launch.snapshot_code(run)


@task(cache_policy=NO_CACHE)
def register_batches(run: children.Launch, request: TrainingRequest) -> dict[str, Batch]:
    """Hash and copy the request's data batches, so the run can be replayed on them."""
    return launch.register_batches(run, request.batches())


@task(cache_policy=NO_CACHE)
def find_warm_start(run: children.Launch) -> str | None:
    """The latest checkpointed run of the same script, to start from; None: from scratch."""
    return launch.warm_start_from(run)


@task(cache_policy=NO_CACHE)
def run_script(
    run: children.Launch,
    request: TrainingRequest,
    code: CodeVersion,
    batches: dict[str, Batch],
    resumed_from: str | None,
) -> children.Outcome:
    """Run the script as a child process, its output as this task's logs; the store agrees
    with how it ended (a script that died before its first flor call gets a failed run)."""
    logger = get_run_logger()
    context = launch.context_of(run, request, code, batches, resumed_from, flow_run.id)
    outcome = children.run(run, context, on_output=logger.info)
    launch.account(run, context, outcome)
    return outcome


@task(cache_policy=NO_CACHE)
def publish(run: children.Launch) -> None:
    """Publish the run's metrics, checkpoints and batches as table artifacts and a chart."""
    store = open_store(run.settings.store_url)
    artifacts.publish(store, run.run_uid, run.settings.project_name, PREFECT_UI_URL.value())


@flow(name="train", flow_run_name=_run_name)
def train(request: TrainingRequest = TrainingRequest()) -> State:  # noqa: B008 - pydantic default
    """Train the project's script (on a new batch, if given); returns the run's uid in the store.

    The final state's message sums the run up (its uid; that it had no batch, if so).
    """
    run = launch.new_launch(request)
    script_started = False
    try:
        if not request.batch:
            get_run_logger().info(NO_BATCH)
        code = snapshot_code(run)
        batches = register_batches(run, request)
        resumed_from = find_warm_start(run) if request.warm_start else None
        script_started = True
        run_script(run, request, code, batches, resumed_from)
    finally:
        launch.settle(run)  # the store has the run's last word; what follows informs Prefect
        if script_started:
            publish(run)  # a failed run's partial logs are published too
    summary = f"run {run.run_uid}" + ("" if request.batch else f"; {NO_BATCH}")
    return Completed(message=summary, data=run.run_uid)
