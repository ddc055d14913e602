"""Code versions without a shared filesystem (issue 16): each recorded version is stored as an
archive beside the checkpoints, checked by its sha256, cached per host, and replayed from
there by a host that has no repository (or a clone without the runs' hidden refs).
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flor_flows.config import STATE_DIR, VERSION_MARK, Settings, load_settings
from flor_flows.errors import CodeArchiveError
from flor_flows.replay import worktree
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.store import Store
from flor_flows.versioning import archives, code
from tests import s3server
from tests.conftest import Project, git
from tests.s3server import S3Server

V1 = """
import numpy as np
import flor_flows as flor
seed = flor.arg("seed", 0)
np.random.seed(seed)
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w += np.random.rand(3)
        flor.log("loss", float(w.sum()))
"""
V2 = V1.replace("w += np.random.rand(3)", "w += 2 * np.random.rand(3)")
NEW = V2.replace(
    '        flor.log("loss", float(w.sum()))\n',
    '        flor.log("loss", float(w.sum()))\n        flor.log("w_max", float(w.max()))\n',
)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3server.running() as server:
        yield server


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This host's archive cache, in the test's directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "flor-flows" / "code-versions"


def _snapshots(project: Project) -> list[str]:
    """Two code versions of uncommitted edits, as runs would record them (hidden refs only),
    taken without running anything."""
    project.write("train.py", V1)
    project.commit("v1")
    project.write("train.py", V1 + "# edited\n")
    first = code.snapshot(project.root, "run-1").commit
    project.write("train.py", V2)
    return [first, code.snapshot(project.root, "run-2").commit]


def _runs(root: Path) -> pd.DataFrame:
    """The project's runs, oldest first, from the store its settings name."""
    return Store(load_settings(root).store_url).runs().sort_values("started_at")


def _members(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_a_recorded_run_keeps_its_code_version_beside_its_checkpoints(project: Project) -> None:
    project.write("train.py", V1)
    project.commit("v1")
    project.write("train.py", V1 + "# edited\n")  # uncommitted: a version of its own
    project.run("train.py", "--kwargs", "seed=1")
    (commit,) = _runs(project.root)["code_version"].tolist()
    settings = load_settings(project.root)
    stored = Path(archives.location(settings))
    sha256 = (stored / f"{commit}.sha256").read_text().strip()
    archive = (stored / commit / f"{sha256}.tar").read_bytes()
    assert hashlib.sha256(archive).hexdigest() == sha256
    assert _members(archive)["train.py"] == (V1 + "# edited\n").encode()
    assert _members(archive) == _members(code.archive(project.root, commit))

    before = (stored / f"{commit}.sha256").stat().st_mtime_ns
    assert not archives.publish(project.root, commit, settings)  # there already
    project.run("train.py", "--kwargs", "seed=2")  # the same version again: stored once
    assert _runs(project.root)["code_version"].tolist() == [commit, commit]
    assert (stored / f"{commit}.sha256").stat().st_mtime_ns == before
    assert sorted(p.name for p in stored.iterdir()) == [commit, f"{commit}.sha256"]


def test_a_host_without_the_repository_replays_from_the_object_store(
    project: Project, s3: S3Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3server.credentials_env().items():
        monkeypatch.setenv(key, value)
    bucket = s3.bucket()
    project.write(
        "pyproject.toml",
        f'[tool.flor-flows]\nstore_url = "sqlite:///{tmp_path / "store.db"}"\n'
        f'checkpoint_url = "s3://{bucket}/checkpoints"\ncheckpoint_policy = "every"\n\n'
        + s3.toml(),
    )
    project.write("train.py", V1)
    project.commit("v1")
    project.write("train.py", V2)  # an uncommitted edit: its version is under a hidden ref
    project.run("train.py", "--kwargs", "seed=2")
    settings = load_settings(project.root)
    (run,) = _runs(project.root).itertuples()

    project.root.rename(tmp_path / "moved")  # this "host" has no repository any more
    with worktree.workspace() as workdir:
        version = prepare_version(
            settings.root, run.code_version, {"train.py": NEW}, ["w_max"], workdir, ["train.py"],
            settings,
        )  # fmt: skip
        assert version.outcome("train.py") == ("propagated", None)
        mark = version.directory / STATE_DIR / VERSION_MARK
        assert mark.read_text().strip() == run.code_version  # a project root of its own
        replay(version, run.run_uid, "train.py", settings, ["w_max"], on_output=print)
    assert not settings.root.exists()  # the repository's path was not made on this host
    assert [p.name for p in cache.iterdir()] == [f"{run.code_version}.tar"]
    replayed = Store(settings.store_url)

    truth = Project(tmp_path / "truth")  # the ground truth: the new code run from scratch
    truth.root.mkdir()
    git(truth.root, "init", "-q", "-b", "main")
    truth.write("train.py", NEW)
    truth.run("train.py", "--kwargs", "seed=2")
    got = replayed.dataframe(["w_max"]).sort_values("epoch")
    want = truth.store().dataframe(["w_max"]).sort_values("epoch")
    assert got["w_max"].tolist() == want["w_max"].tolist() and len(got) == 3


def test_a_clone_without_the_runs_refs_uses_the_archive(
    project: Project, cache: Path, tmp_path: Path
) -> None:
    commits = _snapshots(project)
    settings = load_settings(project.root)
    archives.publish(project.root, commits[1], settings)
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--no-local", str(project.root), str(clone))  # branches only
    assert not code.has_commit(clone, commits[1])
    tree = worktree.view(clone, commits[1], tmp_path / "view", settings)
    assert (tree / "train.py").read_text() == V2
    assert not (tree / STATE_DIR / VERSION_MARK).exists()  # the clone is the project root
    assert worktree.project_root(clone, tree) == clone
    with pytest.raises(CodeArchiveError, match="has no archive at"):
        worktree.materialize(clone, "f" * 40, tmp_path / "none", settings)


def test_archives_are_checked_against_their_sha256_and_the_cache_is_bounded(
    project: Project, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    commits = _snapshots(project)
    settings = load_settings(project.root)
    assert [archives.publish(project.root, c, settings) for c in commits] == [True, True]
    good = archives.fetch(commits[0], settings)
    cached = cache / f"{commits[0]}.tar"
    cached.write_bytes(b"damaged")  # a damaged cache entry is fetched again
    assert archives.fetch(commits[0], settings) == good == cached.read_bytes()

    stored = Path(archives.location(settings))
    sha256 = (stored / f"{commits[0]}.sha256").read_text().strip()
    (stored / commits[0] / f"{sha256}.tar").write_bytes(good[:-512] + b"x" * 512)
    cached.unlink()
    with pytest.raises(CodeArchiveError, match="does not match its recorded sha256"):
        archives.fetch(commits[0], settings)

    monkeypatch.setattr(archives, "CACHE_ENTRIES", 1)
    archives.fetch(commits[1], settings)
    assert [p.name for p in cache.iterdir()] == [f"{commits[1]}.tar"]
    with pytest.raises(CodeArchiveError, match="not a code version"):
        archives.fetch("../../etc", settings)


def test_a_backfill_host_stores_the_archives_of_older_runs(project: Project) -> None:
    commits = _snapshots(project)  # as if recorded before archives were kept
    settings: Settings = load_settings(project.root)
    stored = Path(archives.location(settings))
    worktree.share(settings, [*commits, "f" * 40])  # a version it does not have: left out
    assert sorted(p.stem for p in stored.glob("*.sha256")) == sorted(commits)
