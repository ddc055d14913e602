"""The retraining flow: train on every batch that arrived since the last retraining."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, State

from flor_flows.config import load_settings
from flor_flows.training import arrivals
from flor_flows.training.request import RetrainingRequest
from flows.training import train


@task(cache_policy=NO_CACHE)
def claim_batches(request: RetrainingRequest, claim_id: str) -> list[str]:
    settings = load_settings(request.project)
    project = Path(request.project).expanduser().resolve()
    return arrivals.claim(settings, project, request.watch, claim_id, request.max_batches)


@task(cache_policy=NO_CACHE)
def wait_turn(request: RetrainingRequest, claim_id: str) -> None:
    arrivals.wait_turn(load_settings(request.project), claim_id, request.wait_seconds)


@flow(name="retrain")
def retrain(request: RetrainingRequest = RetrainingRequest()) -> list[str] | State:  # noqa: B008
    """Claim the new batches, then train on each in arrival order, each run warm-starting."""
    settings = load_settings(request.project)
    claim_id = str(flow_run.id)
    batches = claim_batches(request, claim_id)
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
    return trained
