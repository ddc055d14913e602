"""The replay cost model on constructed histories: contention, set-up, forks, reads, splits.

No timing here: every figure comes from the model's own constants and the histories built.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from flor_flows.replay import forkserver, importtimes
from flor_flows.replay.costs import (
    CONTENTION,
    READ_BYTES_PER_SECOND,
    READ_PER_WRITE,
    SETUP_CONTENTION,
    SPARE_WRITER_SAVED_SECONDS,
    STARTUP_SECONDS,
    estimate,
    priced,
    slowdown,
    split,
)
from flor_flows.replay.history import RunHistory, _write_rate
from flor_flows.replay.plan import Item


def run(
    uid: str = "r",
    seconds: float = 2.0,
    count: int = 10,
    outside: float = 5.0,
    size: int = 0,
    every: int = 1,
    rate: float | None = None,
) -> RunHistory:
    """A run of `count` iterations of `seconds` each, `outside` s of set-up, a checkpoint of
    `size` bytes every `every` iterations (and after the last), written at `rate` bytes/s."""
    marks = {i for i in range(count) if (i + 1) % every == 0} | {count - 1}
    return RunHistory(
        uid=uid,
        code_version="v1",
        entry_script="train.py",
        loop="epoch",
        seconds=dict.fromkeys(range(count), seconds),
        inner={},
        checkpoints=dict.fromkeys(marks, size),
        outside=outside,
        skip_nested=False,
        write_rate=rate,
    )


def item(history: RunHistory, code_version: str | None = None) -> Item:
    """The replay of every iteration of `history` (of `code_version`, default its own)."""
    return Item(
        run_uid=history.uid,
        code_version=code_version or history.code_version,
        entry_script=history.entry_script,
        loop=history.loop,
        iterations=None,
        estimated_seconds=0.0,
        reason="",
    )


@pytest.fixture(autouse=True)
def _forking(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replays fork from fork servers, whatever the host (a test may say otherwise)."""
    monkeypatch.setattr(forkserver, "enabled", lambda: True)


def test_slowdown_shares_the_cores_then_adds_contention() -> None:
    assert slowdown(1, cores=2) == 1.0
    assert slowdown(2, cores=2) == pytest.approx(CONTENTION)  # a core each, plus contention
    assert slowdown(3, cores=2) == pytest.approx(1.5 * CONTENTION)  # 2 cores for 3
    assert slowdown(4, cores=8) == pytest.approx(CONTENTION)
    assert slowdown(16, cores=8) == pytest.approx(2 * CONTENTION)


def test_an_estimate_is_start_up_then_set_up_and_compute_stretched_by_contention() -> None:
    history = run(seconds=2.0, count=10, outside=5.0)
    alone = estimate(history, None)
    assert alone == pytest.approx(STARTUP_SECONDS + 5.0 + 20.0)
    together = estimate(history, None, concurrent=2, cores=2)
    assert together == pytest.approx(STARTUP_SECONDS + 5.0 * SETUP_CONTENTION + 20.0 * CONTENTION)
    four = estimate(history, None, concurrent=4, cores=2)
    assert four == pytest.approx(STARTUP_SECONDS + (5.0 * SETUP_CONTENTION + 20.0 * CONTENTION) * 2)
    # a run-level replay: the set-up (and the final checkpoint's read)
    assert estimate(history, ()) == pytest.approx(STARTUP_SECONDS + 5.0)


def test_a_replay_forked_from_a_ready_server_skips_its_imports_and_its_writer_start() -> None:
    heavy, light = run(outside=5.0), run(outside=0.5)
    saved = estimate(heavy, ()) - estimate(heavy, (), forked=2.0)  # imports of 2 s
    assert saved == pytest.approx(2.0 + SPARE_WRITER_SAVED_SECONDS)
    forked_startup = STARTUP_SECONDS - SPARE_WRITER_SAVED_SECONDS
    assert estimate(light, (), forked=2.0) == pytest.approx(forked_startup)  # all of it
    assert estimate(heavy, (), forked=0.0) == pytest.approx(forked_startup + 5.0)
    two = estimate(heavy, (), concurrent=2, forked=2.0, cores=2)
    assert two == pytest.approx(forked_startup + (5.0 - 2.0) * SETUP_CONTENTION)


def test_what_replays_measured_outside_their_loop_stands_for_start_up_and_set_up() -> None:
    model = run(outside=5.0, count=4, size=100_000_000, rate=100e6)
    measured = RunHistory(**{**vars(model), "replay_outside": {True: 0.3}})
    read = 1.0 * READ_PER_WRITE  # the final checkpoint, as the run wrote it
    assert estimate(measured, (), forked=2.0) == pytest.approx(0.3 + read)
    two = estimate(measured, (3,), concurrent=2, forked=2.0, cores=2)
    assert two == pytest.approx(0.3 * SETUP_CONTENTION + 2.0 * CONTENTION + read)  # from 2's
    # a fresh replay pays the imports a fork skips: none of its kind measured, the model
    assert (
        estimate(measured, ()) == estimate(model, ()) == pytest.approx(STARTUP_SECONDS + 5.0 + read)
    )


