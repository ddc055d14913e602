"""Values the outer loop carries from one iteration to the next outside its checkpoints (an
early-stopping patience counter, the best loss so far, a list of past losses): no checkpoint
restores them, so their replays run every iteration from the first, in one piece, and equal
the new code run from scratch."""

from __future__ import annotations

from pathlib import Path

import pytest

from flor_flows.config import load_settings
from flor_flows.record.replay import Step, from_start
from flor_flows.replay.backfill import BackfillRequest, resolve
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.replay.skipping import carried_state, logged, shortcuts
from tests.conftest import Project, new_project

OLD = """
import argparse
import numpy as np
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=12)
parser.add_argument("--patience", type=int, default=100)
args = parser.parse_args()
rng = np.random.default_rng(0)
X, y = rng.normal(size=(64, 3)), rng.normal(size=64)
w = np.zeros(3)
best_loss, bad_epochs, history = float("inf"), 0, []


def validate(w):
    return float(np.mean((X @ w - y) ** 2))


with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(args.epochs)):
        for i in range(0, 64, 16):
            xb, yb = X[i : i + 16], y[i : i + 16]
            w -= 0.05 * xb.T @ (xb @ w - yb) / 16
        val_loss = validate(w) + 0.05 * np.sin(epoch)  # it wiggles: the counter moves
        history.append(val_loss)
        if val_loss < best_loss:
            best_loss = val_loss
            bad_epochs = 0
        else:
            bad_epochs += 1
        flor.log("val_loss", val_loss)
        if bad_epochs > args.patience:
            break
"""
LOGGED = '        flor.log("val_loss", val_loss)\n'
NEW = (
    OLD.replace(
        LOGGED,
        LOGGED
        + '        flor.log("bad_epochs", bad_epochs)\n        flor.log("best", best_loss)\n',
    )
    + 'flor.log("seen", len(history))\n'
)
NAMES = ("bad_epochs", "best", "seen")


def test_the_names_a_loop_carries_outside_its_checkpoints_are_read_from_the_code() -> None:
    files = {"train.py": NEW}
    assert carried_state(files, ["bad_epochs"]) == {"bad_epochs"}
    assert carried_state(files, ["best"]) == {"best_loss"}
    assert carried_state(files, ["seen"]) == {"history"}  # appended to, read after the loop
    assert carried_state(files, ["val_loss"]) == frozenset()  # bound before it is read
    assert carried_state({"train.py": "x = ("}, ["best"]) == frozenset()


def test_a_replay_from_the_start_runs_every_iteration_up_to_what_it_needs() -> None:
    assert list(from_start((3, 5), 7, run_level=False)) == [
        Step(i, "record" if i in (3, 5) else "silent") for i in range(6)
    ]
    assert [s.iteration for s in from_start((3,), 7, run_level=True)] == list(range(8))
    assert list(from_start(None, 2, run_level=False)) == [Step(i, "record") for i in range(3)]
    assert list(from_start((), 2, run_level=False)) == []


@pytest.fixture(scope="module")
def truth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[float]]:
    project = new_project(tmp_path_factory.mktemp("truth") / "proj")
    project.write("train.py", NEW)
    project.run("train.py")
    frame = project.store().dataframe(list(NAMES))
    values = {name: frame[name].tolist() for name in ("bad_epochs", "best")}
    assert max(values["bad_epochs"]) > 0  # the counter moves: the test can tell
    return values | {"seen": frame["seen"].iloc[:1].tolist()}


def test_replays_of_carried_values_start_at_the_first_iteration(
    truth: dict[str, list[float]], project: Project, tmp_path: Path
) -> None:
    project.write("train.py", OLD)
    commit = project.commit("v1")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    uid = project.store().runs()["run_uid"][0]
    project.write("train.py", NEW)
    # planned as one replay of every epoch, though two could run at once: said why
    (item,) = resolve(BackfillRequest(project=str(project.root), names=list(NAMES))).items
    assert item.iterations is None
    assert item.reason.endswith(
        "from the first iteration: bad_epochs, best_loss, history carried outside checkpoints"
    )
    settings = load_settings(project.root)
    version = prepare_version(project.root, commit, {"train.py": NEW}, NAMES, tmp_path / "v")
    assert version.carried == {"bad_epochs", "best_loss", "history"}
    replay(version, uid, "train.py", settings, NAMES, iterations=(11,), on_output=lambda _: None)
    got = project.store().dataframe(list(NAMES))
    last = got[got["epoch"] == 11].iloc[0]
    assert [last["bad_epochs"], last["best"]] == [truth["bad_epochs"][11], truth["best"][11]]
    assert got["seen"].dropna().unique().tolist() == truth["seen"] == [12]
    assert got["bad_epochs"].notna().sum() == 1  # only the epoch asked for is recorded


ACCUMULATING = """
import torch
import flor_flows as flor
model = torch.nn.Linear(3, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
with flor.checkpointing(model=model, optimizer=optimizer):
    for epoch in flor.loop("epoch", range(3)):
        for i, x in enumerate(torch.ones(10, 4, 3)):
            model(x).sum().backward()
            flor.log("grad", float(model.weight.grad.norm()))
            if (i + 1) % 4 == 0:
                optimizer.step()
                optimizer.zero_grad()
"""


