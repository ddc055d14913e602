"""The record API end to end: real scripts in real git projects, read back from the store."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flor_flows.errors import RequestError
from tests.conftest import Project, git, wait_for

TRAIN = """
import flor_flows as flor
lr = flor.arg("lr", 0.5)
epochs = flor.arg("epochs", 3)
name = flor.arg("name", "base")
use_bias = flor.arg("bias", False)
w = 0.0
for epoch in flor.loop("epoch", range(epochs)):
    for step in flor.loop("step", range(4)):
        w += lr
        assert flor.log("loss", w) == w
    flor.log("acc", epoch / 10)
"""


def test_args_logs_and_loops_are_recorded(project: Project) -> None:
    project.write("train.py", TRAIN)
    project.run("train.py", "--kwargs", "lr=0.25", "epochs=2", "name=tuned", "bias=yes")
    df = project.store().dataframe(["loss", "acc"])
    assert len(df) == 2 * 4
    assert list(df["epoch"]) == [0, 0, 0, 0, 1, 1, 1, 1]
    assert list(df["step"]) == [0, 1, 2, 3] * 2
    assert df["loss"].tolist() == pytest.approx([0.25 * k for k in range(1, 9)])
    assert df["acc"].tolist() == [0.0] * 4 + [0.1] * 4  # epoch value broadcast onto step rows
    assert df["lr"].iloc[0] == 0.25 and df["epochs"].iloc[0] == 2
    assert df["name"].iloc[0] == "tuned" and bool(df["bias"].iloc[0]) is True
    assert df["loss"].dtype == "float64" and df["epoch"].dtype == "Int64"
    assert {"run_uid", "code_version", "started_at"} <= set(df.columns)


def test_kwargs_are_removed_from_argv_for_the_script_argparse(project: Project) -> None:
    project.write(
        "train.py",
        """
        import argparse
        import flor_flows as flor
        parser = argparse.ArgumentParser()
        parser.add_argument("--device", default="cpu")
        ns = parser.parse_args()
        flor.log("device", ns.device)
        flor.log("lr", flor.arg("lr", 1.0))
        """,
    )
    project.run("train.py", "--kwargs", "lr=3", "--device", "meta")
    df = project.store().dataframe(["device"])
    assert df["device"].tolist() == ["meta"] and df["lr"].tolist() == [3.0]


def test_arg_errors_are_clear(project: Project) -> None:
    project.write("need.py", "import flor_flows as flor\nflor.arg('lr')\n")
    proc = project.run("need.py", check=False)
    assert proc.returncode != 0
    assert "flor.arg('lr') has no default" in proc.stderr and "--kwargs lr=VALUE" in proc.stderr
    project.write("bad.py", "import flor_flows as flor\nflor.arg('epochs', 3)\n")
    proc = project.run("bad.py", "--kwargs", "epochs=many", check=False)
    assert "cannot convert to int" in proc.stderr
    proc = project.run("bad.py", "--kwargs", "epochs", check=False)
    assert "expects NAME=VALUE" in proc.stderr


def test_loop_is_lazy_and_records_item_values(project: Project) -> None:
    project.write(
        "lazy.py",
        """
        import itertools
        import flor_flows as flor
        seen = []
        def endless():
            for k in itertools.count():
                seen.append(k)
                yield k * 10
        for i, item in enumerate(flor.loop("tick", endless())):
            flor.log("item", item)
            if i == 2:
                break
        assert seen == [0, 1, 2], seen  # never materialised
        for doc in flor.loop("doc", ["a.pdf", "b.pdf"]):
            flor.log("chars", len(doc))
        with flor.iteration("request", None, "r-17"):
            flor.log("latency", 0.5)
        """,
    )
    project.run("lazy.py")
    store = project.store()
    ticks = store.dataframe(["item"])
    assert ticks["tick"].tolist() == [0, 1, 2]
    assert pd.isna(ticks["tick_value"][0])  # item 0 equals its index: no value stored
    assert ticks["tick_value"].tolist()[1:] == ["10", "20"]
    docs = store.dataframe(["chars"])
    assert docs["doc"].tolist() == [0, 1] and docs["doc_value"].tolist() == ["a.pdf", "b.pdf"]
    requests = store.dataframe(["latency"])
    assert requests["request_value"].tolist() == ["r-17"] and requests["latency"].tolist() == [0.5]


def test_several_runs_per_process_and_types(project: Project) -> None:
    project.write(
        "multi.py",
        """
        import numpy as np
        import flor_flows as flor
        for k in range(3):
            flor.log("k", k)
            flor.log("mixed", [1.5, "two", 3][k])
            flor.log("weird", {0: float("nan"), 1: float("inf"), 2: -float("inf")}[k])
            flor.log("np", np.float32(0.5) * k)
            flor.log("obj", {"a": [1, 2]} if k == 0 else object.__new__(type("Thing", (), {})))
            flor.commit()
        """,
    )
    project.run("multi.py")
    store = project.store()
    runs = store.runs()
    assert len(runs) == 3 and set(runs["status"]) == {"completed"}
    df = store.dataframe(["k", "mixed", "weird", "np", "obj"])
    assert df["k"].tolist() == [0, 1, 2] and str(df["k"].dtype) == "Int64"
    assert df["mixed"].tolist() == [1.5, "two", 3]  # mixed types stay as Python values
    assert math.isnan(df["weird"][0]) and df["weird"][1] == math.inf and df["weird"][2] == -math.inf
    assert df["np"].dtype == "float64" and df["np"].tolist() == [0.0, 0.5, 1.0]
    assert df["obj"][0] == {"a": [1, 2]} and "Thing object" in df["obj"][1]


def test_exception_marks_run_failed_and_keeps_logs(project: Project) -> None:
    project.write(
        "crash.py",
        """
        import flor_flows as flor
        for epoch in flor.loop("epoch", range(5)):
            flor.log("loss", 1.0 / (3 - epoch))
        """,
    )
    proc = project.run("crash.py", check=False)
    assert proc.returncode == 1 and "ZeroDivisionError" in proc.stderr
    store = project.store()
    runs = store.runs()
    assert runs["status"].tolist() == ["failed"] and "ZeroDivisionError" in runs["error"][0]
    assert store.dataframe(["loss"])["epoch"].tolist() == [0, 1, 2]


def _logged(project: Project, name: str) -> list | None:
    """The values of `name` in the store now (None while none is there yet)."""
    try:
        return project.store().dataframe([name])[name].tolist()
    except RequestError:  # the name is not logged yet
        return None


def _statuses(project: Project) -> list[str]:
    return project.store().query("SELECT status FROM runs")["status"].tolist()


def test_sigkill_keeps_flushed_records_and_shows_run_failed(project: Project) -> None:
    project.write(
        "killed.py",
        """
        import sys
        import flor_flows as flor
        for step in flor.loop("step", range(100)):
            flor.log("loss", step * 1.0)
            if step == 9:
                sys.stdin.read()  # training stalls here until the test kills it
        """,
    )
    child = project.start("killed.py")
    try:
        # The background flush (every second) stores what was logged while the run lives.
        flushed = [float(k) for k in range(10)]
        wait_for(lambda: _logged(project, "loss") == flushed, 60, "the ten losses in the store")
        assert _statuses(project) == ["running"]
    finally:
        child.kill()
        child.wait(60)
    assert child.returncode == -signal.SIGKILL
    # The writer process outlives its run: it notices the run is gone and marks it failed.
    wait_for(lambda: _statuses(project) == ["failed"], 30, "the killed run marked failed")
    assert _logged(project, "loss") == flushed


def _gone(pid: int) -> bool:
    """Whether process `pid` (not a child of this one) has exited."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    except FileNotFoundError:
        return True


