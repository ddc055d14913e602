"""The run context hand-off and command-line flags."""

from __future__ import annotations

import pytest

from flor_flows.errors import FlorError
from flor_flows.record.context import ReplaySpec, RunContext, split_argv
from flor_flows.record.run import cast
from flor_flows.values import decode, encode


def test_flags_are_split_from_the_script_arguments() -> None:
    rest, pairs = split_argv(
        ["--epochs", "3", "--kwargs", "lr=0.1", "name=a=b", "--data=batch=s3://b/x.csv", "-v"]
    )
    assert rest == ["--epochs", "3", "-v"]
    assert pairs == {"--kwargs": {"lr": "0.1", "name": "a=b"}, "--data": {"batch": "s3://b/x.csv"}}
    with pytest.raises(FlorError, match="NAME=VALUE"):
        split_argv(["--data", "nope"])


def test_context_round_trips_through_the_environment() -> None:
    context = RunContext(
        mode="replay", run_uid="r1", store_url="sqlite:///x.db", kwargs={"lr": "1"},
        replay=ReplaySpec(apply=("g",), iterations=(1, 3), replay_id=4),
    )  # fmt: skip
    assert RunContext.from_env(context.to_env()) == context
    assert RunContext.from_env({}) == RunContext()
    with pytest.raises(FlorError, match="not a valid run context"):
        RunContext.from_env({"FLOR_FLOWS_CONTEXT": "{bad"})


def test_casting_follows_the_default_type() -> None:
    assert cast("a", "3", 1) == 3 and cast("a", "0.5", 1.0) == 0.5 and cast("a", "x", None) == "x"
    assert cast("a", "Yes", False) is True and cast("a", "0", True) is False


@pytest.mark.parametrize("value", [1.5, 3, True, "s", None, [1, {"a": 2}], 2**70, float("inf")])
def test_values_round_trip(value) -> None:
    assert decode(*encode(value)) == value or (
        value == 2**70 and decode(*encode(value)) == str(value)
    )