@pytest.mark.parametrize(
    ("source", "carried"),
    [
        (ACCUMULATING, {"gradients"}),  # a step's gradients may reach into the next epoch
        (ACCUMULATING.replace("optimizer.zero_grad()", "pass"), {"gradients"}),  # never reset
        (
            ACCUMULATING.replace("            model(x)", "            optimizer.zero_grad()\n            model(x)"),
            frozenset(),  # reset before every backward pass
        ),
        # the weights too: the next epoch's first step applies what the last one left
        (ACCUMULATING.replace("model.weight.grad.norm()", "model.weight.norm()"), {"gradients"}),
        (ACCUMULATING.replace(".sum().backward()", ".sum()"), frozenset()),  # no backward pass
    ],
)  # fmt: skip
def test_gradients_that_outlive_a_step_are_carried(source: str, carried: set[str]) -> None:
    assert carried_state({"train.py": source}, ["grad"]) == carried


# As real scripts carry state (pytorch/examples' word_language_model, the transfer learning
# tutorial, an early-stopping helper), each with the value it is logged for.
ANNEALED = """
import flor_flows as flor
lr, best = 20.0, None
def train():
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-lr)
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(4)):
        train()
        val_loss = evaluate()
        flor.log("val2", val_loss)
        if best is None or val_loss < best:
            best = val_loss
        else:
            lr /= 4.0
"""
BEST_WEIGHTS = """
import copy
import flor_flows as flor
best_acc, best_wts = 0.0, copy.deepcopy(model.state_dict())
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(4)):
        acc = fit(model)
        if acc > best_acc:
            best_acc, best_wts = acc, copy.deepcopy(model.state_dict())
model.load_state_dict(best_wts)
flor.log("final_wn", model.weight.norm().item())
"""
STOPPER = """
import flor_flows as flor
from helpers import EarlyStopping
stopper = EarlyStopping(patience=3)
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(9)):
        val_loss = fit(model)
        stopper(val_loss, model)
        flor.log("count", stopper.counter)
        if stopper.early_stop:
            break
"""

# A dict of counters the script's own function changes, given as an argument
PASSED = """
import flor_flows as flor
def note(history, loss):
    history.append(loss)
def train(model, state, history):
    loss = fit(model)
    note(history, loss)
    if state["best"] is None or loss < state["best"]:
        state["best"], state["bad"] = loss, 0
    else:
        state["bad"] += 1
state, history = {"best": None, "bad": 0}, []
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(6)):
        train(model, state=state, history=history)
        flor.log("bad2", state["bad"])
        flor.log("seen2", len(history))
"""


@pytest.mark.parametrize(
    ("source", "name", "carried"),
    [
        (PASSED, "bad2", {"state"}),  # changed by the function it is passed to
        (PASSED, "seen2", {"history"}),  # appended to by a function that one passes it to
        (ANNEALED, "val2", {"lr"}),  # the training reads it: every value after it depends on it
        (BEST_WEIGHTS, "final_wn", {"best_wts"}),  # set in the loop, loaded into the model after
        (STOPPER, "count", {"stopper"}),  # an object its call changes
    ],
)
def test_state_real_scripts_carry_is_found(source: str, name: str, carried: set[str]) -> None:
    assert carried_state({"train.py": source}, [name]) == carried


def test_a_name_bound_again_after_the_loop_is_not_carried_by_it() -> None:
    source = """
import flor_flows as flor
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(3)):
        fit(model)
        acc, vl = test(model)
acc, vl = test(model)
flor.log("test_loss", vl)
"""
    assert carried_state({"train.py": source}, ["test_loss"]) == frozenset()
    read_first = source.replace("acc, vl = test(model)\nflor", "flor")  # the loop's last vl
    assert carried_state({"train.py": read_first}, ["test_loss"]) == {"vl"}


def test_a_logger_the_training_reports_to_steers_nothing() -> None:
    source = """
import logging
import flor_flows as flor
log = logging.getLogger("train")
def train():
    for x in data:
        log.info("loss %s", model(x).sum().item())
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(3)):
        train()
        log.info("epoch %d", epoch)
        flor.log("w", model.weight.norm().item())
"""
    assert carried_state({"train.py": source}, ["w"]) == frozenset()


def test_a_statement_in_a_closure_passed_to_the_optimizer_runs_in_the_loop() -> None:
    source = """
import flor_flows as flor
with flor.checkpointing(model=model, optimizer=optimizer):
    for epoch in flor.loop("epoch", range(3)):
        def closure():
            optimizer.zero_grad()
            loss = model(x).sum()
            flor.log("closs", loss.item())
            loss.backward()
            return loss
        optimizer.step(closure)
"""
    assert not logged({"train.py": source}, ["closs"]).run_level_only


def test_an_in_place_update_of_a_part_of_the_model_keeps_the_head_of_the_epoch() -> None:
    source = """
import time
import flor_flows as flor
def train():
    for p in model.parameters():
        p.data.add_(p.grad, alpha=-0.1)
with flor.checkpointing(model=model):
    for epoch in flor.loop("epoch", range(3)):
        t0 = time.time()
        flor.log("w_start", model.weight.norm().item())
        train()
"""
    (shortcut,) = shortcuts({"train.py": source}, ["w_start"])
    assert not shortcut.head  # the epoch's end is not its start: `train()` changes the model
