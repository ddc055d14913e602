"""The flows' forms check what they can before work starts (issues 14.4 and 16.4).

The JSON schemas are those `flor-flows serve` registers, checked with Prefect's own validation
(what its API runs when a run is created from a deployment); the rest is the requests' own
validators, which the flow run's first step (parameter validation) runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prefect.utilities.schema_tools.validation import ValidationError as SchemaError
from prefect.utilities.schema_tools.validation import validate
from pydantic import ValidationError

from deployments.serve import deployments
from flor_flows.record.run import cast
from flor_flows.replay.backfill import BackfillRequest
from flor_flows.training.request import PROJECT_DIR_ENV, RetrainingRequest, TrainingRequest
from flows.training import NO_BATCH
from tests.conftest import Project


@pytest.fixture
def schemas(project: Project) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Per served deployment: its default parameters and its parameters' JSON schema."""
    project.write("train.py", "import flor_flows as flor\n")
    project.commit("train.py")
    served = deployments(project.root, "train.py", "data/incoming/*.csv")
    return {d.name: (d.parameters, d._parameter_openapi_schema.model_dump()) for d in served}


def accepted(deployment: tuple[dict[str, Any], dict[str, Any]], request: dict[str, Any]) -> str:
    """'ok', or the API's reason to refuse a run of `deployment` given `request` fields (the
    server merges the run's parameters over the deployment's, at the top level)."""
    defaults, schema = deployment
    parameters = defaults | {"request": defaults["request"] | request}
    try:
        validate(parameters, schema, raise_on_error=True)
    except SchemaError as exc:
        return str(exc)
    return "ok"


def test_args_accept_numbers_and_booleans(schemas: dict) -> None:
    args = {"lr": 0.01, "epochs": 3, "nesterov": True, "optimizer": "sgd"}
    for name in ("on-demand", "scheduled"):
        assert accepted(schemas[name], {"args": args}) == "ok", name
        assert "request.args.lr" in accepted(schemas[name], {"args": {"lr": None}})
    # ... and become the text `--kwargs` gives, which flor.arg casts to its default's type.
    request = TrainingRequest(project=".", args=args)
    assert request.args == {"lr": "0.01", "epochs": "3", "nesterov": "true", "optimizer": "sgd"}
    assert cast("lr", request.args["lr"], 0.1) == 0.01
    assert cast("nesterov", request.args["nesterov"], False) is True
    assert RetrainingRequest(project=".", args={"lr": 1e-05}).args == {"lr": "1e-05"}


@pytest.mark.parametrize(
    ("deployment", "request_fields", "field"),
    [
        ("on-demand", {"args": {"learning rate": 0.1}}, "request.args"),
        ("on-demand", {"data": {"val-set": "v.csv"}}, "request.data"),
        ("on-demand", {"script": "train.sh"}, "request.script"),
        ("scheduled", {"args": {"1lr": 0.1}}, "request.args"),
        ("scheduled", {"max_batches": 0}, "request.max_batches"),
        ("hindsight", {"names": ["grad norm"]}, "request.names[0]"),
        ("hindsight", {"names": []}, "request.names"),
        ("hindsight", {"names": ["g"], "max_parallel": 0}, "request.max_parallel"),
        ("hindsight", {"names": ["g"], "iterations": ["epoch=first"]}, "request.iterations[0]"),
        ("hindsight", {"names": ["g"], "source_ref": "--output=x"}, "request.source_ref"),
    ],
)
def test_schema_refuses_a_bad_form(
    schemas: dict, deployment: str, request_fields: dict, field: str
) -> None:
    assert f"Validation failed for field {field!r}" in accepted(schemas[deployment], request_fields)


def test_schema_accepts_good_forms(schemas: dict) -> None:
    good = {"names": ["grad_norm"], "iterations": ["epoch=0,3-5"], "source_ref": "main~1"}
    assert accepted(schemas["hindsight"], good) == "ok"
    assert accepted(schemas["on-demand"], {"data": {"val_set": "v.csv"}}) == "ok"


def refusal(data: dict[str, Any]) -> tuple[str, str]:
    """The one field a request's validation refused, and why."""
    with pytest.raises(ValidationError) as err:
        BackfillRequest.model_validate(data)
    (error,) = err.value.errors()
    return ".".join(map(str, error["loc"])), error["msg"]


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ("acc <", "'acc <' is not an expression"),
        ("len(x) > 1", "function calls cannot be used"),
    ],
)
def test_bad_where_is_refused_in_the_forms_words(project: Project, where: str, why: str) -> None:
    field, message = refusal({"project": str(project.root), "names": ["g"], "where": where})
    assert field == "where" and message.startswith(why)
    assert "--where" not in message and "\n" not in message


def test_bad_iterations_are_refused_in_the_forms_words(project: Project) -> None:
    request = {"project": str(project.root), "names": ["g"], "iterations": ["epoch=3-1"]}
    assert refusal(request) == ("iterations", "'epoch=3-1': the range 3-1 is empty")


def test_empty_where_is_no_filter(project: Project) -> None:
    request = BackfillRequest(project=str(project.root), names=["g"], where="  ")
    assert request.where is None


def test_partial_request_takes_the_project_from_the_environment(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "not-a-project"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv(PROJECT_DIR_ENV, str(project.root))
    assert BackfillRequest.model_validate({"names": ["g"]}).project == str(project.root)
    assert TrainingRequest.model_validate({"batch": "b.csv"}).project == str(project.root)
    monkeypatch.chdir(project.root)
    monkeypatch.delenv(PROJECT_DIR_ENV)
    assert BackfillRequest.model_validate({"names": ["g"]}).project == "."


def test_partial_request_without_a_project_names_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no git repository here, no FLOR_FLOWS_PROJECT_DIR
    field, message = refusal({"names": ["g"]})
    assert field == "project" and message.startswith("not given")
    assert PROJECT_DIR_ENV in message and str(tmp_path) in message and "\n" not in message
    # The flows' own default request, built at import wherever that happens, stays valid.
    assert TrainingRequest().project == "."


def test_training_form_says_what_happens_without_a_batch() -> None:
    batch = TrainingRequest.model_json_schema()["properties"]["batch"]
    assert "batch" not in TrainingRequest.model_json_schema().get("required", [])
    assert batch["description"].startswith("Optional")
    assert NO_BATCH.startswith("no batch given") and "'no batch given'" in batch["description"]
