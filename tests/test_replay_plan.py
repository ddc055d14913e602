"""Replay planning: the safe where language, --iter, and plans over runs recorded for real."""

from __future__ import annotations

import ast
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from flor_flows.config import load_settings
from flor_flows.errors import FlorError
from flor_flows.replay import plan as planning
from flor_flows.replay.costs import (
    READ_PER_WRITE,
    SETUP_CONTENTION,
    SPARE_WRITER_SAVED_SECONDS,
    STARTUP_SECONDS,
    slowdown,
)
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.replay.history import _measured, _outside, _write_rate, assemble
from flor_flows.replay.plan import format_plan, plan
from flor_flows.replay.selection import Selection, compact, parse_iter
from flor_flows.replay.where import parse_where
from flor_flows.store import Store
from flor_flows.store import history as reads
from flor_flows.store.schema import Replay
from tests.conftest import Project, git

# -- where ------------------------------------------------------------------------------
FRAME = pd.DataFrame(
    {
        "seed": [1, 2, 3, None],
        "name": ["a", None, "c", "d"],
        "acc": [0.1, 0.5, np.nan, 0.9],
        "step": pd.array([0, 1, None, 3], dtype="Int64"),
    }
)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("seed >= 2", [False, True, True, False]),
        ("seed != 2", [True, False, True, False]),  # a missing value never compares true
        ("not seed == 2", [True, False, True, False]),  # not(unknown) stays unknown
        ("not (seed == 2 or acc > 0.8)", [True, False, False, False]),
        ("seed in (1, 3)", [True, False, True, False]),
        ("seed not in [1, 3]", [False, True, False, False]),
        ("name == 'a' or acc > 0.8", [True, False, False, True]),
        ("name in ['c', 'd'] and step >= 3", [False, False, False, True]),
        ("-seed < -1.5", [False, True, True, False]),
        ("seed > -1", [True, True, True, False]),
        ("1 < seed <= 3", [False, True, True, False]),
        ("name == None", [False, True, False, False]),
        ("None != acc", [True, True, False, True]),
        ("acc > step", [True, False, False, False]),
        ("(seed == 1\n or step == 3)", [True, False, False, True]),
    ],
)
def test_where_masks_rows_vectorised(expression: str, expected: list[bool]) -> None:
    mask = parse_where(expression).mask(FRAME)
    assert mask.dtype == bool and mask.tolist() == expected


def test_where_names_are_the_columns_read_in_order() -> None:
    assert parse_where("acc > 1 and seed in (1, 2) or -acc < step").names == (
        "acc",
        "seed",
        "step",
    )


def test_where_reports_a_missing_column_or_an_impossible_comparison() -> None:
    with pytest.raises(FlorError, match="no column lr"):
        parse_where("lr < 0.1").mask(FRAME)
    with pytest.raises(FlorError, match="name < 3"):
        parse_where("name < 3").mask(FRAME)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("len(name) > 1", r"function calls cannot be used \(at column 1\)"),
        ("seed > 1 and __import__('os').system('true') == 0", "function calls .* column 14"),
        ("__import__ == 1 or open('/etc/passwd')", "function calls .* column 20"),
        ("seed.real > 1", "attribute access cannot be used"),
        ("().__class__ == 1", "attribute access"),
        ("seed[0] == 1", "subscripts"),
        ("(lambda: 1) == 1", "lambdas"),
        ("[s for s in seed] == 1", "comprehensions"),
        ("f'{seed}' == '1'", "f-strings"),
        ("(x := 1) == 1", r"assignment expressions \(:=\)"),
        ("seed + 1 > 2", "arithmetic"),
        ("(1 if seed else 2) == 1", "conditional expressions"),
        ("(seed > 1) == True", "a comparison used as a value"),
        ("seed is None", "the `is` operator"),
        ("seed", "a column alone is not a condition"),
        ("True", "a literal alone is not a condition"),
        ("seed in seed", "`in` takes a list or tuple of literals"),
        ("seed in {1, 2}", "`in` takes a list or tuple"),
        ("seed > b'1'", "bytes literals"),
        ("seed > ~1", "unary Invert"),
        ("-'a' == seed", "unary minus applies to a number or a column"),
        ("seed < None", "None compares only with == and !="),
        ("name == 'é' and len(name) > 0", "column 17"),  # characters, not UTF-8 bytes
        ("(seed == 1 and\nlen(name) > 0)", "line 2, column 1"),
        ("seed >", "not an expression"),
        ("seed = 1", "not an expression"),
        ("not " * 5000 + "seed == 1", "nested too deeply|not an expression"),
    ],
)
def test_where_refuses_everything_but_comparisons(expression: str, message: str) -> None:
    with pytest.raises(FlorError, match=message):
        parse_where(expression)


