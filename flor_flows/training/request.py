"""The typed parameters of the training flows: the form the Prefect UI renders."""

from __future__ import annotations

from pydantic import BaseModel, Field


class TrainingRequest(BaseModel):
    """One training run of a project's script on a new data batch."""

    project: str = Field(
        ".", description="Path of the project: a git repository (or a folder inside one)."
    )
    script: str = Field("train.py", description="The training script, relative to the project.")
    batch: str | None = Field(
        None,
        description="URI of the new data batch (any fsspec URL; relative paths are taken from "
        "the project). The script reads it through flor.data('batch', ...). Leave it empty "
        "for a script that reads its own data.",
    )
    data: dict[str, str] = Field(
        default_factory=dict,
        description="Other data batches by name, for the script's flor.data(name, ...) calls.",
    )
    args: dict[str, str] = Field(
        default_factory=dict,
        description="Hyper-parameters by name, as with --kwargs name=value (flor.arg).",
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


class RetrainingRequest(BaseModel):
    """Retrain on whatever arrived at a watched location since the last retraining."""

    project: str = Field(".", description=TrainingRequest.model_fields["project"].description)
    script: str = Field("train.py", description=TrainingRequest.model_fields["script"].description)
    watch: str = Field(
        "data/incoming/*.csv",
        description="Where new batches arrive: an fsspec glob (local folder or object store), "
        "relative paths taken from the project. Each batch is trained on exactly once, "
        "in arrival order.",
    )
    args: dict[str, str] = Field(
        default_factory=dict, description=TrainingRequest.model_fields["args"].description
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
