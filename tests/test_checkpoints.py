"""Checkpoint serialisation and the adaptive policy."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from flor_flows.errors import CheckpointError
from flor_flows.versioning.checkpoints import (
    Adaptive,
    CheckpointStore,
    EveryIteration,
    policy,
    restore,
    serialize,
    snapshot,
)


def test_round_trip_restores_every_kind_in_place_and_the_rngs(tmp_path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    arr, frame = np.arange(4.0), pd.DataFrame({"a": [1.0, 2.0]})
    state, items = {"best": 0.9}, [1, 2]
    objects = {
        "model": net,
        "optimizer": opt,
        "arr": arr,
        "frame": frame,
        "state": state,
        "items": items,
    }
    store = CheckpointStore(str(tmp_path / "ckpts"))
    written = store.write("run1", "epoch", 0, snapshot(objects))
    expected_weight = net.weight.detach().clone()
    expected_rng = (torch.rand(1), np.random.rand(), random.random())

    with torch.no_grad():
        net.weight.zero_()
    opt.state.clear()
    arr[:] = -1
    frame.iloc[:] = 0.0
    state["best"] = 0.0
    items.append(3)
    restore(CheckpointStore.read(written.uri, written.sha256), objects)

    assert torch.equal(net.weight, expected_weight)
    assert len(opt.state) == 2
    assert arr.tolist() == [0.0, 1.0, 2.0, 3.0] and frame["a"].tolist() == [1.0, 2.0]
    assert state == {"best": 0.9} and items == [1, 2]
    assert (torch.rand(1), np.random.rand(), random.random()) == expected_rng
    assert written.bytes == len(CheckpointStore.read(written.uri)) and len(written.sha256) == 64


def test_corrupt_or_incomplete_checkpoints_are_refused(tmp_path) -> None:
    store = CheckpointStore(str(tmp_path))
    written = store.write("r", "epoch", 1, snapshot({"state": {"a": 1}}))
    with pytest.raises(CheckpointError, match="sha256"):
        CheckpointStore.read(written.uri, "0" * 64)
    with pytest.raises(CheckpointError, match=r"no state for \['other'\]"):
        restore(CheckpointStore.read(written.uri), {"other": {}})
    with pytest.raises(CheckpointError, match="immutable int"):
        restore(b"".join(serialize(snapshot({"n": 3}))), {"n": 4})


def test_a_snapshot_is_not_changed_by_later_training(tmp_path) -> None:
    net, state = torch.nn.Linear(2, 1), {"step": 1}
    taken = snapshot({"model": net, "state": state})
    before = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    state["step"] = 99
    restore(b"".join(serialize(taken)), {"model": net, "state": state})
    assert torch.equal(net.weight, before) and state == {"step": 1}


def test_adaptive_policy_bounds_overhead_by_epsilon() -> None:
    cheap = Adaptive(epsilon=0.1)
    assert cheap.should_write(1.0)
    cheap.wrote(0.5)  # the first write pays warm-up
    assert cheap.should_write(1.0)
    cheap.wrote(0.01)
    assert all(cheap.should_write(1.0) for _ in range(5))  # 1% cost: every iteration

    costly = Adaptive(epsilon=0.1)
    written = []
    for iteration in range(40):
        if costly.should_write(1.0):
            costly.wrote(0.5)  # checkpoint costs half an iteration
            written.append(iteration)
    assert written == [0, 1, 6, 11, 16, 21, 26, 31, 36]  # 0.5 s per 5 s of loop = epsilon
    assert EveryIteration().should_write(0.0)


def test_policy_parsing() -> None:
    assert isinstance(policy("every"), EveryIteration)
    assert policy("adaptive").epsilon == pytest.approx(1 / 15)
    assert policy("adaptive:0.2").epsilon == 0.2
    for bad in ("sometimes", "adaptive:x", "adaptive:0", "every:2"):
        with pytest.raises(CheckpointError):
            policy(bad)