def test_a_run_killed_before_its_writer_read_its_records_is_still_recorded(
    project: Project,
) -> None:
    """The writer outlives its run: what the run sent before it died is stored, whether the
    writer read it before or after, and the run is marked failed."""
    project.write(
        "killed.py",
        """
        import os, signal
        import flor_flows as flor
        from flor_flows.record import session
        buffer = session.current().buffer
        writer = buffer._writer.process.pid
        os.kill(writer, signal.SIGSTOP)  # it reads nothing until the test resumes it
        print(writer, flush=True)
        for step in flor.loop("step", range(10)):
            flor.log("loss", step * 1.0)
        buffer.flush()  # sent: in the writer's pipe, not read yet
        os.kill(os.getpid(), signal.SIGKILL)
        """,
    )
    child = project.start("killed.py")
    writer = int(child.stdout.readline())
    try:
        assert child.wait(60) == -signal.SIGKILL
    finally:
        os.kill(writer, signal.SIGCONT)
    wait_for(lambda: _gone(writer), 60, "the writer to end once it has read the pipe")
    _, err = child.communicate(timeout=60)
    assert _statuses(project) == ["failed"], err
    assert _logged(project, "loss") == [float(k) for k in range(10)]


def test_records_stream_to_the_store_while_the_run_is_alive(project: Project) -> None:
    project.write(
        "slow.py",
        """
        import sys
        import flor_flows as flor
        for step in flor.loop("step", range(3)):
            flor.log("loss", float(step))
        sys.stdin.read()  # the run stays alive until the test ends it
        """,
    )
    child = project.start("slow.py")
    try:
        wait_for(lambda: _logged(project, "loss") == [0.0, 1.0, 2.0], 60, "the streamed losses")
        assert _statuses(project) == ["running"]
    finally:
        child.terminate()
        _, err = child.communicate(timeout=60)
    assert child.returncode == 128 + signal.SIGTERM, err
    assert _statuses(project) == ["failed"]  # SIGTERM ends it as failed, recorded before exit