@pytest.mark.parametrize("module", ["where", "selection", "plan"])
def test_the_planner_never_evaluates_text(module: str) -> None:
    tree = ast.parse(Path(planning.__file__).with_name(f"{module}.py").read_text())
    called = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert not called & {"eval", "exec", "compile", "__import__"}


# -- iter -------------------------------------------------------------------------------
def test_parse_iter() -> None:
    parsed = parse_iter(["epoch=last", " phase = 0,3-5, 9 ", "round=none", "fold=all"])
    assert parsed == {
        "epoch": Selection("last"),
        "phase": Selection("list", ((0, 0), (3, 5), (9, 9))),
        "round": Selection("none"),
        "fold": Selection("all"),
    }
    assert parsed["phase"].narrow([0, 1, 2, 3, 4, 8, 9, 10]) == (0, 3, 4, 9)
    assert parsed["epoch"].narrow([0, 1, 2]) == (2,) and parsed["epoch"].narrow([]) == ()
    assert parsed["round"].narrow([0, 1]) == () and str(parsed["phase"]) == "0,3-5,9"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("epoch", "expected LOOP="),
        ("=1", "expected LOOP="),
        ("epoch=", "expected LOOP="),
        ("ep och=1", "expected LOOP="),
        ("epoch=first", "'first' is not an iteration"),
        ("epoch=-1", "'-1' is not an iteration"),
        ("epoch=1,,2", "'' is not an iteration"),
        ("epoch=1.5", "not an iteration"),
        ("epoch=" + "9" * 5000, "not an iteration"),
        ("epoch=5-3", "the range 5-3 is empty"),
    ],
)
def test_parse_iter_refuses_bad_input(spec: str, message: str) -> None:
    with pytest.raises(FlorError, match=message):
        parse_iter([spec])


def test_parse_iter_refuses_a_loop_twice() -> None:
    with pytest.raises(FlorError, match="selected twice"):
        parse_iter(["epoch=1", "epoch=last"])


def test_compact() -> None:
    assert compact([7, 0, 1, 2, 3, 4]) == "0-4,7"
    assert compact([5]) == "5" and compact([]) == "" and compact([1, 3, 4]) == "1,3-4"


# -- plans over recorded runs -----------------------------------------------------------
V1 = """
import time
import numpy as np
import flor_flows as flor

seed = flor.arg("seed", 0)
epochs = flor.arg("epochs", 5)
fail_at = flor.arg("fail_at", -1)
np.random.seed(seed)
w = np.zeros(3)
flor.log("init", float(seed))
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(epochs)):
        if epoch == fail_at:
            raise RuntimeError("diverged")
        for step in flor.loop("step", range(3)):
            w += np.random.rand(3)
            flor.log("loss", float(w.sum()))
        time.sleep(0.02)
        flor.log("acc", epoch / 5)
"""
V2 = V1.replace(
    'fail_at = flor.arg("fail_at", -1)\n',
    'fail_at = flor.arg("fail_at", -1)\nmomentum = flor.arg("momentum", 0.5)\n',
).replace(
    '        flor.log("acc", epoch / 5)\n',
    '        flor.log("acc", epoch / 5)\n        flor.log("grad_norm", float(np.linalg.norm(w)))\n',
)
EVERY = {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}


