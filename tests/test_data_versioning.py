"""Data batches through fsspec: hashing, content-addressed copies, remote stores."""

from __future__ import annotations

import hashlib
from pathlib import Path

import fsspec
import pytest

from flor_flows.errors import DataError
from flor_flows.versioning.data import fetch, version


def test_remote_source_and_remote_store_give_a_local_path(tmp_path: Path) -> None:
    body = b"x,y\n1,2\n"
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/incoming/2026-11-01.csv", body)
    batch = version("batch", "memory://incoming/2026-11-01.csv", "memory://store", tmp_path)
    sha = hashlib.sha256(body).hexdigest()
    assert (batch.sha256, batch.bytes) == (sha, len(body))
    assert batch.stored_uri == f"memory://store/{sha[:2]}/{sha}.csv"
    assert Path(batch.local_path).read_bytes() == body and batch.local_path.endswith(".csv")
    fs.rm_file("/incoming/2026-11-01.csv")  # the source vanishes; the copy remains
    assert Path(fetch(batch.stored_uri, sha, tmp_path / "other")).read_bytes() == body


def test_same_content_is_stored_once_and_tampering_is_caught(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"same")
    (tmp_path / "b.csv").write_bytes(b"same")
    store = tmp_path / "store"
    first = version("a", str(tmp_path / "a.csv"), str(store), tmp_path / "cache")
    second = version("b", str(tmp_path / "b.csv"), str(store), tmp_path / "cache")
    assert first.stored_uri == second.stored_uri
    assert len([p for p in store.rglob("*") if p.is_file()]) == 1
    Path(first.local_path).write_bytes(b"changed")
    with pytest.raises(DataError, match="does not match its sha256"):
        fetch(first.stored_uri, first.sha256, tmp_path / "cache")


def test_copying_can_be_switched_off(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(b"1")
    batch = version("a", str(tmp_path / "a.csv"), "none", tmp_path / "cache")
    assert batch.stored_uri is None and batch.local_path == str((tmp_path / "a.csv").resolve())


def test_a_batch_of_several_chunks_is_hashed_and_copied_whole(tmp_path: Path) -> None:
    from flor_flows.versioning.data import CHUNK

    body = bytes(range(256)) * ((CHUNK * 5 // 2) // 256) + b"the last partial chunk"
    assert len(body) > 2 * CHUNK and len(body) % CHUNK  # whole chunks and a partial one
    (tmp_path / "big.bin").write_bytes(body)
    batch = version("big", str(tmp_path / "big.bin"), str(tmp_path / "store"), tmp_path / "c")
    assert (batch.sha256, batch.bytes) == (hashlib.sha256(body).hexdigest(), len(body))
    assert Path(fetch(batch.stored_uri, batch.sha256, tmp_path / "c")).read_bytes() == body