def test_reads_go_at_the_speed_the_run_wrote_its_checkpoints() -> None:
    size = 400_000_000
    unknown = run(size=size, count=4)
    measured = run(size=size, count=4, rate=100e6)
    base = STARTUP_SECONDS + 5.0
    # iteration 3 alone: restored from the checkpoint of 2, 3 executes
    assert estimate(unknown, (3,)) == pytest.approx(base + 2.0 + size / READ_BYTES_PER_SECOND)
    assert estimate(measured, (3,)) == pytest.approx(base + 2.0 + 4.0 * READ_PER_WRITE)
    read = RunHistory(**{**vars(measured), "read_rate": 200e6})  # as its replays read them
    assert estimate(read, (3,)) == pytest.approx(base + 2.0 + 2.0)


def test_the_write_rate_is_the_median_over_timed_checkpoints() -> None:
    frame = pd.DataFrame(
        {"bytes": [100, 100, 100, 100], "seconds": [10.0, 1.0, 2.0, 0.0]}  # a warm-up, untimed
    )
    assert _write_rate(frame) == pytest.approx(50.0)
    assert _write_rate(frame.iloc[3:]) is None
    assert _write_rate(frame.iloc[:0]) is None


def test_every_item_forks_and_the_first_of_a_script_waits_for_its_server_to_start() -> None:
    runs = {uid: run(uid, outside=3.0) for uid in "abcd"}
    later = RunHistory(**{**vars(run("e", outside=4.0)), "code_version": "v2"})  # same script
    other = RunHistory(**{**vars(run("f")), "entry_script": "eval.py"})
    history = runs | {"e": later, "f": other}
    items = priced(
        [item(runs[u]) for u in "abcd"] + [item(later, "v2"), item(other)], history, 2, 2
    )
    # no server measured its imports yet: each run's whole set-up is taken for them, and a
    # server's start for a fresh replay's start-up and set-up
    expected = [estimate(history[u], None, concurrent=2, forked=history[u].outside, cores=2) for u in "abcdef"]  # fmt: skip
    assert [i.estimated_seconds for i in items] == pytest.approx(expected)
    starts = [STARTUP_SECONDS + 3.0, 0, 0, 0, 0, STARTUP_SECONDS + 5.0]  # eval.py: its own
    assert [i.server_seconds for i in items] == pytest.approx(starts)
    assert [i.server_guessed for i in items] == [True, False, False, False, False, True]


def test_a_kept_server_is_not_waited_for_and_its_measured_imports_are_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs = {uid: run(uid, outside=5.0) for uid in "ab"}
    other = RunHistory(**{**vars(run("f", outside=5.0)), "entry_script": "eval.py"})
    kept = {runs["a"].entry_script: (4.0, True)}  # its measured imports; it runs
    root = Path("/project")
    monkeypatch.setattr(forkserver, "measured", lambda script, env: kept.get(script.name))
    history = runs | {"f": other}
    items = priced([item(runs["a"]), item(runs["b"]), item(other)], history, 2, 2, root)
    warm = estimate(runs["a"], None, concurrent=2, forked=4.0, cores=2)
    first = estimate(runs["a"], None, concurrent=2, forked=5.0, cores=2)  # eval.py: unmeasured
    assert [i.estimated_seconds for i in items] == pytest.approx([warm, warm, first])
    assert [i.server_seconds for i in items] == [0, 0, STARTUP_SECONDS + 5.0]
    assert [i.server_guessed for i in items] == [False, False, True]
    assert warm - first == pytest.approx(1.0 * SETUP_CONTENTION)  # the set-up it still runs
    kept[runs["a"].entry_script] = (4.0, False)  # it ended since: started again, as measured
    items = priced([item(runs["a"]), item(runs["b"])], runs, 2, 2, root)
    assert [i.server_seconds for i in items] == [4.0, 0]
    assert [i.server_guessed for i in items] == [False, False]  # as measured
    assert [i.estimated_seconds for i in items] == pytest.approx([warm, warm])


def test_import_measures_outlive_the_process_the_last_five_priced_at_their_median(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert importtimes.median(("torch",)) is None
    for seconds in (9.0, 1.0, 3.0, 2.0, 5.0, 4.0):  # 9.0 is not of the last five
        importtimes.record(("torch",), seconds)
    assert importtimes.median(("torch",)) == 3.0
    assert importtimes.median(("torch", "sklearn")) is None  # other libraries: their own
    (path,) = importtimes.directory().iterdir()  # written whole: no partial file is left
    assert json.loads(path.read_text())["measured"] == [1.0, 3.0, 2.0, 5.0, 4.0]

    path.write_text("{half")  # a cache another version or a crash left: a guess, no error
    assert importtimes.median(("torch",)) is None
    importtimes.record(("torch",), 6.0)
    assert importtimes.median(("torch",)) == 6.0


def test_an_unwritable_cache_keeps_no_measure_and_fails_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "cache").write_text("a file where the cache's directory would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    importtimes.record(("torch",), 3.0)
    assert importtimes.median(("torch",)) is None


def test_a_plan_without_its_project_guesses_the_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forkserver, "measured", lambda script, env: (1.0, True))
    runs = {uid: run(uid, outside=5.0) for uid in "ab"}
    items = priced([item(runs["a"]), item(runs["b"])], runs, 2, 2)  # no root: no script
    assert [i.server_guessed for i in items] == [True, False]


