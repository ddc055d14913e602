"""The backfill flow reports what it cannot vouch for, touches only what the request needs,
and writes each value once, even with two identical backfills running at the same time."""

from __future__ import annotations

import logging
import multiprocessing
import os
from datetime import timedelta
from types import SimpleNamespace

import pandas as pd
import pytest

from flor_flows.replay.backfill import STATUSES, BackfillRequest
from flor_flows.replay.outcomes import final_state
from flor_flows.store import Store, backfills
from flor_flows.store.leases import lease_holder
from flor_flows.store.sql import now
from flows.backfill import backfill
from tests.conftest import Project

TRAIN = """
import argparse
import flor_flows as flor
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1.0)
args = parser.parse_args()
state = {"w": 0.0}
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(3)):
        state["w"] += args.lr
        flor.log("w", state["w"])
"""
NEW = TRAIN + '        flor.log("w2", state["w"] * 2)\n'
# another entry script of the project, with big state and nothing to do with `w2`
OTHER = """
import flor_flows as flor
state = {"v": 0}
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(2)):
        state["v"] += 1
        flor.log("v", state["v"])
"""


def _replayed(store: Store, name: str) -> list[tuple[str, int, float]]:
    frame = store.query(
        "SELECT r.uid, l.i0, l.num FROM logs l JOIN runs r ON r.id = l.run_id "
        f"WHERE l.name = '{name}' AND l.source = 'replay' ORDER BY r.uid, l.i0"
    )
    return [(u, int(i), float(v)) for u, i, v in frame.itertuples(index=False)]


def test_runs_of_another_script_are_not_applicable(project: Project) -> None:
    project.write("train.py", TRAIN)
    project.write("other.py", OTHER)
    project.commit("two scripts")
    project.run("train.py", "--lr", "0.5")
    project.run("other.py")
    project.write("train.py", NEW)
    state = backfill(BackfillRequest(project=str(project.root), names=["w2"]), return_state=True)
    assert state.is_completed(), state.message
    assert state.message.startswith("1 of 1 runs replayed; 1 not applicable")
    store = project.store()
    statuses = store.query("SELECT run_uid, status FROM backfill_items")["status"].tolist()
    assert sorted(statuses) == ["not applicable", "replayed"]
    # only train.py's run was replayed, with its own --lr 0.5
    assert [v for _, _, v in _replayed(store, "w2")] == [1.0, 2.0, 3.0]
    assert len(store.query("SELECT id FROM replays")) == 1


def test_a_name_in_any_scripts_letters_is_backfilled(project: Project) -> None:
    project.write("train.py", TRAIN)
    project.commit("train")
    project.run("train.py")
    project.write("train.py", TRAIN + '        flor.log("längd_λ", state["w"] * 3)\n')
    request = BackfillRequest(project=str(project.root), names=["längd_λ"])
    state = backfill(request, return_state=True)
    assert state.is_completed() and state.message == "1 of 1 runs replayed", state.message
    assert [v for _, _, v in _replayed(project.store(), "längd_λ")] == [3.0, 6.0, 9.0]


def test_a_replay_that_stores_no_value_is_said_so(project: Project) -> None:
    project.write("train.py", TRAIN)
    project.commit("train")
    project.run("train.py")
    project.run("train.py", "--lr", "60")
    # its statement runs only where w passes 100: in the second run's last two epochs
    big = '        if state["w"] > 100:\n            flor.log("big", state["w"])\n'
    project.write("train.py", TRAIN + big)
    state = backfill(BackfillRequest(project=str(project.root), names=["big"]), return_state=True)
    assert state.is_completed(), state.message
    quiet = project.store().runs().sort_values("started_at")["run_uid"].iloc[0]
    assert state.message.splitlines() == [
        "2 of 2 runs replayed; 1 of them stored no value of the name",
        f"no values: {quiet}: its replay stored no value of big: the statements did not run "
        "in the replayed iterations (a condition never true there, say)",
    ]
    items = project.store().query("SELECT run_uid, status, error FROM backfill_items")
    by_run = {uid: (status, error) for uid, status, error in items.itertuples(index=False)}
    assert by_run[quiet][0] == "replayed" and "stored no value of big" in by_run[quiet][1]
    assert [status for status, _ in by_run.values()] == ["replayed", "replayed"]
    listed = backfills.requests(project.store(), STATUSES).iloc[0]
    assert (listed["replayed"], listed["no values"]) == (1, 1)  # counted apart in the list
    assert [(i, v) for _, i, v in _replayed(project.store(), "big")] == [(1, 120.0), (2, 180.0)]

    # two names, one of which the first run's replay stores no value of
    project.write("train.py", TRAIN + big + '        flor.log("w3", state["w"] * 3)\n')
    request = BackfillRequest(project=str(project.root), names=["w3", "big"], only_missing=False)
    state = backfill(request, return_state=True)
    assert state.is_completed() and state.message.splitlines() == [
        "2 of 2 runs replayed; 1 of them stored no value of some of the names",
        f"no values: {quiet}: its replay stored no value of big: the statements did not run "
        "in the replayed iterations (a condition never true there, say)",
    ]

    # after the training, under a condition never true: no iteration was replayed
    project.write("train.py", TRAIN + 'if state["w"] > 1000:\n    flor.log("huge", 1)\n')
    state = backfill(BackfillRequest(project=str(project.root), names=["huge"]), return_state=True)
    lines = state.message.splitlines()
    assert lines[0] == "2 of 2 runs replayed; 2 of them stored no value of the name"
    assert all(line.endswith("did not run after the loop (a condition never true there, say)") for line in lines[1:]) and len(lines) == 3  # fmt: skip


