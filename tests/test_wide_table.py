"""The wide table: repeated values in one loop context, forward beside replay, diverged replays.

Rows are written through `Store` exactly as the writer process writes them
(`flor_flows/record/writer.py`), into a real SQLite store.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flor_flows import values
from flor_flows.record import frames
from flor_flows.store import Store
from flor_flows.store.query import wide_table

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ctx(*path: tuple[str, int]) -> frames.Frame:
    """The frame of a loop path, e.g. ctx(("epoch", 1), ("step", 0)); ctx() is run level."""
    frame = frames.ROOT
    for loop, iteration in path:
        frame = frames.child(frame, loop, iteration, None)
    return frame


def start(store: Store, uid: str, minute: int, project: str = "p") -> int:
    project_id = store.project_id(project, Path("/nowhere"))
    started = T0 + timedelta(minutes=minute)
    return store.start_run(
        uid=uid, project_id=project_id, entry_script="train.py", started_at=started
    )


def log(
    store: Store,
    run_id: int,
    entries: list[tuple[frames.Frame, str, Any]],
    replay_id: int | None = None,
) -> None:
    """One flush of (frame, name, value) records, in logging order, as `Session.write` does."""
    source = "forward" if replay_id is None else "replay"
    rows = [
        (
            run_id,
            name,
            source,
            frame.ctx_id,
            store.signature_id(frame.names) if frame.names else None,
            *values.encode(value),
            replay_id,
            *frame.path,
        )
        for frame, name, value in entries
    ]
    store.write(run_id, logs=rows)


def replay(store: Store, run_id: int, entries: list, status: str = "completed") -> None:
    replay_id = store.start_replay(run_id)
    log(store, run_id, entries, replay_id)
    store.finish_replay(replay_id, status)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    yield store
    store.engine.dispose()


def cells(frame: pd.DataFrame, *columns: str) -> list[list[Any]]:
    """Rows of `columns` as plain Python lists, missing values as None."""
    out = frame[list(columns)].astype(object)
    return out.where(out.notna(), None).values.tolist()


def test_a_name_logged_three_times_per_epoch_keeps_every_value(store: Store) -> None:
    run = start(store, "r1", 0)
    entries = []
    for epoch in range(2):
        here = ctx(("epoch", epoch))
        for batch_loss in (3.0, 1.0, 2.0):  # logging order, not value order, gives seq
            entries.append((here, "loss", batch_loss + 10 * epoch))
        entries.append((here, "acc", 0.5 + epoch / 10))
    log(store, run, entries[:4])  # two flushes: order is by write, across flushes
    log(store, run, entries[4:])
    store.finish_run(run, "completed")

    df = store.dataframe(["loss", "acc"])
    assert list(df.columns)[-4:] == ["epoch", "seq", "loss", "acc"]
    assert df["seq"].dtype == "int64"
    assert cells(df, "epoch", "seq", "loss", "acc") == [
        [0, 0, 3.0, 0.5],
        [0, 1, 1.0, 0.5],
        [0, 2, 2.0, 0.5],
        [1, 0, 13.0, 0.6],
        [1, 1, 11.0, 0.6],
        [1, 2, 12.0, 0.6],
    ]
    reordered = store.dataframe(["acc", "loss"])
    pd.testing.assert_frame_equal(df, reordered[df.columns])
    # The epoch-level name alone repeats nowhere: one row per epoch, as before.
    assert cells(store.dataframe(["acc"]), "epoch", "acc") == [[0, 0.5], [1, 0.6]]


def test_run_level_values_and_repeats(store: Store) -> None:
    run = start(store, "r1", 0)
    entries: list = [(ctx(), "lr", 0.1)]
    entries += [(ctx(), "warmup", w) for w in (7, 8)]  # repeated at run level
    for epoch in range(2):
        entries += [(ctx(("epoch", epoch)), "loss", float(epoch * 10 + b)) for b in range(3)]
        entries.append((ctx(("epoch", epoch)), "acc", epoch / 10))
    log(store, run, entries)
    store.finish_run(run, "completed")

    df = store.dataframe(["lr", "loss"])  # a single run-level value on every seq row
    assert cells(df, "epoch", "seq", "lr", "loss") == [
        [0, 0, 0.1, 0.0],
        [0, 1, 0.1, 1.0],
        [0, 2, 0.1, 2.0],
        [1, 0, 0.1, 10.0],
        [1, 1, 0.1, 11.0],
        [1, 2, 0.1, 12.0],
    ]
    # Repeated run-level values keep their own rows; single ones still broadcast.
    df = store.dataframe(["lr", "warmup", "acc"])
    assert cells(df, "epoch", "seq", "lr", "warmup", "acc") == [
        [None, 0, 0.1, 7, None],
        [None, 1, 0.1, 8, None],
        [0, 0, 0.1, None, 0.0],
        [1, 0, 0.1, None, 0.1],
    ]
    assert cells(store.dataframe(["warmup", "lr"]), "seq", "warmup", "lr") == [
        [0, 7, 0.1],
        [1, 8, 0.1],
    ]


def test_forward_and_replayed_repeats_share_rows(store: Store) -> None:
    run = start(store, "r1", 0)
    forward: list = []
    for epoch in range(2):
        here = ctx(("epoch", epoch))
        forward += [(here, "loss", float(epoch * 10 + b)) for b in range(3)]
        forward.append((here, "acc", 0.5 + epoch / 10))
    log(store, run, forward)
    store.finish_run(run, "completed")
    replayed: list = []
    for epoch in range(2):
        here = ctx(("epoch", epoch))
        batches = 3 if epoch == 0 else 2  # a replay may log fewer values than the run did
        replayed += [(here, "loss", 100.0 + epoch * 10 + b) for b in range(batches)]
        replayed += [(here, "grad_norm", 1000.0 + epoch * 10 + b) for b in range(batches)]
        replayed.append((here, "acc", 0.9))
    replay(store, run, replayed)

    df = store.dataframe(["loss", "acc", "grad_norm"])
    assert list(df.columns)[-7:] == [
        "epoch",
        "seq",
        "loss",
        "loss@replay",
        "acc",
        "acc@replay",
        "grad_norm",
    ]
    assert cells(df, "epoch", "seq", "loss", "loss@replay", "acc", "acc@replay", "grad_norm") == [
        [0, 0, 0.0, 100.0, 0.5, 0.9, 1000.0],
        [0, 1, 1.0, 101.0, 0.5, 0.9, 1001.0],
        [0, 2, 2.0, 102.0, 0.5, 0.9, 1002.0],
        [1, 0, 10.0, 110.0, 0.6, 0.9, 1010.0],
        [1, 1, 11.0, 111.0, 0.6, 0.9, 1011.0],
        [1, 2, 12.0, None, 0.6, 0.9, None],
    ]


def test_a_cell_with_only_a_replayed_value_shows_it(store: Store) -> None:
    run = start(store, "r1", 0)
    log(store, run, [(ctx(("epoch", 0)), "loss", float(b)) for b in range(2)])
    store.finish_run(run, "completed")
    replayed = [(ctx(("epoch", 0)), "loss", 40.0 + b) for b in range(3)]  # one more than forward
    replayed += [(ctx(("epoch", 1)), "loss", 50.0 + b) for b in range(2)]  # no forward values
    replay(store, run, replayed)
    df = store.dataframe(["loss"])
    assert cells(df, "epoch", "seq", "loss", "loss@replay") == [
        [0, 0, 0.0, 40.0],
        [0, 1, 1.0, 41.0],
        [0, 2, 42.0, 42.0],
        [1, 0, 50.0, 50.0],
        [1, 1, 51.0, 51.0],
    ]


def test_no_seq_column_when_nothing_repeats(store: Store) -> None:
    run = start(store, "r1", 0)
    entries: list = [(ctx(), "lr", 0.1)]
    for epoch in range(2):
        entries += [(ctx(("epoch", epoch), ("step", s)), "loss", epoch + s / 10) for s in range(2)]
        entries.append((ctx(("epoch", epoch)), "acc", epoch / 10))
    log(store, run, entries)
    store.finish_run(run, "completed")
    replay(store, run, [(ctx(("epoch", 0)), "acc", 0.7)])  # one forward + one replayed: no repeat
    other = start(store, "r2", 1, project="q")  # repeats, but in a run not shown below
    log(store, other, [(ctx(("epoch", 0)), "acc", a) for a in (1.0, 2.0)])
    store.finish_run(other, "completed")

    assert "seq" not in store.dataframe(["acc"], uids=["r1"]).columns
    df = store.dataframe(["loss", "acc", "lr"], project="p")
    assert "seq" not in df.columns
    assert list(df.columns)[-6:] == ["epoch", "step", "loss", "acc", "acc@replay", "lr"]
    assert cells(df, "epoch", "step", "loss", "acc", "acc@replay", "lr") == [
        [0, 0, 0.0, 0.0, 0.7, 0.1],
        [0, 1, 0.1, 0.0, 0.7, 0.1],
        [1, 0, 1.0, 0.1, None, 0.1],
        [1, 1, 1.1, 0.1, None, 0.1],
    ]
    everything = store.dataframe(["acc"])  # run r2 repeats: now there is a seq column
    assert cells(everything, "run_uid", "epoch", "seq", "acc") == [
        ["r1", 0, 0, 0.0],
        ["r1", 1, 0, 0.1],
        ["r2", 0, 0, 1.0],
        ["r2", 0, 1, 2.0],
    ]


def test_values_of_a_diverged_replay_are_hidden_unless_asked_for(store: Store) -> None:
    run = start(store, "r1", 0)
    log(store, run, [(ctx(("epoch", e)), "loss", float(e)) for e in range(2)])
    store.finish_run(run, "completed")
    replay(store, run, [(ctx(("epoch", 0)), "grad_norm", 1.0)])
    diverged = [(ctx(("epoch", 1)), "grad_norm", 2.0), (ctx(("epoch", 1)), "loss", 9.0)]
    replay(store, run, diverged, status="diverged")

    hidden = wide_table(store.engine, ["loss", "grad_norm"])
    assert "loss@replay" not in hidden.columns
    assert cells(hidden, "epoch", "loss", "grad_norm") == [[0, 0.0, 1.0], [1, 1.0, None]]
    shown = wide_table(store.engine, ["loss", "grad_norm"], include_diverged=True)
    assert cells(shown, "epoch", "loss", "loss@replay", "grad_norm") == [
        [0, 0.0, None, 1.0],
        [1, 1.0, 9.0, 2.0],
    ]
    only = wide_table(store.engine, ["grad_norm"], uids=["r1"])
    assert cells(only, "epoch", "grad_norm") == [[0, 1.0]]
    assert math.isclose(
        wide_table(store.engine, ["grad_norm"], include_diverged=True)["grad_norm"].sum(), 3.0
    )
