"""Stopping `flor-flows replay` (SIGTERM, Ctrl-C): its replays and temporary server end too."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from flor_flows import children
from flor_flows.training import launch
from tests.conftest import Project

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")
REPO = Path(__file__).resolve().parents[1]
STOPPED = re.compile(
    r"^flor-flows: interrupted: (\d+) replays stopped; run the same command again to resume$",
    re.MULTILINE,
)
EPOCHS = 15

# 15 epochs of 0.2 s when recorded; a replay leaves a marker (its pid) and, while the file
# `slow` exists, takes 2 s an epoch, so it is surely running when the signal comes.
SCRIPT = """
import json
import os
import time
from pathlib import Path

import numpy as np

import flor_flows as flor

MARKERS = Path({markers!r})
context = json.loads(os.environ.get("FLOR_FLOWS_CONTEXT") or "{{}}")
replaying = context.get("mode") == "replay"
if replaying:
    (MARKERS / f"replay-{{os.getpid()}}").write_text("")
pause = 2.0 if replaying and (MARKERS / "slow").exists() else 0.2
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range({epochs})):
        time.sleep(pause)
        w += 1.0
        flor.log("loss", float(w.sum()))
"""
NEW_STATEMENT = (
    '        flor.log("loss", float(w.sum()))\n',
    '        flor.log("loss", float(w.sum()))\n        flor.log("twice", 2 * float(w.sum()))\n',
)


def _wait(condition: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while not (found := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return found


@pytest.fixture
def history(project: Project, tmp_path: Path) -> tuple[Project, Path]:
    """One recorded run of the script, committed; today's code logs `twice` too."""
    markers = tmp_path / "markers"
    markers.mkdir()
    source = SCRIPT.format(markers=str(markers), epochs=EPOCHS)
    project.write("train.py", source)
    project.commit("fifteen epochs")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    project.write("train.py", source.replace(*NEW_STATEMENT))
    return project, markers


def _replay(project: Project, prefect_home: Path, out: Path) -> subprocess.Popen[bytes]:
    """`flor-flows replay --apply twice --all` with Prefect's temporary server of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "FLOR_FLOWS_"))}
    env |= {
        "PREFECT_HOME": str(prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "FLOR_FLOWS_PREFECT": "temporary",
    }
    with (out / "stdout").open("wb") as stdout, (out / "stderr").open("wb") as stderr:
        return subprocess.Popen(
            [FLOR_FLOWS, "replay", "--apply", "twice", "--all", "--max-parallel", "2"],
            cwd=project.root,
            env=env,
            stdout=stdout,
            stderr=stderr,
        )


def _ours(prefect_home: Path) -> list[psutil.Process]:
    """Every live process started with this test's PREFECT_HOME: replays, writers, servers."""
    found = []
    for proc in psutil.process_iter():
        try:
            ours = proc.environ().get("PREFECT_HOME") == str(prefect_home)
            if ours and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _live_replays(markers: Path) -> list[int]:
    pids = [int(m.name.removeprefix("replay-")) for m in markers.glob("replay-*")]
    return [pid for pid in pids if psutil.pid_exists(pid)]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_replays_and_the_temporary_server(
    history: tuple[Project, Path], tmp_path: Path, prefect_home: Path, signum: signal.Signals
) -> None:
    project, markers = history
    (markers / "slow").write_text("")
    home = prefect_home
    replay = _replay(project, home, tmp_path)
    try:
        # the temporary server starts first: 8-20 s here (its database is migrated already)
        _wait(lambda: _live_replays(markers) or replay.poll() is not None, 180, "a running replay")
        assert replay.poll() is None, (tmp_path / "stderr").read_text()[-3000:]
        assert any("uvicorn" in " ".join(_cmdline(p)) for p in _ours(home))  # the server
        sent = time.monotonic()
        replay.send_signal(signum)
        code = replay.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        if replay.poll() is None:
            replay.kill()
    stderr = (tmp_path / "stderr").read_text()
    print(f"{signum.name}: flor-flows replay exited {code} after {took:.2f} s")
    assert took < 5.0 and code == 128 + signum, stderr[-3000:]
    stopped = STOPPED.search(stderr)
    assert stopped and int(stopped[1]) >= 1, stderr[-3000:]

    left = _wait(lambda: not _ours(home), 5.0, "the replays and the server to end")
    assert left and not _live_replays(markers)
    store = project.store()
    assert store.runs().iloc[0]["status"] == "completed"  # the recorded run is left alone
    assert store.query("SELECT status FROM backfill_items")["status"].tolist() == ["cancelled"]
    if signum != signal.SIGTERM:
        return
    # the same command again resumes the cancelled run, to the end, each value once
    (markers / "slow").unlink()
    again = tmp_path / "again"
    again.mkdir()
    replay = _replay(project, home, again)
    assert replay.wait(timeout=400) == 0, (again / "stderr").read_text()[-3000:]
    assert "1 of 1 runs replayed" in (again / "stdout").read_text()
    table = store.dataframe(["loss", "twice"])
    assert len(table) == EPOCHS and table["twice"].tolist() == (2 * table["loss"]).tolist()
    assert store.query("SELECT status FROM backfill_items")["status"].tolist() == ["replayed"]
    _wait(lambda: not _ours(home), 10.0, "the temporary server to end")