class History:
    """Five runs: seeds 1, 2 (5 epochs), 3 (3 epochs), 5 (fails in epoch 2) of v1; 4 of v2."""

    def __init__(self, project: Project, commits: dict[str, str]) -> None:
        self.project, self.commits = project, commits
        runs = project.store().runs()
        self.uid = dict(zip(runs["seed"], runs["run_uid"], strict=True))
        self.seed = {uid: seed for seed, uid in self.uid.items()}

    def store(self) -> Store:
        return self.project.store()

    def by_seed(self, items: list[planning.Item]) -> dict[int, tuple[int, ...] | None]:
        return {self.seed[item.run_uid]: item.iterations for item in items}

    def copy(self, tmp_path: Path) -> Store:
        """A private copy of the store, to change without disturbing the other tests."""
        path = tmp_path / "store.db"
        source = sqlite3.connect(self.project.root / ".flor-flows" / "store.db")
        target = sqlite3.connect(path)
        source.backup(target)
        source.close()
        target.close()
        return Store(f"sqlite:///{path}")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    root = tmp_path_factory.mktemp("plan") / "proj"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / ".gitignore").write_text(".flor-flows/\n")
    project = Project(root)
    project.write("train.py", V1)
    commits = {"v1": project.commit("v1")}
    for args in (["seed=1"], ["seed=2"], ["seed=3", "epochs=3"]):
        project.run("train.py", "--kwargs", *args, env=EVERY)
    failed = project.run("train.py", "--kwargs", "seed=5", "fail_at=2", env=EVERY, check=False)
    assert "diverged" in failed.stderr
    project.write("train.py", V2)
    commits["v2"] = project.commit("v2")
    project.run("train.py", "--kwargs", "seed=4", env=EVERY)
    return History(project, commits)


def test_every_finished_run_lacking_the_name_is_planned_in_full(history: History) -> None:
    items = plan(history.store(), ["grad_norm"])
    assert history.by_seed(items) == {1: None, 2: None, 3: None, 5: None}  # 4 logged it
    assert {i.code_version for i in items} == {history.commits["v1"]}
    assert all(i.loop == "epoch" and i.entry_script == "train.py" for i in items)
    assert all(i.reason == "missing grad_norm" for i in items)
    failed = next(i for i in items if history.seed[i.run_uid] == 5)
    assert history.store().runs(uids=[failed.run_uid])["status"].tolist() == ["failed"]
    assert plan(history.store(), ["init"]) == []  # every run logged it, at run level
    # the failed run never logged `acc` in the epoch it died in
    assert history.by_seed(plan(history.store(), ["acc"])) == {5: (2,)}


def test_where_reads_args_run_level_values_and_run_columns(history: History) -> None:
    store = history.store()
    assert history.by_seed(plan(store, ["grad_norm"], where="seed == 2")) == {2: None}
    got = plan(store, ["grad_norm"], where=parse_where("init > 1.5 and init < 3.5"))
    assert history.by_seed(got) == {2: None, 3: None}
    assert history.by_seed(plan(store, ["grad_norm"], where="status == 'failed'")) == {5: None}
    assert history.by_seed(plan(store, ["grad_norm"], where="epochs < 5 or seed in [1]")) == {
        1: None,
        3: None,
    }
    # `momentum` exists in v2's run only: the others never satisfy a comparison with it
    with_momentum = plan(store, ["grad_norm"], where="momentum != 0.7", only_missing=False)
    assert history.by_seed(with_momentum) == {4: None}
    assert with_momentum[0].reason == "where matched; replayed even where values exist"