def test_code_version_is_a_hidden_ref_and_the_user_tree_is_untouched(project: Project) -> None:
    project.write("train.py", TRAIN)
    head = project.commit("add train")
    project.write("train.py", TRAIN + "\nflor.log('extra', 1)\n")  # uncommitted edit
    project.write("scratch.txt", "not part of the project\n")
    status_before = git(project.root, "status", "--porcelain")
    project.run("train.py")
    assert git(project.root, "status", "--porcelain") == status_before
    assert git(project.root, "rev-parse", "HEAD") == head
    assert git(project.root, "branch", "--show-current") == "main"
    run = project.store().runs().iloc[0]
    ref = git(project.root, "rev-parse", f"refs/flor/runs/{run['run_uid']}")
    assert ref == run["code_version"]
    snapshot = git(project.root, "show", f"{ref}:train.py")
    assert "flor.log('extra', 1)" in snapshot
    assert "scratch.txt" not in git(project.root, "ls-tree", "-r", "--name-only", ref)


def test_not_a_git_repository_is_an_error_a_detached_head_is_not(
    tmp_path, project: Project
) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "t.py").write_text("import flor_flows as flor\nflor.log('x', 1)\n")
    proc = subprocess.run(
        [sys.executable, "t.py"], cwd=loose, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "not inside a git repository" in proc.stderr
    project.write("t.py", "import flor_flows as flor\nflor.log('x', 1)\n")
    project.commit()
    git(project.root, "checkout", "-q", "--detach")  # as CI checkouts are: records normally
    project.run("t.py")
    assert project.store().runs()["status"].tolist() == ["completed"]


def test_data_batches_are_hashed_copied_and_overridable(project: Project) -> None:
    import hashlib

    (project.root / "data").mkdir()
    (project.root / "data" / "b1.csv").write_text("x,y\n1,2\n")
    (project.root / "data" / "b2.csv").write_text("x,y\n3,4\n5,6\n")
    project.write(
        "train.py",
        """
        import flor_flows as flor
        path = flor.data("batch", "data/b1.csv")
        flor.log("rows", len(open(path).read().splitlines()) - 1)
        flor.log("path", path)
        """,
    )
    project.run("train.py")
    project.run("train.py", "--data", "batch=data/b2.csv")
    store = project.store()
    df = store.dataframe(["rows", "path"])
    assert df["rows"].tolist() == [1, 2]
    assert df["data.batch"].tolist() == ["data/b1.csv", "data/b2.csv"]
    batches = store.query("select uri, sha256, bytes, stored_uri from data_batches order by id")
    body = (project.root / "data" / "b2.csv").read_bytes()
    assert batches["sha256"][1] == hashlib.sha256(body).hexdigest()
    assert batches["bytes"][1] == len(body)
    stored = batches["stored_uri"][1]
    assert stored.startswith(str(project.root / ".flor-flows" / "data"))
    assert df["path"][1] == stored  # the script read the versioned copy
    (project.root / "data" / "b2.csv").unlink()
    assert Path(stored).read_bytes() == body  # survives the source vanishing


def test_missing_data_file_is_a_clear_error(project: Project) -> None:
    project.write("t.py", "import flor_flows as flor\nflor.data('batch', 'data/nope.csv')\n")
    proc = project.run("t.py", check=False)
    assert proc.returncode != 0
    assert "data batch 'batch'" in proc.stderr and "does not exist" in proc.stderr


def test_unwritable_checkpoint_location_is_a_clear_error(project: Project, tmp_path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a directory")
    project.write(
        "t.py",
        """
        import flor_flows as flor
        state = {"w": 1}
        with flor.checkpointing(state=state):
            for epoch in flor.loop("epoch", range(2)):
                flor.log("w", state["w"])
        """,
    )
    proc = project.run(
        "t.py", env={"FLOR_FLOWS_CHECKPOINT_URL": str(blocked / "ckpt")}, check=False
    )
    assert proc.returncode != 0 and "is not writable" in proc.stderr


def test_checkpoints_are_recorded_per_outer_iteration(project: Project) -> None:
    project.write(
        "t.py",
        """
        import numpy as np
        import flor_flows as flor
        w = np.zeros(4)
        with flor.checkpointing(w=w):
            for epoch in flor.loop("epoch", range(3)):
                for step in flor.loop("step", range(2)):
                    w += 1
        """,
    )
    project.run("t.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    ckpts = project.store().query(
        "select loop_name, iteration, uri, sha256, bytes, seconds from checkpoints"
    )
    assert ckpts["loop_name"].tolist() == ["epoch"] * 3
    assert ckpts["iteration"].tolist() == [0, 1, 2]
    assert (ckpts["bytes"] > 0).all() and (ckpts["seconds"] >= 0).all()
    assert all(os.path.exists(u) for u in ckpts["uri"])


def test_run_table_and_version_columns(project: Project) -> None:
    project.write("train.py", TRAIN)
    project.commit("v1")
    project.run("train.py")
    project.write("train.py", TRAIN + "    flor.log('val', epoch * 2)\n")
    project.commit("v2")
    project.run("train.py", "--kwargs", "lr=1.0")
    store = project.store()
    runs = store.dataframe([])
    assert len(runs) == 2 and runs["lr"].tolist() == [0.5, 1.0]
    assert runs["code_version"].nunique() == 2
    df = store.dataframe(["acc", "val"])
    v1 = df[df["run_uid"] == runs["run_uid"][0]]
    assert v1["val"].isna().all() and v1["acc"].notna().all()
    reordered = store.dataframe(["val", "acc"])
    pd.testing.assert_frame_equal(df, reordered[df.columns])


def test_training_goes_on_when_its_writer_process_is_killed(project: Project) -> None:
    """A new writer resumes the run and gets what the killed one had not acknowledged."""
    project.write(
        "t.py",
        """
        import os, signal, time
        import flor_flows as flor
        from flor_flows.record import session
        buffer = session.current().buffer
        buffer.wait_ready()  # the run is open in the store

        def replaced(restarts):
            deadline = time.monotonic() + 30  # replaced at the next flush, within a second
            while buffer.restarts == restarts:
                assert time.monotonic() < deadline, "the killed writer was not replaced"
                time.sleep(0.05)

        for step in flor.loop("step", range(40)):
            flor.log("x", step)
            if step in (4, 19):
                buffer.sync()  # what is logged so far is in the store and acknowledged
            if step == 7:  # the writer reads no more: this batch stays in the pipe, unacked
                os.kill(buffer._writer.process.pid, signal.SIGSTOP)
                buffer.flush()
            if step in (10, 25):  # 8-10 and 20-25 logged and not sent yet
                restarts = buffer.restarts
                os.kill(buffer._writer.process.pid, signal.SIGKILL)
                replaced(restarts)
        flor.commit()
        print("restarts", buffer.restarts)
        """,
    )
    proc = project.run("t.py")
    assert proc.stdout.split() == ["restarts", "2"]
    store = project.store()
    assert store.dataframe(["x"])["x"].tolist() == list(range(40))  # each value once
    assert store.runs()["status"].tolist() == ["completed"]


def test_a_loop_name_reused_in_one_run_is_recorded(project: Project) -> None:
    project.write(
        "t.py",
        """
        import flor_flows as flor
        state = {"w": 0}
        with flor.checkpointing(state=state):
            for epoch in flor.loop("epoch", range(2)):
                for step in flor.loop("step", range(3)):
                    flor.log("train_loss", float(step))
                for step in flor.loop("step", range(3)):  # an eval loop with the same name
                    flor.log("val_loss", float(step) / 2)
            for epoch in flor.loop("epoch", range(2)):  # a second pass over the same loop
                flor.log("again", epoch)
        """,
    )
    project.run("t.py")
    store = project.store()
    assert store.runs()["status"].tolist() == ["completed"]
    df = store.dataframe(["train_loss", "val_loss"])
    assert len(df) == 6 and df["val_loss"].tolist() == [0.0, 0.5, 1.0] * 2
    assert store.dataframe(["again"])["again"].tolist() == [0, 1]


def test_a_run_starts_when_its_process_does_and_times_its_nested_loops(project: Project) -> None:
    """Replay planning needs the script's set-up (imports before the first flor call) and
    the time an epoch spends in its nested loops (what skipping them saves)."""
    project.write(
        "slow_start.py",
        """
        import time
        time.sleep(1.0)  # the behaviour timed: a script's set-up (its imports) before flor's
        import flor_flows as flor
        import numpy as np
        w = np.zeros(2)
        with flor.checkpointing(w=w):
            for epoch in flor.loop("epoch", range(2)):
                # The sleeps are the work timed (a sleep lasts at least as long as asked):
                # 0.4 s and 0.2 s in two nested loops, 0.3 s in the epoch outside them.
                for step in flor.loop("step", range(2)):
                    time.sleep(0.2)
                for batch in flor.loop("eval", range(2)):
                    time.sleep(0.1)
                time.sleep(0.3)
                flor.log("e", epoch)
        """,
    )
    project.run("slow_start.py")
    run = project.store().runs().iloc[0]
    epochs = project.store().query(
        "select started_at, seconds, inner_seconds from contexts where depth = 1 order by started_at"
    )
    assert len(epochs) == 2
    assert epochs["started_at"].iloc[0] - run["started_at"].timestamp() >= 1.0
    assert (epochs["inner_seconds"] >= 0.6).all()  # both nested loops count
    assert (epochs["seconds"] - epochs["inner_seconds"] >= 0.3).all()  # the epoch's own does not


def test_a_misspelled_kwargs_name_is_warned_about(project: Project) -> None:
    project.write(
        "t.py",
        """
        import flor_flows as flor
        flor.log("lr", flor.arg("lr", 0.1) * flor.arg("epochs", 2))
        """,
    )
    proc = project.run("t.py", "--kwargs", "epoch=5", "lr=0.5")
    assert proc.stderr.strip() == (
        "flor-flows: warning: --kwargs epoch: no flor.arg of that name was read "
        "(declared: epochs, lr)"
    )
    assert project.store().dataframe(["lr"])["lr"].tolist() == [1.0]
