"""Arrivals: batches found at a watched glob, claimed exactly once across concurrent runs."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from flor_flows.config import load_settings
from flor_flows.errors import FlorError
from flor_flows.training import arrivals
from tests.conftest import Project


def _files(project: Project, count: int) -> list[Path]:
    incoming = project.root / "incoming"
    incoming.mkdir()
    paths = []
    for k in range(count):
        path = incoming / f"batch-{k:02d}.csv"
        path.write_text(f"x\n{k}\n")
        arrival = 1_800_000_000 + (count - k)  # arrival order is the reverse of name order
        os.utime(path, (arrival, arrival))
        paths.append(path)
    return paths[::-1]


def _claim(root: str, store_url: str, claim_id: str) -> list[str]:
    settings = load_settings(root, store_url=store_url)
    return arrivals.claim(settings, Path(root), "incoming/*.csv", claim_id, limit=100)


def test_arrival_order_is_modification_time_then_name(project: Project) -> None:
    expected = _files(project, 5)
    assert arrivals.arrived(project.root, "incoming/*.csv") == [str(p) for p in expected]
    assert arrivals.arrived(project.root, "nothing/*.csv") == []


def test_an_object_store_location_is_watched_too(project: Project) -> None:
    """Any fsspec filesystem: here the in-memory one, standing in for a bucket."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/bucket/inbox/b.csv", b"second")
    fs.touch("/bucket/inbox/a.csv")  # created later: arrives after b.csv
    try:
        found = arrivals.arrived(project.root, "memory://bucket/inbox/*.csv")
        assert found == ["memory:///bucket/inbox/b.csv", "memory:///bucket/inbox/a.csv"]
        settings = load_settings(project.root)
        taken = arrivals.claim(settings, project.root, "memory://bucket/inbox/*.csv", "r", 10)
        assert taken == found
    finally:
        fs.rm("/bucket", recursive=True)


def test_claims_are_limited_consumed_and_released(project: Project) -> None:
    paths = [str(p) for p in _files(project, 4)]
    settings = load_settings(project.root)
    taken = arrivals.claim(settings, project.root, "incoming/*.csv", "run-a", limit=2)
    assert taken == paths[:2]
    arrivals.consume(settings, taken[0], "run-a", "uid-1")
    assert arrivals.release(settings, "run-a") == 1  # the unconsumed one goes back
    taken = arrivals.claim(settings, project.root, "incoming/*.csv", "run-b", limit=10)
    assert taken == paths[1:]


def test_a_later_claim_waits_for_the_batches_claimed_before_it(project: Project) -> None:
    paths = [str(p) for p in _files(project, 4)]
    settings = load_settings(project.root)
    early = arrivals.claim(settings, project.root, "incoming/*.csv", "early", limit=2)
    late = arrivals.claim(settings, project.root, "incoming/*.csv", "late", limit=2)
    assert (early, late) == (paths[:2], paths[2:])
    with pytest.raises(FlorError, match="2 batch\\(es\\) claimed earlier"):
        arrivals.wait_turn(settings, "late", timeout=0.2, poll=0.05)
    arrivals.wait_turn(settings, "early", timeout=0)  # nothing ahead of the first claim
    arrivals.consume(settings, early[0], "early", "uid-1")
    arrivals.consume(settings, early[1], "early", "uid-2")
    arrivals.wait_turn(settings, "late", timeout=0)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_claims_take_each_batch_exactly_once(
    project: Project, backend: str, request: pytest.FixtureRequest
) -> None:
    paths = [str(p) for p in _files(project, 40)]
    url = project.store_url if backend == "sqlite" else request.getfixturevalue("postgres_url")
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        claims = list(pool.map(_claim, [str(project.root)] * 4, [url] * 4, "abcd"))
    flat = [uri for claim in claims for uri in claim]
    assert sorted(flat) == sorted(paths)  # every batch once: none lost, none twice
    for claim in claims:
        assert claim == [p for p in paths if p in claim]  # each in arrival order