def test_where_on_loop_values_selects_their_outer_iterations(history: History) -> None:
    store = history.store()
    got = plan(store, ["grad_norm"], where="acc >= 0.6 and seed != 3")
    assert history.by_seed(got) == {1: (3, 4), 2: (3, 4)}  # seed 5 failed before epoch 3
    assert got[0].reason == "where matched 3-4; missing grad_norm"
    inner = plan(store, ["grad_norm"], where="step == 2 and loss > 0 and epoch in (0, 4)")
    assert history.by_seed(inner) == {1: (0, 4), 2: (0, 4), 3: (0,), 5: (0,)}
    with pytest.raises(FlorError, match="epoch is a loop"):
        plan(store, ["grad_norm"], where="epoch >= 3")
    with pytest.raises(FlorError, match="lr is neither a logged name nor a run column"):
        plan(store, ["grad_norm"], where="lr < 0.1")


def test_iter_narrows_per_outer_loop(history: History) -> None:
    store = history.store()

    def planned(*specs: str, **kw: Any) -> dict[int, tuple[int, ...] | None]:
        return history.by_seed(plan(store, ["grad_norm"], iters=parse_iter(specs), **kw))

    assert planned("epoch=last") == {1: (4,), 2: (4,), 3: (2,), 5: (2,)}
    assert planned("epoch=none") == {1: (), 2: (), 3: (), 5: ()}
    assert planned("epoch=all") == {1: None, 2: None, 3: None, 5: None}
    assert planned("epoch=1,3-9") == {1: (1, 3, 4), 2: (1, 3, 4), 3: (1,), 5: (1,)}
    assert planned("epoch=7") == {}  # clipped to what each run recorded: nothing
    assert planned("epoch=last", where="seed <= 2") == {1: (4,), 2: (4,)}
    assert planned("epoch=0-1", where="acc > 0.1") == {1: (1,), 2: (1,), 3: (1,), 5: (1,)}
    assert planned("epoch=last", only_missing=False)[4] == (4,)
    with pytest.raises(FlorError, match="step: not the outer loop .*\\(epoch\\)"):
        planned("step=1")


def test_only_missing_skips_what_a_replay_filled_in(history: History, tmp_path: Path) -> None:
    store = history.copy(tmp_path)
    uid = history.uid[1]
    settings = load_settings(history.project.root, store_url=store.url)
    version = prepare_version(
        history.project.root, history.commits["v1"], {"train.py": V2}, ["grad_norm"], tmp_path
    )
    assert not version.refusals
    replay(version, uid, "train.py", settings, ["grad_norm"], (2,), on_output=lambda _: None)
    filled = store.dataframe(["grad_norm"], uids=[uid]).dropna(subset=["grad_norm"])
    assert filled["epoch"].tolist() == [2]

    assert history.by_seed(plan(store, ["grad_norm"]))[1] == (0, 1, 3, 4)
    assert history.by_seed(plan(store, ["grad_norm", "acc"]))[1] == (0, 1, 3, 4)
    assert history.by_seed(plan(store, ["grad_norm"], only_missing=False))[1] is None
    got = plan(store, ["grad_norm", "lr_now"], where="seed == 1")
    assert history.by_seed(got) == {1: None}  # lr_now: logged by no run yet
    assert got[0].reason == "where matched; missing grad_norm, lr_now"
    # a name logged anywhere in the run counts for a run-level replay
    assert 1 not in history.by_seed(plan(store, ["grad_norm"], iters=parse_iter(["epoch=none"])))


def _replay_epoch_2(history: History, store: Store, uid: str, tmp_path: Path) -> None:
    """Replay epoch 2 of run `uid` in V2 (grad_norm), in a fresh process, into `store`."""
    settings = load_settings(history.project.root, store_url=store.url)
    version = prepare_version(
        history.project.root, history.commits["v1"], {"train.py": V2}, ["grad_norm"], tmp_path
    )
    replay(version, uid, "train.py", settings, ["grad_norm"], (2,), on_output=lambda _: None)


