"""The typed parameters of the flows: the forms the Prefect UI renders and the API checks.

What a JSON schema can say (name patterns, bounds, value types) is in the fields, so the
Prefect server refuses a bad form before a flow run exists; what only our compilers can judge
(a `where` filter, say) is checked by validators, which run as the flow run's first step and
fail it with one line naming the field.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from flor_flows.config import find_root
from flor_flows.errors import FlorError, NotAGitRepository

PROJECT_DIR_ENV = "FLOR_FLOWS_PROJECT_DIR"
# A Python identifier's shape, in any script's letters (as flor.log takes them): a letter or
# _, then letters, digits and _. (The Prefect UI's forms check it with ASCII `\w`.)
NAME_PATTERN = r"^[^\W\d]\w*$"
SCRIPT_PATTERN = r"\.py$"

# A flor.arg / flor.data / flor.log name: identifier-like, as --where and the wide table need.
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
# The schema of a dict keyed by `Name`: its keys are `patternProperties`, and no other key.
BY_NAME: dict[str, Any] = {"additionalProperties": False}


def arg_text(value: Any) -> Any:  # noqa: ANN401 - whatever the form sent
    """A hyper-parameter as the text `--kwargs name=value` gives the script (flor.arg casts
    it to its default's type): numbers as Python writes them, booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value  # a string stays; anything else fails as "not a string"


# A hyper-parameter's value: a string, number or boolean in the form, its text in the request.
ArgValue = Annotated[
    str,
    BeforeValidator(arg_text),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]}),
]


def default_project() -> str:
    """FLOR_FLOWS_PROJECT_DIR where set (`flor-flows serve` sets it for its flow runs, the
    work-pool recipe through the job's environment), else the working directory."""
    return os.environ.get(PROJECT_DIR_ENV) or "."


def form_words(error: FlorError, flag: str) -> str:
    """A compiler's error about a CLI option (`--where ...`), without the option's name: the
    field's name goes before it (`where: ...`), in the form's words."""
    return str(error).removeprefix(flag).lstrip(": ")


class ProjectRequest(BaseModel):
    """A request about one project. Prefect merges a run's parameters with the deployment's
    at the top level only, so a partial request loses the deployment's `project`: it then
    defaults to FLOR_FLOWS_PROJECT_DIR, else to the working directory if that is a project."""

    project: str = Field(
        default_factory=default_project,
        description="Path of the project: a git repository (or a folder inside one). Default: "
        f"${PROJECT_DIR_ENV} where the flow runs, else its working directory.",
    )

    @model_validator(mode="before")
    @classmethod
    def _default_project(cls, data: Any) -> Any:  # noqa: ANN401 - the raw input
        # Only a request given as fields: the flows' own default request (built at import,
        # from no fields at all) must not depend on where they are imported.
        if not isinstance(data, dict) or not data or data.get("project"):
            return data
        project = default_project()
        if project == "." and not _in_project(Path.cwd()):
            project = None  # refused below, naming the field
        return data | {"project": project}

    @field_validator("project", mode="before")
    @classmethod
    def _project_given(cls, value: Any) -> Any:  # noqa: ANN401 - the raw input
        if value is None:
            raise PydanticCustomError(
                "project_missing",
                "not given, and {env} is not set and the working directory {cwd} is not "
                "inside a git repository: give the project's path",
                {"env": PROJECT_DIR_ENV, "cwd": str(Path.cwd())},
            )
        return value


def _in_project(path: Path) -> bool:
    try:
        find_root(path)
    except NotAGitRepository:
        return False
    return True


class TrainingRequest(ProjectRequest):
    """One training run of a project's script on a new data batch."""

    script: str = Field(
        "train.py",
        pattern=SCRIPT_PATTERN,
        description="The training script (a .py file), relative to the project.",
    )
    batch: str | None = Field(
        None,
        description="Optional: URI of the new data batch (any fsspec URL; relative paths are "
        "taken from the project), which the script reads through flor.data('batch', ...). "
        "Without one the script trains on the data it reads itself (its own default file): "
        "the run's log and final message then say 'no batch given'.",
    )
    data: dict[Name, str] = Field(
        default_factory=dict,
        json_schema_extra=BY_NAME,
        description="Other data batches by name, for the script's flor.data(name, ...) calls.",
    )
    args: dict[Name, ArgValue] = Field(
        default_factory=dict,
        json_schema_extra=BY_NAME,
        description="Hyper-parameters by name (flor.arg): strings, numbers or true/false, "
        "as with --kwargs name=value.",
    )
    argv: list[str] = Field(
        default_factory=list,
        description="The script's own command-line arguments, e.g. ['--epochs', '3'].",
    )
    warm_start: bool = Field(
        True,
        description="Start from the final checkpoint of the latest successful run of this "
        "script (the script loads it with flor.warm_start).",
    )

    def batches(self) -> dict[str, str]:
        """Every data batch of the run by name, `batch` included."""
        return self.data | ({"batch": self.batch} if self.batch else {})


class RetrainingRequest(ProjectRequest):
    """Retrain on whatever arrived at a watched location since the last retraining."""

    script: str = Field(
        "train.py",
        pattern=SCRIPT_PATTERN,
        description=TrainingRequest.model_fields["script"].description,
    )
    watch: str = Field(
        "data/incoming/*.csv",
        min_length=1,
        description="Where new batches arrive: an fsspec glob (local folder or object store), "
        "relative paths taken from the project. Each batch is trained on exactly once, "
        "in arrival order.",
    )
    args: dict[Name, ArgValue] = Field(
        default_factory=dict,
        json_schema_extra=BY_NAME,
        description=TrainingRequest.model_fields["args"].description,
    )
    argv: list[str] = Field(
        default_factory=list, description=TrainingRequest.model_fields["argv"].description
    )
    warm_start: bool = Field(
        True, description=TrainingRequest.model_fields["warm_start"].description
    )
    max_batches: int = Field(
        10, ge=1, description="At most this many new batches per retraining run."
    )
    wait_seconds: float = Field(
        3600,
        ge=0,
        description="How long to wait for an overlapping earlier retraining run to finish "
        "the batches that arrived before ours (training stays in arrival order).",
    )

    def training(self, batch: str) -> TrainingRequest:
        """The training request for one arrived batch."""
        return TrainingRequest(
            project=self.project,
            script=self.script,
            batch=batch,
            args=self.args,
            argv=self.argv,
            warm_start=self.warm_start,
        )