LAUNCHER = """
import sys
from flor_flows import children
from flor_flows.training import launch
from flor_flows.training.request import TrainingRequest
request = TrainingRequest(project=sys.argv[1], warm_start=False)
run = launch.new_launch(request)
context = launch.context_of(run, request, launch.snapshot_code(run), {}, None, None)
children.run(run, context, on_output=lambda line: print(line, flush=True))
"""

ENDLESS = """
import os, time
import flor_flows as flor
for epoch in flor.loop("epoch", range(1000)):
    flor.log("loss", 1.0 / (epoch + 1))
    if epoch == 1:
        print(os.getpid(), flush=True)
    time.sleep(0.1)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_launcher_leaves_no_script_running(project: Project) -> None:
    project.write("train.py", ENDLESS)
    project.commit("endless")
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(project.root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = launcher.stdout.readline()
    while not line.strip().isdigit():  # the script's pid, once it is training
        assert line, "the launcher ended before the script trained"
        line = launcher.stdout.readline()
    script = psutil.Process(int(line))
    launcher.kill()  # SIGKILL: no handler of ours runs
    launcher.wait(timeout=10)
    script.wait(timeout=30)  # it got SIGTERM from the kernel (else: 100 s more of training)


def test_stop_children_stops_every_script_and_starts_no_more(project: Project) -> None:
    import threading

    from flor_flows.training.request import TrainingRequest

    project.write("train.py", ENDLESS)
    project.commit("endless")
    request = TrainingRequest(project=str(project.root), warm_start=False)
    runs = [launch.new_launch(request) for _ in range(2)]
    contexts = [
        launch.context_of(r, request, launch.snapshot_code(r), {}, None, None) for r in runs
    ]
    started: list[str] = []
    outcomes: list[children.Outcome] = []
    threads = [
        threading.Thread(
            target=lambda r=r, c=c: outcomes.append(children.run(r, c, on_output=started.append))
        )
        for r, c in zip(runs, contexts, strict=True)
    ]
    try:
        for thread in threads:
            thread.start()
        _wait(lambda: len({x for x in started if x.isdigit()}) == 2, 60, "both scripts to run")
        begun = time.monotonic()
        assert children.stop_children(grace=1.0) == 2
        assert time.monotonic() - begun < 3.0  # SIGKILL after the grace
        for thread in threads:
            thread.join(10)
        assert len(outcomes) == 2 and all(o.returncode != 0 for o in outcomes)
        assert children.stopping.is_set()
        late = children.run(runs[0], contexts[0])  # after a stop, nothing starts
        assert late.returncode == -signal.SIGTERM and late.seconds == 0.0
    finally:
        children.stopping.clear()
        children.stop_children(grace=1.0)
        children.stopping.clear()