def test_replays_measure_their_checkpoint_reads_and_later_plans_price_reads_by_them(
    history: History, tmp_path: Path
) -> None:
    store = history.copy(tmp_path)
    uid, other = history.uid[1], history.uid[2]

    def estimates() -> dict[int, float]:
        items = plan(store, ["grad_norm"], iters=parse_iter(["epoch=3"]), only_missing=False)
        return {history.seed[i.run_uid]: i.estimated_seconds for i in items}

    before = estimates()
    _replay_epoch_2(history, store, uid, tmp_path)
    (measured,) = store.query("SELECT read_bytes, read_seconds FROM replays").itertuples()
    sizes = store.query(
        f"SELECT iteration, bytes FROM checkpoints WHERE run_id = {store.run_id(uid)}"
    ).set_index("iteration")["bytes"]
    assert measured.read_bytes == sizes[1] + sizes[4]  # epoch 2 from 1's; the end from 4's
    assert measured.read_seconds > 0
    rate = measured.read_bytes / measured.read_seconds
    assert reads.read_rates(store, None) == {uid: pytest.approx(rate)}

    after = estimates()  # epoch 3 restores 2's checkpoint and the end's (4's), now at `rate`
    run_id = store.run_id(uid)
    written = store.query(f"SELECT bytes, seconds FROM checkpoints WHERE run_id = {run_id}")
    was = _write_rate(written) / READ_PER_WRITE
    assert after[1] - before[1] == pytest.approx((sizes[2] + sizes[4]) * (1 / rate - 1 / was))
    assert after[history.seed[other]] != before[history.seed[other]]  # the others' median


def test_replays_measure_their_time_outside_the_loop_and_later_plans_take_it_for_their_kind(
    history: History, tmp_path: Path
) -> None:
    store = history.copy(tmp_path)
    uid, other = history.uid[1], history.uid[2]
    _replay_epoch_2(history, store, uid, tmp_path)
    (row,) = store.query(
        "SELECT started_at, ended_at, loop_seconds, forked FROM replays"
    ).itertuples()
    span = (pd.Timestamp(row.ended_at) - pd.Timestamp(row.started_at)).total_seconds()
    assert 0 < row.loop_seconds < span and not row.forked  # a fresh process, no fork server
    spans = reads.replay_spans(store, None)
    assert spans[["run_uid", "entry_script", "forked"]].values.tolist() == [
        [uid, "train.py", False]
    ]
    assert spans["outside"][0] == pytest.approx(span - row.loop_seconds)
    assert spans["concurrent"].tolist() == [1]  # it ran alone

    runs, contexts = reads.candidates(store, None), reads.outer_iterations(store, None)
    found = assemble(
        runs, contexts, reads.checkpoints(store, None), [], reads.loops(store, contexts),
        False, {}, None, spans,
    )  # fmt: skip
    # the replayed run, and the other run of its entry script: that replay's figure, for
    # fresh replays only (a forked one skips the imports a fresh one pays)
    assert found[uid].replay_outside == found[other].replay_outside == {False: spans["outside"][0]}

    # two more replays of the other run: one beside the first, one after both
    for shift in (0.5 * span, 10 * span):
        replay_id = store.start_replay(store.run_id(other))
        store.finish_replay(replay_id, "completed", measured={"loop_seconds": 0.0})
        with store.engine.begin() as conn:
            conn.execute(
                update(Replay)
                .where(Replay.id == replay_id)
                .values(
                    started_at=pd.Timestamp(row.started_at) + pd.Timedelta(seconds=shift),
                    ended_at=pd.Timestamp(row.ended_at) + pd.Timedelta(seconds=shift),
                )
            )
    assert reads.replay_spans(store, None)["concurrent"].tolist() == [2, 2, 1]


