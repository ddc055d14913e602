"""Issue 12, versioning side: hostile names, killed writes, detached HEADs, dirty submodules."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import fsspec
import pytest

from flor_flows.errors import CheckpointError, DataError
from flor_flows.record.context import ReplaySpec, RunContext
from flor_flows.versioning import checkpoints, data, paths
from flor_flows.versioning.checkpoints import CheckpointStore, restore, snapshot
from tests.conftest import Project, git

SCRIPT = """
import numpy as np
import flor_flows as flor
w = np.zeros(3)
flor.log("w_start", float(w.sum()))
flor.warm_start(w=w)
flor.log("w_warm", float(w.sum()))
with flor.checkpointing(w=w):
    for epoch in flor.loop({loop!r}, range(5)):
        w += 1.0
        flor.log("w", float(w.sum()))
"""
EVERY = {"FLOR_FLOWS_CHECKPOINT_POLICY": "every"}


def _files(top: Path) -> set[Path]:
    return {p for p in top.rglob("*") if p.is_file()}


def _outside_state(project: Project, tmp_path: Path) -> set[Path]:
    """Files under tmp_path, but for the project's state dir and git internals."""
    inside = _files(project.root / ".flor-flows") | _files(project.root / ".git")
    return _files(tmp_path) - inside


def _memory_fs() -> fsspec.AbstractFileSystem:
    fs = fsspec.filesystem("memory")
    fs.store.clear()
    fs.pseudo_dirs.clear()
    fs.pseudo_dirs.append("")
    return fs


# --- 1. every path from a name stays under its root -----------------------------------


@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_a_hostile_loop_name_writes_only_under_the_root_and_restores(
    project: Project, tmp_path: Path, kind: str
) -> None:
    loop = "../../../../../../outside/x" if kind == "dotdot" else f"{tmp_path}/abs/x"
    ckpts = project.root / ".flor-flows" / "checkpoints"
    project.write("train.py", SCRIPT.format(loop=loop))
    project.commit("train")
    outside = _outside_state(project, tmp_path)

    project.run("train.py", env=EVERY)

    (uid,) = project.store().runs()["run_uid"].tolist()
    assert _outside_state(project, tmp_path) == outside  # nothing new
    assert not (ckpts / uid / "../../../../../../outside").resolve().exists()
    assert not (tmp_path / "abs").exists()
    written = project.store().query("select loop_name, uri from checkpoints order by iteration")
    assert written["loop_name"].tolist() == [loop] * 5
    for uri in written["uri"]:
        assert Path(uri).resolve().parent == (ckpts / uid).resolve()  # one level below root
        assert Path(uri).is_file()
    # the checkpoints restore: a warm start and a replay (from iteration 2's state) read them
    project.run("train.py", env=EVERY | RunContext(resumed_from=uid).to_env())
    replay = RunContext(mode="replay", run_uid=uid, replay=ReplaySpec(iterations=(3,)))
    project.run("train.py", env=EVERY | replay.to_env())
    df = project.store().dataframe(["w_warm", "w"])
    second = df.loc[df["run_uid"] != uid]
    assert second["w_warm"].iloc[0] == 15.0 and second["w"].max() == 30.0
    first = df.loc[df["run_uid"] == uid].set_index(loop)
    assert first.loc[3, "w@replay"] == first.loc[3, "w"] == 12.0


@pytest.mark.parametrize("root", ["memory", "local"])
def test_hostile_run_uids_and_loop_names_stay_under_any_fsspec_root(
    tmp_path: Path, root: str
) -> None:
    url = "memory://ckpts/root" if root == "memory" else str(tmp_path / "ckpts" / "root")
    store = CheckpointStore(url)
    memory = fsspec.filesystem("memory")
    before = set(memory.find("/"))  # other tests' files: the memory filesystem is global
    hostile = ["../..", "..", ".", "/etc/x", "a/../../b", "", "..\\..\\w", "%2E%2E", "é" * 300]
    seen = set()
    for i, name in enumerate(hostile):
        for uid, loop in ((name, "epoch"), ("run", name)):
            written = store.write(uid, loop, i, snapshot({"state": {"i": i}}))
            assert written.uri.startswith(url + "/") and written.uri not in seen
            seen.add(written.uri)
            key = written.uri.removeprefix(url + "/")
            first, rest = key.split("/")  # exactly one directory under the root
            assert {first, rest} & {"", ".", ".."} == set() and not first.startswith(".")
            state = {}
            restore(CheckpointStore.read(written.uri, written.sha256), {"state": state})
            assert state == {"i": i}
    if root == "memory":
        written_here = set(memory.find("/")) - before
        assert written_here and all(p.startswith("/ckpts/root/") for p in written_here)
    else:
        assert _files(tmp_path) == _files(tmp_path / "ckpts" / "root")
    assert paths.segment("a-b.c_1") == "a-b.c_1"  # ordinary names stay readable