EVALUATED = """
import flor_flows as flor
state = {"w": 0.0}
def test():
    return state["w"] * 10
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(6)):
        state["w"] += 1.0
        if (epoch + 1) % 3 == 0:
            test()
test()
"""


def test_a_run_level_value_stands_for_no_epoch_of_a_name_also_logged_in_the_loop(
    project: Project,
) -> None:
    project.write("train.py", EVALUATED)
    project.commit("evaluates every third epoch and at the end")
    project.run("train.py")
    logged = EVALUATED.replace(
        "    return state", '    flor.log("val", state["w"] * 10)\n    return state'
    )
    project.write("train.py", logged)
    first = BackfillRequest(project=str(project.root), names=["val"], iterations=["epoch=0,1"])
    assert backfill(first, return_state=True).is_completed()  # epochs 0-1 log none: the end's
    # the end's value is no epoch's: epochs 2 and 5 are still missing, and replayed
    state = backfill(BackfillRequest(project=str(project.root), names=["val"]), return_state=True)
    assert state.is_completed() and state.message == "1 of 1 runs replayed", state.message
    values = project.store().query(
        "SELECT i0, num FROM logs WHERE name = 'val' AND source = 'replay' ORDER BY i0"
    )
    assert [(None if pd.isna(i) else int(i), v) for i, v in values.itertuples(index=False)] == [
        (None, 60.0),  # the end's, from the first backfill
        (2, 30.0),
        (5, 60.0),
    ]
    again = backfill(BackfillRequest(project=str(project.root), names=["val"]), return_state=True)
    assert again.message.startswith("0 replays planned; nothing run; 1 run(s) left out: backfill 2")


def test_runs_an_earlier_attempt_of_the_request_replayed_are_said_left_out(
    project: Project,
) -> None:
    project.write("train.py", TRAIN)
    project.commit("train")
    project.run("train.py")
    project.run("train.py", "--lr", "2")
    first, second = project.store().runs().sort_values("started_at")["run_uid"]
    project.write("train.py", NEW)
    one = BackfillRequest(project=str(project.root), names=["w2"], only_missing=False, runs=[first])
    assert backfill(one, return_state=True).message == "1 of 1 runs replayed"
    # the same request on every run resumes that one: the run it replayed is left out, said so
    every = BackfillRequest(project=str(project.root), names=["w2"], only_missing=False)
    state = backfill(every, return_state=True)
    assert state.message == (
        "1 of 1 runs replayed; 1 run(s) left out: backfill 1, the same request (names, "
        "statements, selection), replayed them already; once it has replayed every run, the "
        "same command with --all replays them all anew"
    )
    assert {uid for uid, _, _ in _replayed(project.store(), "w2")} == {first, second}
    again = backfill(every, return_state=True)  # finished: --all once more is a new request
    assert again.message == "2 of 2 runs replayed"


def test_a_diverged_replay_fails_the_flow_with_the_first_difference(project: Project) -> None:
    noisy = TRAIN.replace(
        'flor.log("w", state["w"])', 'r = __import__("random").random()\n        flor.log("w", r)'
    )
    project.write("train.py", noisy)
    project.commit("logs an unseeded random number")
    project.run("train.py")
    # w2 reads what the epoch computed: the replay runs the epoch, whose `w` comes out different
    project.write("train.py", noisy + '        flor.log("w2", r * 2)\n')
    logged: list[logging.LogRecord] = []
    watch = logging.Handler()
    watch.emit = logged.append  # what the task runs log, after the logger's filters
    logging.getLogger("prefect.task_runs").addHandler(watch)
    try:
        request = BackfillRequest(project=str(project.root), names=["w2"])
        state = backfill(request, return_state=True)
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(watch)
    assert state.is_failed()
    assert state.message.startswith("0 of 1 runs replayed")
    assert "diverged: " in state.message and "w at epoch=0: recorded " in state.message
    # the failed task run is logged in lines that say why, without Prefect's traceback
    failed = [record for record in logged if record.levelno >= logging.ERROR]
    assert failed and all("ReplayDiverged" in record.getMessage() for record in failed)
    assert [record.exc_info for record in failed] == [None] * len(failed)
    item = project.store().query("SELECT status, error FROM backfill_items").iloc[0]
    assert item.status == "diverged" and "w at epoch=0" in item.error
    assert project.store().dataframe(["w2"])["w2"].isna().all()