def test_a_runs_own_replays_come_before_its_scripts_and_the_latest_count() -> None:
    rows = [("b", "t.py", True, s) for s in (8.0, 1, 2, 3, 4, 5)]  # oldest first
    rows += [("b", "t.py", False, 7.0), ("a", "t.py", True, 9.0)]
    rows = [(*row, 1) for row in rows]  # each alone
    two = slowdown(2, contention=SETUP_CONTENTION)
    rows += [("d", "u.py", True, 2.0 * two, 2)]  # one of two at once: 2.0 s alone
    columns = ["run_uid", "entry_script", "forked", "outside", "concurrent"]
    spans = pd.DataFrame(rows, columns=columns)
    outside = _outside(spans)
    assert _measured(outside, "d", "u.py") == {True: pytest.approx(2.0)}
    assert _measured(outside, "b", "t.py") == {True: 3.0, False: 7.0}  # 8.0 is not of the last 5
    assert _measured(outside, "a", "t.py") == {True: 9.0, False: 7.0}  # fresh: its script's
    assert _measured(outside, "c", "t.py") == {True: 4.0, False: 7.0}  # t.py's last five
    assert _measured(outside, "c", "other.py") == {}
    assert _outside(spans.iloc[:0]) == {}


def test_only_the_chosen_runs_are_planned_and_split(
    history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = history.store()
    split = planning.costs.split
    seen: list[int] = []
    monkeypatch.setattr(planning.costs, "split", lambda items, *a, **k: seen.append(len(items)) or split(items, *a, **k))  # fmt: skip
    chosen = plan(store, ["grad_norm"], only_missing=False, workers=2, only={history.uid[1]})
    assert {item.run_uid for item in chosen} == {history.uid[1]}
    assert seen == [1]  # one run to split among 2 workers, not the 3 candidates


def test_running_runs_are_left_alone(history: History, tmp_path: Path) -> None:
    store = history.copy(tmp_path)
    with store.engine.begin() as conn:  # another host's run, still going
        conn.exec_driver_sql(
            f"UPDATE runs SET status = 'running', host = 'elsewhere' WHERE uid = '{history.uid[2]}'"
        )
    assert history.by_seed(plan(store, ["grad_norm"])) == {1: None, 3: None, 5: None}
    assert plan(store, ["grad_norm"], project="no-such-project") == []


def test_estimates_are_positive_and_grow_with_the_iterations(history: History) -> None:
    store = history.store()

    def seconds(spec: str, seed: int = 1) -> float:
        items = plan(store, ["grad_norm"], iters=parse_iter([spec]), where=f"seed == {seed}")
        return items[0].estimated_seconds

    costs = [seconds(spec) for spec in ("epoch=none", "epoch=0", "epoch=0-1", "epoch=0-3")]
    forked_startup = STARTUP_SECONDS - SPARE_WRITER_SAVED_SECONDS  # forked, its writer ready
    assert forked_startup <= costs[0] < costs[1] < costs[2] < costs[3]
    assert costs[3] - costs[1] >= 2 * 0.02  # two more epochs that each slept 20 ms
    assert seconds("epoch=all") > costs[3]
    # iteration 4 alone: restored from the checkpoint of 3, only 4 itself executes
    assert seconds("epoch=4") < costs[2]


def test_silent_reexecution_is_counted(history: History, tmp_path: Path) -> None:
    store = history.copy(tmp_path)
    run_id = store.run_id(history.uid[1])
    with store.engine.begin() as conn:  # one write rate: the deletion below leaves it as is
        conn.exec_driver_sql(
            f"UPDATE checkpoints SET seconds = bytes / 1e8 WHERE run_id = {run_id}"
        )
    dense = plan(store, ["grad_norm"], iters=parse_iter(["epoch=3"]), where="seed == 1")
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            f"DELETE FROM checkpoints WHERE run_id = {run_id} AND iteration IN (1, 2)"
        )
    sparse = plan(store, ["grad_norm"], iters=parse_iter(["epoch=3"]), where="seed == 1")
    recorded = store.query(
        f"SELECT iteration, seconds FROM contexts WHERE run_id = {run_id} AND depth = 1"
    ).set_index("iteration")["seconds"]
    # restored from the checkpoint of 0 instead of 2 (the same size): 1 and 2 run silently
    extra = sparse[0].estimated_seconds - dense[0].estimated_seconds
    assert extra == pytest.approx(recorded[1] + recorded[2], abs=1e-6)