def test_a_data_batch_name_or_suffix_cannot_place_a_copy_outside_the_store(tmp_path: Path) -> None:
    source = tmp_path / "in" / "batch.csv..%2F..%2Fx"
    source.parent.mkdir()
    source.write_bytes(b"x\n")
    batch = data.version("../../../evil", str(source), str(tmp_path / "store"), tmp_path / "c")
    assert Path(batch.stored_uri).parent.parent == tmp_path / "store"
    assert _files(tmp_path) == {source, Path(batch.stored_uri)}


# --- 2. a killed write leaves nothing under the final name ----------------------------


def _failing_serialize(real):  # noqa: ANN001, ANN202
    def pieces(payload):  # noqa: ANN001, ANN202
        parts = real(payload)
        yield from parts[: len(parts) // 2]
        raise OSError(28, "No space left on device (simulated, half-way)")

    return pieces


@pytest.mark.parametrize("root", ["memory", "local"])
def test_a_write_that_fails_half_way_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, root: str
) -> None:
    fs = _memory_fs() if root == "memory" else fsspec.filesystem("file")
    url = "memory://ck" if root == "memory" else str(tmp_path / "ck")
    store = CheckpointStore(url)
    payload = snapshot({"big": bytearray(1 << 20)})
    monkeypatch.setattr(checkpoints, "serialize", _failing_serialize(checkpoints.serialize))
    with pytest.raises(CheckpointError, match="half-way"):
        store.write("run", "epoch", 0, payload)
    monkeypatch.undo()
    base = "/ck/run" if root == "memory" else str(tmp_path / "ck" / "run")
    assert fs.ls(base, detail=False) == []  # neither the final name nor a temporary one
    written = store.write("run", "epoch", 0, payload)  # and the next write works
    assert fs.ls(base, detail=False) == [f"{base}/epoch-0.ckpt"]
    assert len(CheckpointStore.read(written.uri, written.sha256)) == written.bytes


KILLED_WRITER = """
import sys, time
import numpy as np
from flor_flows.versioning import checkpoints
real = checkpoints.serialize
def pieces(payload):
    parts = real(payload)
    yield from parts[:-1]
    print("half", flush=True)
    time.sleep(60)
    yield parts[-1]
checkpoints.serialize = pieces
store = checkpoints.CheckpointStore(sys.argv[1])
big = {"a": np.ones(4 << 20), "b": np.ones(4 << 20)}  # 2 x 32 MB, out-of-band pieces
store.write("run", "epoch", 0, checkpoints.snapshot(big))
"""


def test_a_sigkilled_write_leaves_no_final_file_and_its_leftover_is_cleaned(
    tmp_path: Path,
) -> None:
    url = str(tmp_path / "ck")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(KILLED_WRITER), url],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "half\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    run_dir = tmp_path / "ck" / "run"
    (leftover,) = run_dir.iterdir()  # the killed write's temporary file, never the final name
    assert leftover.name.startswith(".flor-tmp.") and leftover.stat().st_size > 0
    assert not (run_dir / "epoch-0.ckpt").exists()

    store = CheckpointStore(url)  # the next write to the directory works and cleans up
    written = store.write("run", "epoch", 0, snapshot({"state": {"ok": True}}))
    assert [p.name for p in run_dir.iterdir()] == ["epoch-0.ckpt"]
    state = {}
    restore(CheckpointStore.read(written.uri, written.sha256), {"state": state})
    assert state == {"ok": True}


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_data_copy_that_fails_half_way_leaves_no_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs = _memory_fs()
    (tmp_path / "b.csv").write_bytes(b"a,b\n" * 1000)
    real_put = type(fs).put_file

    def half_put(self, lpath, rpath, **kwargs):  # noqa: ANN001, ANN202
        self.pipe_file(rpath, Path(lpath).read_bytes()[:100])
        raise OSError("connection reset half-way (simulated)")

    monkeypatch.setattr(type(fs), "put_file", half_put)
    with pytest.raises(DataError, match="half-way"):
        data.version("b", str(tmp_path / "b.csv"), "memory://store", tmp_path / "cache")
    assert fs.find("/store") == []
    monkeypatch.setattr(type(fs), "put_file", real_put)
    batch = data.version("b", str(tmp_path / "b.csv"), "memory://store", tmp_path / "cache")
    assert fs.cat_file(batch.stored_uri.removeprefix("memory://")) == b"a,b\n" * 1000
    assert Path(batch.local_path).read_bytes() == b"a,b\n" * 1000


