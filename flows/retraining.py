"""The retraining flow: train on every batch that arrived since the last retraining."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run
from prefect.states import Completed, State

from flor_flows.config import load_settings
from flor_flows.training import arrivals
from flor_flows.training.request import RetrainingRequest
from flows.training import batch_name, train


@task(cache_policy=NO_CACHE)
def claim_batches(request: RetrainingRequest, claim_id: str) -> list[str]:
    """Claim the batches that arrived and no retraining has claimed yet (at most max_batches)."""
    settings = load_settings(request.project)
    project = Path(request.project).expanduser().resolve()
    return arrivals.claim(settings, project, request.watch, claim_id, request.max_batches)


@task(cache_policy=NO_CACHE)
def wait_turn(request: RetrainingRequest, claim_id: str) -> None:
    """Wait until the batches claimed before this claim are consumed, so runs chain in order."""
    arrivals.wait_turn(load_settings(request.project), claim_id, request.wait_seconds)


def _rename(batches: list[str]) -> None:
    """Name the flow run after what it claimed: retrain-<batch>, retrain-<n>-batches or
    retrain-no-new-data (its name until then: retrain-checking)."""
    if not batches:
        name = "retrain-no-new-data"
    elif len(batches) == 1:
        name = f"retrain-{batch_name(batches[0])}"
    else:
        name = f"retrain-{len(batches)}-batches"
    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=name)


@flow(name="retrain", flow_run_name="retrain-checking")
def retrain(request: RetrainingRequest = RetrainingRequest()) -> State:  # noqa: B008
    """Claim the new batches, then train on each in arrival order, each run warm-starting.

    The final state's message names each batch with the run that trained on it; its data
    is the list of those runs' uids.
    """
    settings = load_settings(request.project)
    claim_id = str(flow_run.id)
    batches = claim_batches(request, claim_id)
    _rename(batches)
    if not batches:
        return Completed(message="no new data", data=[])
    trained = []
    try:
        wait_turn(request, claim_id)
        for batch in batches:
            uid = train(request.training(batch))
            arrivals.consume(settings, batch, claim_id, uid)
            trained.append(uid)
    finally:
        arrivals.release(settings, claim_id)  # what was not trained on goes back
    runs = ", ".join(
        f"{batch_name(b)} (run {uid})" for b, uid in zip(batches, trained, strict=True)
    )
    return Completed(message=f"trained on {runs}", data=trained)