def _run_backfill(project_dir: str, store_url: str, api: str, barrier, queue) -> None:  # noqa: ANN001
    """One backfill flow run in its own process, started when the other one is."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    os.environ["FLOR_FLOWS_STORE_URL"] = store_url
    with temporary_settings(updates={PREFECT_API_URL: api}):
        barrier.wait(timeout=120)
        state = backfill(BackfillRequest(project=project_dir, names=["w2"]), return_state=True)
    queue.put((state.type.value, state.message))


def test_two_identical_backfills_at_once_write_each_value_once(
    project: Project, postgres_url: str, prefect_api: str
) -> None:
    env = {"FLOR_FLOWS_STORE_URL": postgres_url}
    project.write("train.py", TRAIN)
    project.commit("train")
    for lr in ("0.5", "2"):
        project.run("train.py", "--lr", lr, env=env)
    project.write("train.py", NEW)
    context = multiprocessing.get_context("spawn")
    barrier, queue = context.Barrier(2), context.Queue()
    workers = [
        context.Process(
            target=_run_backfill,
            args=(str(project.root), postgres_url, prefect_api, barrier, queue),
        )
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=280)
    results = [queue.get(timeout=5) for _ in workers]
    assert all(kind == "COMPLETED" for kind, _ in results), results
    store = Store(postgres_url)
    values = _replayed(store, "w2")
    assert sorted(v for _, _, v in values) == [1.0, 2.0, 3.0, 4.0, 8.0, 12.0]  # each once
    assert len(store.query("SELECT id FROM replays")) == 2  # each run replayed by one of them
    replayed = store.query("SELECT status FROM backfill_items")["status"].tolist()
    assert replayed == ["replayed", "replayed"]
    # whichever backfill came second found the runs replayed, or left them to the first
    assert any("2 of 2 runs replayed" in message for _, message in results)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_lease_keeps_a_second_holder_off_until_released_or_gone(
    project: Project, postgres_url: str, backend: str
) -> None:
    store = Store(project.store_url if backend == "sqlite" else postgres_url)
    backfill_id = store.backfill_id("key", ["w2"])
    until = now() + timedelta(minutes=10)
    first, second = lease_holder("flow-a"), lease_holder("flow-b")
    assert store.lease_backfill(backfill_id, ["r1", "r2"], first, until) == {}
    assert store.lease_backfill(backfill_id, ["r2", "r3"], second, until) == {"r2": first}
    store.release_backfill(backfill_id, first)
    assert store.lease_backfill(backfill_id, ["r1", "r2"], second, until) == {}
    # a holder of this host whose process is gone loses its leases at once
    gone = second.replace(f":{os.getpid()}:", ":999999999:")
    store.release_backfill(backfill_id, second)
    assert store.lease_backfill(backfill_id, ["r1"], gone, until) == {}
    assert store.lease_backfill(backfill_id, ["r1"], first, until) == {}
    # an expired lease is free
    assert store.lease_backfill(backfill_id, ["r9"], second, now() - timedelta(seconds=1)) == {}
    assert store.lease_backfill(backfill_id, ["r9"], first, until) == {}


def test_the_final_message_counts_runs_not_statuses() -> None:
    items = [SimpleNamespace(run_uid=uid) for uid in ("a", "b", "c", "d", "e", "f")]
    outcomes = {
        "a": ("replay failed", "boom"),
        "b": ("replay failed", "boom"),
        "c": ("diverged", "loss at 3"),
        "d": ("not applicable", "eval.py logs none of x"),
        "e": ("no values", "its replay stored no value of x"),
    }
    resolved = SimpleNamespace(items=items, names=("x",), left_out=lambda: None)
    state = final_state(resolved, outcomes, {})
    assert state.is_failed()
    assert state.message.splitlines() == [
        "2 of 5 runs replayed; 1 of them stored no value of the name; 1 not applicable "
        "(their scripts log none of the names)",
        "replay failed: a: boom",
        "replay failed: b: boom",
        "diverged: c: loss at 3",
        "no values: e: its replay stored no value of x",
    ]