def test_leftovers_of_a_killed_data_copy_are_cleaned_and_never_read(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_bytes(b"1,2\n")
    store, cache = tmp_path / "store", tmp_path / "cache"
    first = data.version("b", str(tmp_path / "b.csv"), str(store), cache)
    copy_dir = Path(first.stored_uri).parent
    dead, alive = _dead_pid(), os.getppid()
    stale = copy_dir / f".flor-tmp.{paths._HOST}.{dead}.0123456789ab.x.csv"
    busy = copy_dir / f".flor-tmp.{paths._HOST}.{alive}.0123456789ab.y.csv"
    in_cache = cache / f".flor-tmp.{paths._HOST}.{dead}.0123456789ab.batch"
    for path in (stale, busy, in_cache):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"trunc")
    (tmp_path / "c.csv").write_bytes(b"1,2\n3,4\n")
    second = data.version("c", str(tmp_path / "c.csv"), str(store), cache)
    if Path(second.stored_uri).parent == copy_dir:
        assert not stale.exists()
    assert busy.exists()  # a live writer's temporary file is left alone
    assert not in_cache.exists()
    assert Path(data.fetch(first.stored_uri, first.sha256, cache)).read_bytes() == b"1,2\n"


# --- 3. detached HEAD and 4. dirty submodules, through real runs ----------------------


def test_a_run_on_a_detached_head_records_with_that_commit_as_parent(project: Project) -> None:
    project.write("train.py", SCRIPT.format(loop="epoch"))
    first = project.commit("train")
    project.write("other.txt", "later\n")
    project.commit("later")
    git(project.root, "checkout", "-q", "--detach", first)
    head_file = (project.root / ".git" / "HEAD").read_bytes()
    index = (project.root / ".git" / "index").read_bytes()
    project.write("train.py", SCRIPT.format(loop="epoch") + "# uncommitted\n")

    project.run("train.py")

    runs = project.store().query(
        'select r.status, c.base, c.branch, c.dirty, c."commit" as c from runs r '
        "join code_versions c on c.id = r.code_version_id"
    )
    assert runs[["status", "base", "branch"]].values.tolist() == [["completed", first, None]]
    assert git(project.root, "rev-parse", f"{runs['c'].iloc[0]}^") == first
    assert len(project.store().dataframe(["w"])) == 5  # every epoch, not aborted after one
    assert (project.root / ".git" / "HEAD").read_bytes() == head_file
    assert (project.root / ".git" / "index").read_bytes() == index


def test_a_run_with_a_dirty_submodule_says_so_on_stderr(project: Project, tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    git(upstream, "init", "-q", "-b", "main")
    (upstream / "lib.py").write_text("X = 1\n")
    git(upstream, "add", "-A")
    git(upstream, "commit", "-q", "-m", "lib")
    git(project.root, "-c", "protocol.file.allow=always", "submodule", "add", "-q",
        str(upstream), "sub")  # fmt: skip
    project.write("train.py", SCRIPT.format(loop="epoch"))
    project.commit("train")
    clean = project.run("train.py")
    assert "DirtySubmodule" not in clean.stderr
    (clean_uid,) = project.store().runs()["run_uid"].tolist()
    (project.root / "sub" / "lib.py").write_text("X = 2\n")

    proc = project.run("train.py")

    (uid,) = set(project.store().runs()["run_uid"]) - {clean_uid}
    assert proc.stderr.count("DirtySubmodule") == 1
    assert f"run {uid}: submodule 'sub'" in proc.stderr
    assert "uncommitted edits that are not part of the run's code version" in proc.stderr