def test_format_plan(history: History) -> None:
    store = history.store()
    items = plan(store, ["grad_norm"], where="acc >= 0.6 and seed != 3")
    items += plan(store, ["grad_norm"], where="seed == 3")
    items += plan(store, ["grad_norm"], where="seed == 5", iters=parse_iter(["epoch=none"]))
    items = [
        replace(item, server_seconds=2.5 if k == 0 else 0.0, server_guessed=False)
        for k, item in enumerate(items)
    ]
    guessed = format_plan([replace(items[0], server_guessed=True), *items[1:]]).splitlines()
    text = format_plan(items)
    lines = text.splitlines()
    assert lines[0].split() == ["run", "version", "loop", "iterations", "est.", "s", "reason"]
    assert history.uid[1] in lines[1] and history.commits["v1"][:10] in lines[1]
    assert "3-4" in lines[1] and " all " in lines[3] and "none (run level)" in lines[4]
    # the wait for a script's fork server is said apart, and counted
    assert lines[-2] == (
        f"+ 2.5 s before the first replay of {items[0].entry_script}: its fork server imports "
        "the script's libraries, once"
    )
    # unless no server of the script measured its imports here: then it says it guessed
    assert guessed[-2] == (
        lines[-2] + " (a guess from the run's set-up: no fork server of it ran here yet)"
    )
    total = sum(item.estimated_seconds for item in items) + 2.5
    assert lines[-1] == f"4 replay(s), about {total:.1f} s one after another"
    checks = {item.run_uid: "refused: a reason" for item in items[1:]} | {items[0].run_uid: "ok"}
    only = items[0].estimated_seconds + 2.5  # what is refused does not run
    assert format_plan(items, checks).splitlines()[-1] == (
        f"1 replay(s), about {only:.1f} s one after another; 3 will not (refused or not applicable)"
    )
    assert format_plan([]) == "nothing to replay"
    # with 2 at a time: each as soon as a worker is free, none before its server is ready
    timed = [
        replace(item, estimated_seconds=t) for item, t in zip(items, (4, 3, 2, 1), strict=True)
    ]
    assert format_plan(timed, workers=2).splitlines()[-1] == (
        "4 replay(s), about 12.5 s one after another, 7.5 s 2 at a time"
    )
    # the wait for a server only refused replays would fork from is neither said nor counted
    refused = dict.fromkeys((item.run_uid for item in items), "refused: a reason")
    shown = format_plan(items, refused).splitlines()
    assert not [line for line in shown if line.startswith("+ ")]
    assert shown[-1] == (
        "0 replay(s), about 0.0 s one after another; 4 will not (refused or not applicable)"
    )


UNTIMED = """
import flor_flows as flor

for epoch in flor.loop("epoch", range(4)):  # outside flor.checkpointing: no context rows
    for step in flor.loop("step", range(2)):
        flor.log("loss", epoch + step / 2)
    if epoch >= 2:
        flor.log("grad_norm", 1.0)
"""


def test_runs_without_a_checkpointed_loop_are_planned_from_their_values(
    project: Project,
) -> None:
    project.write("train.py", UNTIMED)
    project.write("setup.py", "import flor_flows as flor\nflor.log('init', 1)\n")
    project.commit("untimed")
    project.run("train.py")
    project.run("setup.py")
    store = project.store()
    items = {item.entry_script: item for item in plan(store, ["grad_norm"])}
    assert (items["train.py"].loop, items["train.py"].iterations) == ("epoch", (0, 1))
    assert (items["setup.py"].loop, items["setup.py"].iterations) == (None, None)
    last = plan(store, ["grad_norm"], iters=parse_iter(["epoch=last"]), only_missing=False)
    assert [(i.entry_script, i.iterations) for i in last] == [
        ("train.py", (3,)),
        ("setup.py", None),
    ]
    forked_startup = STARTUP_SECONDS - SPARE_WRITER_SAVED_SECONDS
    assert all(i.estimated_seconds >= forked_startup for i in items.values())
