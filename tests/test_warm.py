"""The warm process next to the background server runs `flor-flows` commands as the command
line does: the caller's directory, environment, output and exit code; Ctrl-C reaches the
command and its training script; a caller it does not match runs the command itself; the
replays of its commands fork from fork servers it keeps from one command to the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.conftest import Project, is_fork_server

FLOR = str(Path(sys.executable).parent / "flor-flows")

TRAIN = """
import sys, time
from pathlib import Path
import flor_flows as flor

n = int(sys.argv[1])
with flor.checkpointing():
    for epoch in flor.loop("epoch", range(n)):
        flor.log("twice", 2 * epoch)
        if n > 10:
            Path("epochs").write_text(str(epoch))
            time.sleep(0.2)
"""


def _wait(check: Callable[[], object], seconds: float, what: str) -> object:
    deadline = time.monotonic() + seconds
    while not (found := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {seconds} s")
        time.sleep(0.1)
    return found


def _log(home: Path) -> str:
    path = home / "flor-flows-warm.log"
    return path.read_text() if path.exists() else ""


def _flor(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOR, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.timeout(420)
def test_the_warm_process_runs_commands_as_the_command_line_does(
    project: Project, tmp_path: Path, prefect_home: Path
) -> None:
    home = prefect_home  # holds a migrated Prefect database: the server answers sooner
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOR_FLOWS_", "PREFECT_API"))}
    env |= {"PREFECT_HOME": str(home), "FLOR_FLOWS_PREFECT": "background"}
    project.write("train.py", TRAIN)
    project.commit("train")
    started = _flor(env, project.root, "server", "start")
    assert started.returncode == 0, started.stderr
    try:
        assert (home / "flor-flows-warm.sock").exists()  # `server start` waits for it
        pid = int((home / "flor-flows-warm.pid").read_text())

        # a training flow run, through the warm process: its script's values are stored
        trained = _flor(env, project.root, "train", "train.py", "--", "3")
        assert trained.returncode == 0, trained.stderr
        assert "flor-flows train train.py -- 3" in _log(home)
        assert project.store().dataframe(["twice"])["twice"].tolist() == [0, 2, 4]

        # the same output and exit codes as the command run in its own process
        runs = _flor(env, project.root, "runs")
        for args in (["runs"], ["query", "SELECT name, num FROM logs ORDER BY id"], ["query", "DROP TABLE logs"]):  # fmt: skip
            warm, cold = _flor(env, project.root, *args), _flor(env | {"FLOR_FLOWS_WARM": "0"}, project.root, *args)  # fmt: skip
            assert (warm.returncode, warm.stdout, warm.stderr) == (cold.returncode, cold.stdout, cold.stderr)  # fmt: skip
            assert f"flor-flows {' '.join(args)}" in _log(home)
        assert warm.returncode == 2 and warm.stderr.startswith("flor-flows: error:")

        # other Prefect settings than the warm process's: the caller runs it itself
        served = _log(home).count("flor-flows runs")
        other = _flor(env | {"PREFECT_LOGGING_LEVEL": "ERROR"}, project.root, "runs")
        assert (other.returncode, other.stdout) == (0, runs.stdout)
        assert _log(home).count("flor-flows runs") == served

        # another API than the warm process's: served, with the caller's API (read when used)
        named = _flor(env | {"PREFECT_API_URL": started.stdout.strip()}, project.root, "runs")
        assert (named.returncode, named.stdout) == (0, runs.stdout)
        assert _log(home).count("flor-flows runs") == served + 1
        dead = "http://127.0.0.1:9/api"
        other = _flor(env | {"PREFECT_API_URL": dead}, project.root, "replay", "--apply", "twice")
        assert other.returncode == 2, other.stderr
        assert other.stderr.startswith(f"flor-flows: error: the Prefect API at {dead} does not")
        assert "flor-flows replay --apply twice" in _log(home)

        # replays fork from one fork server, kept by the warm process across commands
        for name in ("parent_1", "parent_2"):  # the replay's parent: the server it forked from
            source = (project.root / "train.py").read_text()
            logged = '        flor.log("twice", 2 * epoch)\n'
            project.write("train.py", source.replace(logged, f"{logged}        flor.log({name!r}, __import__('os').getppid())\n"))  # fmt: skip
            replayed = _flor(env, project.root, "replay", "--apply", name)
            assert replayed.returncode == 0, replayed.stderr
        (server,) = [p for p in psutil.Process(pid).children() if is_fork_server(p)]
        forks = Path(server.cmdline()[2]).parent  # the warm process's: its servers' sockets
        parents = project.store().dataframe(["parent_1", "parent_2"])
        assert parents[["parent_1", "parent_2"]].stack().unique().tolist() == [server.pid]

        # Ctrl-C at the caller reaches the command and its training script
        out = tmp_path / "train.out"
        with out.open("w") as sink:
            caller = subprocess.Popen(
                [FLOR, "train", "train.py", "--", "1000"],
                env=env, cwd=project.root, stdout=sink, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            _wait(lambda: (project.root / "epochs").exists(), 120, "training epochs")
            caller.send_signal(signal.SIGINT)
            code = caller.wait(timeout=60)
        finally:
            if caller.poll() is None:
                caller.kill()
        assert code == 128 + signal.SIGINT, out.read_text()
        assert "interrupted: the training script was stopped" in out.read_text()
        statuses = sorted(project.store().runs()["status"].tolist())
        assert statuses == ["completed", "failed"], out.read_text()
    finally:
        stopped = _flor(env, project.root, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    _wait(lambda: not Path(f"/proc/{pid}").exists(), 15, "warm process exit")
    _wait(lambda: not is_fork_server(server), 15, "fork server exit")  # it ends with it
    assert not forks.exists()
    assert not (home / "flor-flows-warm.sock").exists()


COUNTED = """
import os
with open(os.path.join(os.path.dirname(__file__), "..", "imported"), "a") as f:
    f.write(f"{os.getpid()}\\n")