def test_without_fork_servers_no_item_is_forked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(forkserver, "enabled", lambda: False)
    runs = {uid: run(uid) for uid in "abc"}
    items = priced([item(r) for r in runs.values()], runs, 1)
    assert [i.estimated_seconds for i in items] == pytest.approx([estimate(runs["a"], None)] * 3)
    assert [i.server_seconds for i in items] == [0, 0, 0]


def test_a_long_run_splits_and_its_segments_carry_contended_estimates() -> None:
    history = run(seconds=10.0, count=10, outside=5.0)
    halves = split([item(history)], {"r": history}, workers=2, cores=2)
    assert [h.iterations for h in halves] == [(0, 1, 2, 3, 4), (5, 6, 7, 8, 9)]
    assert [h.run_level for h in halves] == [False, True]
    # both fork from the server the first waits for: its imports taken for the set-up
    each = STARTUP_SECONDS - SPARE_WRITER_SAVED_SECONDS + 50.0 * CONTENTION
    assert [h.estimated_seconds for h in halves] == pytest.approx([each, each])
    assert [h.server_seconds for h in halves] == [STARTUP_SECONDS + 5.0, 0]  # a fresh one's
    assert each + 5.0 < estimate(history, None, forked=5.0)


def test_no_split_where_reads_or_contention_outweigh_the_halved_compute() -> None:
    short = run(seconds=0.5, count=4, outside=5.0)
    slow = RunHistory(**{**vars(short), "checkpoints": {0: 10**9, 1: 10**9, 3: 10**9}})
    # halving 2 s of compute saves less than a restore of 1 GB costs the second half
    assert [i.iterations for i in split([item(slow)], {"r": slow}, 2, cores=2)] == [None]
    long = run(seconds=10.0, count=10, outside=5.0)
    one_core = split([item(long)], {"r": long}, workers=2, cores=1)  # two on one core
    assert [i.iterations for i in one_core] == [None]
    assert one_core[0].estimated_seconds == pytest.approx(estimate(long, None, forked=5.0))
    free = RunHistory(**{**vars(long), "shortcut": True})  # runs its requested lines only
    assert len(split([item(free)], {"r": free}, workers=2, cores=2)) == 1  # set-up only
    # no set-up, 20 small checkpoints: halving their reads saves less than a process costs
    reads = RunHistory(**{**vars(run(count=20, outside=0.0, size=10**6)), "shortcut": True})
    assert estimate(reads, None) - estimate(reads, tuple(range(10))) > 0  # halves are shorter
    assert len(split([item(reads)], {"r": reads}, workers=2, cores=2)) == 1
    sparse = run(seconds=10.0, count=10, every=100)  # only the final checkpoint: no cut
    assert len(split([item(sparse)], {"r": sparse}, workers=2, cores=2)) == 1


def test_a_split_reprices_the_items_left_whole() -> None:
    long, short = run("a", seconds=10.0, count=10), run("b", seconds=1.0, count=2)
    history = {"a": long, "b": short}
    items = split([item(long), item(short)], history, workers=3, cores=2)
    assert [(i.run_uid, i.iterations) for i in items] == [
        ("a", (0, 1, 2, 3, 4)),
        ("a", (5, 6, 7, 8, 9)),
        ("b", None),
    ]
    repriced = estimate(short, None, concurrent=3, forked=5.0, cores=2)
    assert items[2].estimated_seconds == pytest.approx(repriced)


@pytest.mark.parametrize("seed", range(30))
def test_splits_cover_each_run_once_and_never_lengthen_the_plan(seed: int) -> None:
    rng = random.Random(seed)
    history = {
        uid: run(
            uid,
            seconds=rng.uniform(0.1, 20.0),
            count=rng.randint(1, 12),
            outside=rng.uniform(0.0, 10.0),
            size=rng.randrange(10**9),
            every=rng.randint(1, 4),
            rate=rng.choice([None, 50e6, 500e6]),
        )
        for uid in "abc"[: rng.randint(1, 3)]
    }
    items = [item(h) for h in history.values()]
    workers, cores = rng.randint(1, 6), rng.randint(1, 4)
    got = split(items, history, workers, cores)
    assert len(items) <= len(got) <= max(workers, len(items))
    for uid, h in history.items():
        segments = [i for i in got if i.run_uid == uid]
        covered = [
            n for s in segments for n in (h.iterations if s.iterations is None else s.iterations)
        ]
        assert covered == h.iterations  # in order, each once
        assert [s.run_level for s in segments] == [False] * (len(segments) - 1) + [True]
    unsplit = priced(items, history, workers, cores)
    assert max(i.estimated_seconds for i in got) <= max(i.estimated_seconds for i in unsplit)