"""
PARENT = """
import os
import countlib
import flor_flows as flor

with flor.checkpointing():
    for epoch in flor.loop("epoch", range(3)):
        flor.log("twice", 2 * epoch)
"""


@pytest.mark.timeout(420)
def test_server_start_in_a_project_prepares_the_fork_server_of_its_replays(
    project: Project, tmp_path: Path, prefect_home: Path
) -> None:
    (tmp_path / "site" / "countlib").mkdir(parents=True)
    (tmp_path / "site" / "countlib" / "__init__.py").write_text(COUNTED)
    imported = tmp_path / "site" / "imported"  # a line per import of countlib
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOR_FLOWS_", "PREFECT_API"))}
    env |= {"PREFECT_HOME": str(prefect_home), "FLOR_FLOWS_PREFECT": "background"}
    env |= {"PYTHONPATH": str(tmp_path / "site")}
    project.write("train.py", PARENT)
    project.commit("train")
    recorded = subprocess.run([sys.executable, "train.py"], cwd=project.root, env=env)
    assert recorded.returncode == 0 and imported.read_text().count("\n") == 1

    started = _flor(env, project.root, "server", "start")
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().startswith("http")  # only the URL: the rest on stderr
        assert "replays of train.py fork from one process that imported countlib" in started.stderr
        assert imported.read_text().count("\n") == 2  # the fork server's import, waited for
        pid = int((prefect_home / "flor-flows-warm.pid").read_text())
        (server,) = [p for p in psutil.Process(pid).children() if is_fork_server(p)]

        # the next command, the API exported meanwhile (read at use: not the server's key),
        # waits for no library: its replay forks from the server `server start` prepared
        env["PREFECT_API_URL"] = started.stdout.strip()
        logged = '        flor.log("twice", 2 * epoch)\n'
        new = logged + '        flor.log("parent", os.getppid())\n'
        project.write("train.py", PARENT.replace(logged, new))
        planned = _flor(env, project.root, "replay", "--apply", "parent", "--dry-run")
        assert planned.returncode == 0 and "before the first replay" not in planned.stdout
        replayed = _flor(env, project.root, "replay", "--apply", "parent")
        assert replayed.returncode == 0, replayed.stderr
        assert project.store().dataframe(["parent"])["parent"].tolist() == [server.pid] * 3
        assert imported.read_text().count("\n") == 2

        again = _flor(env, project.root, "prepare")
        assert again.returncode == 0 and "(it was running already)" in again.stderr
        assert [p for p in psutil.Process(pid).children() if is_fork_server(p)] == [server]
    finally:
        stopped = _flor(env, project.root, "server", "stop")
    assert stopped.returncode == 0, stopped.stderr
    _wait(lambda: not is_fork_server(server), 15, "fork server exit")  # it ends with the server

    # without the warm process, or outside a project: said; --quiet (`server start`) is silent
    cold = _flor(env | {"FLOR_FLOWS_WARM": "0"}, project.root, "prepare")
    assert cold.returncode == 0 and cold.stderr.startswith("flor-flows: nothing prepared: ")
    outside = _flor(env, tmp_path / "site", "prepare")
    assert outside.returncode == 2 and "is not inside a git repository" in outside.stderr
    quiet = _flor(env, tmp_path / "site", "prepare", "--quiet")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
