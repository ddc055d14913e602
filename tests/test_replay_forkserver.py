"""Replays of one code version share the script's library imports (flor_flows.replay.forkserver).

The observable is a real library installed outside the project (on PYTHONPATH, like a
site-packages one) that appends a line per import to a file: a replay forked from the fork
server does not import it again; a fresh process does. The project's own module (helpers.py)
is imported by every replay, forked or not.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from flor_flows import children
from flor_flows.config import load_settings
from flor_flows.record import spare
from flor_flows.record.context import RunContext
from flor_flows.replay import engine, forkserver, forkserver_main, importtimes
from tests.conftest import Project, is_fork_server, wait_for

REPO = Path(__file__).resolve().parents[1]
LIBRARY = """
import os
with open({count!r}, "a") as f:
    f.write(f"{{os.getpid()}}\\n")
SCALE = 0.5
"""
THREADED = """
import threading, time
threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
"""
HELPERS = """
import os
with open(os.path.join(os.path.dirname(__file__), "..", "helpers-imported"), "a") as f:
    f.write(f"{os.getpid()}\\n")
"""
SCRIPT = """
import argparse
import numpy as np
import countlib
import helpers
import flor_flows as flor

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
args = parser.parse_args()
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(args.epochs)):
        w += np.sin(np.arange(3.0) + epoch) * countlib.SCALE
        flor.log("w0", float(w[0]))
"""
NEW = SCRIPT + '        flor.log("w_norm", float(np.linalg.norm(w)))\n'


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """countlib, on PYTHONPATH outside the project; returns the file counting its imports."""
    lib = tmp_path / "site"
    (lib / "countlib").mkdir(parents=True)
    (lib / "threadlib").mkdir()
    count = tmp_path / "countlib-imported"
    (lib / "countlib" / "__init__.py").write_text(LIBRARY.format(count=str(count)))
    (lib / "threadlib" / "__init__.py").write_text(THREADED)
    monkeypatch.setenv("PYTHONPATH", str(lib))
    return count


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _untimed(said: str) -> str:
    """A line of output without the seconds a fork server's imports took."""
    return re.sub(r" in \d+\.\d\d s", "", said)


def _command(process: psutil.Process) -> str:
    """Its command line; empty once it exited (a zombie its parent did not reap yet)."""
    try:
        return " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return ""


def _servers() -> list[psutil.Process]:
    """This process's live fork servers."""
    return [p for p in psutil.Process().children() if is_fork_server(p)]


def _values(project: Project, name: str, source: str) -> list[float]:
    rows = project.store().query(
        f"SELECT num FROM logs WHERE name = '{name}' AND source = '{source}' ORDER BY i0"
    )
    return rows["num"].tolist()


def test_a_versions_replays_import_its_libraries_once_and_match_the_new_code(
    project: Project, library: Path, tmp_path: Path
) -> None:
    project.write("helpers.py", HELPERS)
    project.write("train.py", SCRIPT)
    project.commit("train")
    project.run("train.py", "--epochs", "4", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    store = project.store()
    uid, commit = store.runs()[["run_uid", "code_version"]].iloc[0]
    settings = load_settings(project.root)
    version = engine.prepare_version(
        project.root, commit, {"train.py": NEW}, ["w_norm"], tmp_path / "work", ["train.py"]
    )
    output: list[str] = []
    with engine.sharing_setup():
        for iterations, run_level in (((0, 1), False), ((2, 3), True), (None, True)):
            engine.replay(
                version, uid, "train.py", settings, ["w_norm"], iterations,
                on_output=output.append, run_level=run_level,
            )  # fmt: skip
        assert len(_servers()) == 1
    assert not _servers()  # stopped with the scope
    said = [_untimed(line) for line in output if line.startswith("flor-flows: replays of train.py")]
    assert said == [f"flor-flows: replays of train.py at {commit[:10]} fork from one process "
                    "that imported numpy, countlib"]  # fmt: skip
    assert len(_lines(library)) == 2  # the recorded run, then the fork server: once
    assert len(_lines(project.root.parent / "helpers-imported")) == 1 + 3  # every replay
    forked = _values(project, "w_norm", "replay")

    engine.replay(version, uid, "train.py", settings, ["w_norm"], on_output=output.append)
    assert len(_lines(library)) == 3  # outside the scope: a fresh process imports it again
    assert _values(project, "w_norm", "replay") == forked

    project.write("train.py", NEW)  # the new code run from scratch: the ground truth
    project.run("train.py", "--epochs", "4")
    assert forked == _values(project, "w_norm", "forward") and len(forked) == 4


WRITER = """
import os
import numpy as np
import countlib
import psutil
import flor_flows as flor
from flor_flows.record import buffer

w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w += epoch * countlib.SCALE
        flor.log("w0", float(w[0]))
writer = psutil.Process(buffer.writer_process().process.pid)
print("writer", writer.pid, writer.ppid() == os.getppid(), " ".join(writer.cmdline()[1:]))
"""


def _writers(output: list[str]) -> list[tuple[int, bool, str]]:
    """What the WRITER script said of its writer process: pid, whether its parent is the
    replay's parent, its command line."""
    said = [line.split(" ", 3)[1:] for line in output if line.startswith("writer ")]
    return [(int(pid), parent == "True", command) for pid, parent, command in said]


def test_a_forked_replay_gets_a_writer_its_server_started_ahead_unless_that_one_died(
    project: Project, library: Path, tmp_path: Path
) -> None:
    project.write("train.py", WRITER)
    project.commit("train")
    project.run("train.py", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    uid, commit = project.store().runs()[["run_uid", "code_version"]].iloc[0]
    new = WRITER.replace('flor.log("w0"', 'flor.log("w1", float(w[1]))\n        flor.log("w0"')
    version = engine.prepare_version(
        project.root, commit, {"train.py": new}, ["w1"], tmp_path / "work", ["train.py"]
    )
    settings = load_settings(project.root)
    output: list[str] = []
    spare = "-P -m flor_flows.record.writer --spare"
    with engine.sharing_setup():
        for iterations in ((0,), (1, 2)):
            engine.replay(version, uid, "train.py", settings, ["w1"], iterations, output.append)
        (server,) = _servers()
        waiting = [p for p in server.children() if spare in _command(p)]
        assert len(waiting) == 2  # the next two replays': two may start at once
        for process in waiting:  # they died: the next replay starts its own, as any run does,
            # and the server starts two more
            process.kill()
            process.wait(10)
        engine.replay(version, uid, "train.py", settings, ["w1"], (1,), output.append)
        waiting = [p for p in server.children() if spare in _command(p)]
    writers = _writers(output)
    assert [(parent, command) for _, parent, command in writers] == [
        (True, spare),
        (True, spare),
        (False, "-m flor_flows.record.writer"),
    ]
    assert len({pid for pid, _, _ in writers}) == 3
    measured = project.store().query("SELECT forked, loop_seconds FROM replays ORDER BY id")
    assert measured["forked"].tolist() == [1, 1, 0]  # the last had to start its own writer
    assert (measured["loop_seconds"] > 0).all()
    assert _values(project, "w1", "replay") == [0.0, 0.5, 1.5]  # (1,) again: the same value
    server.wait(10)  # the scope ended: so did the server, and the spares it had started next
    assert len(waiting) == 2
    for process in waiting:
        process.wait(10)


def test_a_spare_writer_named_for_another_process_is_not_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(spare.ENV_VAR, f"1:0:1:{os.getppid()}")  # a parent's, inherited
    assert spare.hand_over() is None
    assert spare.ENV_VAR not in os.environ  # not passed on to the next process either
    assert spare.ENV_VAR == forkserver_main.SPARE_WRITER


ENDINGS = {
    "exit": "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)\n",
    "exit-message": "import sys\nsys.exit('no data')\n",
    "raise": "import countlib\n\ndef f():\n    raise ValueError('boom')\n\nf()\n",
    "interrupt": "import atexit\natexit.register(print, 'at exit')\nraise KeyboardInterrupt\n",
    "argv": "import os, sys\nprint(sys.argv[1:], os.getcwd(), os.environ['FLOR_FLOWS_CONTEXT'])\n",
}


def _run(
    script: Path, spawn: children.Spawn | None, on_output: Callable[[str], object] | None = None
) -> tuple[int, list[str], str]:
    """Run `script` as `children.run` runs a replay; its status, output lines (sorted: stdout
    and stderr interleave as they come) and stderr tail."""
    settings = load_settings(script.parent)
    run = children.Launch("uid", settings, script.parent, script, script.name, ("a",))
    output: list[str] = []
    outcome = children.run(run, RunContext(run_uid="uid"), on_output or output.append, spawn=spawn)
    return outcome.returncode, sorted(output), outcome.stderr_tail


def _spawner(script: Path, on_output: Callable[[str], object] = print) -> children.Spawn | None:
    env = children.child_env()
    return forkserver.spawner(script.name, script, script.parent, [script.parent], env, on_output)


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_forked_script_ends_as_a_fresh_one(project: Project, library: Path, ending: str) -> None:
    script = project.write("s.py", "import countlib\n" + ENDINGS[ending])
    fresh = _run(script, None)
    with forkserver.scope():
        spawn = _spawner(script)
        assert spawn is not None
        imports = len(_lines(library))
        forked = _run(script, spawn)
        assert len(_lines(library)) == imports  # it was forked, not started afresh
    assert forked == fresh
    expected = {"exit": 3, "exit-message": 1, "raise": 1, "interrupt": -2}
    assert fresh[0] == expected.get(ending, 0)


ENDLESS = "import os, time\nprint(os.getpid(), flush=True)\nwhile True:\n    time.sleep(0.1)\n"


def test_stop_children_stops_forked_replays(project: Project, library: Path) -> None:
    script = project.write("s.py", "import countlib\n" + ENDLESS)
    printed: list[str] = []
    outcomes: list[tuple[int, list[str], str]] = []
    with forkserver.scope():
        spawn = _spawner(script)
        worker = threading.Thread(
            target=lambda: outcomes.append(_run(script, spawn, printed.append))
        )
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while not printed and time.monotonic() < deadline:
                time.sleep(0.05)
            child = psutil.Process(int(printed[0]))
            assert is_fork_server(child.parent())  # forked
            assert children.stop_children(grace=1.0) == 1
            worker.join(10)
        finally:
            children.stopping.clear()
    assert outcomes and outcomes[0][0] == -signal.SIGTERM
    assert not psutil.pid_exists(child.pid)


LAUNCHER = """
import os, sys
from pathlib import Path
from flor_flows.record.context import RunContext
from flor_flows.replay import forkserver
from flor_flows import children
script = Path(sys.argv[1])
if sys.argv[2:]:  # a directory: servers kept there until the test process ends
    forkserver.keep(Path(sys.argv[2]), os.pidfd_open(os.getppid()))
run = children.Launch("uid", None, script.parent, script, "s.py")
with forkserver.scope():
    env = children.child_env()
    spawn = forkserver.spawner("s.py", script, script.parent, [script.parent], env, print)
    children.run(run, RunContext(), lambda line: print(line, flush=True), spawn=spawn)
"""


def _launched(script: Path, *forks: str) -> tuple[subprocess.Popen[str], psutil.Process]:
    """A launcher replaying `script` (an endless one) through a fork server (kept in `forks`
    if given), and the forked replay, once it runs."""
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(script), *forks],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    line = launcher.stdout.readline()
    while not line.strip().isdigit():
        assert line, "the launcher ended before the script ran"
        line = launcher.stdout.readline()
    return launcher, psutil.Process(int(line))


@pytest.mark.skipif(not forkserver.AVAILABLE, reason="pidfds and PR_SET_PDEATHSIG are Linux's")
def test_a_killed_launcher_leaves_no_server_and_no_forked_replay(
    project: Project, library: Path
) -> None:
    script = project.write("s.py", "import countlib\n" + ENDLESS)
    launcher, child = _launched(script)
    server = child.parent()
    assert is_fork_server(server)
    launcher.kill()  # SIGKILL: no handler of ours runs
    launcher.wait(timeout=10)
    server.wait(timeout=30)
    child.wait(timeout=30)


def test_replays_start_fresh_when_the_server_cannot_fork(
    project: Project, library: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threaded = project.write("t.py", "import threadlib\nprint('ran')\n")
    script = project.write("s.py", "import countlib\nprint('ran')\n")
    said: list[str] = []
    with forkserver.scope():
        assert _spawner(threaded, said.append) is None  # a library thread outlives a fork
        assert _spawner(threaded, said.append) is None  # said once
        assert said == ["flor-flows: replays of t.py start fresh processes: "
                        "threads of its libraries outlive a fork (1)"]  # fmt: skip
        assert _run(threaded, None)[:2] == (0, ["ran"])

        assert _spawner(script, said.append) is not None
        (server,) = _servers()
        server.kill()
        server.wait(10)
        assert _spawner(script, said.append) is None  # it died: fresh processes from now on
        assert said[-1].startswith("flor-flows: replays of s.py start fresh processes: its fork")
        imports = len(_lines(library))
        assert _run(script, None)[:2] == (0, ["ran"])
        assert len(_lines(library)) == imports + 1

    monkeypatch.setenv(forkserver.ENV_VAR, "0")
    with forkserver.scope():
        assert _spawner(script) is None and not _servers()
    monkeypatch.delenv(forkserver.ENV_VAR)
    assert _spawner(script) is None  # no scope, no server


def test_the_server_imports_only_what_precedes_a_change_to_how_imports_resolve(
    tmp_path: Path,
) -> None:
    from flor_flows.replay.forkserver_main import libraries

    script = tmp_path / "train.py"
    script.write_text(
        "import os\n"
        "import numpy\n"
        "try:\n"
        "    import pandas\n"
        "except ImportError:\n"
        "    pandas = None\n"
        "DATA = os.path.join(os.path.dirname(__file__), 'data')  # harmless\n"
        "def helper():\n"
        "    os.environ['X'] = '1'  # not run at import\n"
        "if True:\n"
        "    os.environ['OMP_NUM_THREADS'] = '1'  # the imports below depend on it\n"
        "import torch\n"
        "import sqlalchemy\n"
    )
    assert libraries(str(script), [str(tmp_path)]) == ["numpy", "pandas"]
    script.write_text("import sys\nsys.path.insert(0, 'vendor')\nimport numpy\n")
    assert libraries(str(script), [str(tmp_path)]) == []
    script.write_text("import numpy\nimport torch.nn as nn\n")
    assert libraries(str(script), [str(tmp_path)]) == ["numpy", "torch.nn"]


def test_the_server_also_imports_what_torch_imports_on_first_use(tmp_path: Path) -> None:
    """An optimizer's first use imports torch._dynamo (~1.5 s): the server pays it once."""
    script = tmp_path / "train.py"
    script.write_text("import torch\n")
    probe = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(Path(forkserver.PROGRAM).parent)!r})\n"
        "import forkserver_main\n"
        f"state = forkserver_main.prepare({str(script)!r}, [{str(tmp_path)!r}])\n"
        "print(json.dumps([state['ready'], 'torch._dynamo' in sys.modules]))\n"
    )
    out = subprocess.run(  # in the script's directory, as a server is started
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
    )
    assert out.stdout.strip().splitlines()[-1] == "[true, true]", out.stderr[-2000:]


def test_versions_that_import_the_same_libraries_share_one_server(
    project: Project, library: Path, tmp_path: Path
) -> None:
    """Each forked replay runs in its own version's directory, with its own modules."""
    where = HELPERS.replace('f"{os.getpid()}\\n"', '__file__ + "\\n"')  # which helpers.py
    assert where != HELPERS
    project.write("helpers.py", where + "STEP = 1.0\n")
    project.write("train.py", SCRIPT.replace("w += ", "w += helpers.STEP * "))
    first = project.commit("v1")
    project.run("train.py", "--epochs", "3", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    project.write("helpers.py", where + "STEP = -2.0\n")
    second = project.commit("v2")
    project.run("train.py", "--epochs", "3", env={"FLOR_FLOWS_CHECKPOINT_POLICY": "every"})
    runs = project.store().runs()
    settings = load_settings(project.root)
    new = {"train.py": SCRIPT.replace("w += ", "w += helpers.STEP * ") + NEW[len(SCRIPT) :]}
    output: list[str] = []
    directories = {}
    with engine.sharing_setup():
        for commit in (first, second):
            version = engine.prepare_version(
                project.root, commit, new, ["w_norm"], tmp_path / "work", ["train.py"]
            )
            directories[commit] = version.directory
            (uid,) = runs.loc[runs["code_version"] == commit, "run_uid"]
            engine.replay(version, uid, "train.py", settings, ["w_norm"], on_output=output.append)
        assert len(_servers()) == 1
    said = sorted(_untimed(line) for line in output if line.startswith("flor-flows: replays of"))
    assert said == [
        f"flor-flows: replays of train.py at {c[:10]} fork from one process that imported "
        "numpy, countlib"
        for c in sorted((first, second))
    ]
    assert len(_lines(library)) == 2 + 1  # the two recorded runs, then one server
    imported = _lines(project.root.parent / "helpers-imported")
    for directory in directories.values():  # each replay imported its own version's helpers
        assert imported.count(str(directory / "helpers.py")) == 1, imported
    assert len(project.store().dataframe(["w_norm"]).dropna(subset=["w_norm"])) == 2 * 3


def test_a_module_beside_the_script_shadowing_the_servers_makes_its_replays_fresh(
    project: Project, library: Path
) -> None:
    first = project.write("a/train.py", "import countlib\nprint('a', countlib.SCALE)\n")
    second = project.write("b/train.py", "import countlib\nprint('b', countlib.SCALE)\n")
    project.write("b/countlib.py", "SCALE = 'local'\n")  # what a fresh `python b/train.py` imports
    env = children.child_env()
    said: list[str] = []
    with forkserver.scope():
        spawn_a = forkserver.spawner("a", first, first.parent, [project.root], env, said.append)
        assert spawn_a is not None and _run(first, spawn_a)[:2] == (0, ["a 0.5"])
        spawn_b = forkserver.spawner("b", second, second.parent, [project.root], env, said.append)
        assert spawn_b is not None  # the same imports: the same server ...
        assert _run(second, spawn_b)[:2] == (0, ["b local"])  # ... refuses it: run fresh
        third = project.write("c/train.py", "import countlib, os, sys\nprint(os.getcwd())\n")
        spawn_c = forkserver.spawner("c", third, third.parent, [project.root], env, said.append)
        assert spawn_c is not None and _run(third, spawn_c)[:2] == (0, [str(third.parent)])
        assert len(_servers()) == 1
    assert [_untimed(line) for line in said] == [
        "flor-flows: replays of a fork from one process that imported countlib",
        "flor-flows: replays of b start fresh processes: countlib beside the script shadows "
        "its fork server's",
        "flor-flows: replays of c fork from one process that imported countlib",
    ]


def test_a_server_whose_libraries_import_a_project_module_is_refused(
    project: Project, library: Path
) -> None:
    (library.parent / "site" / "leaky").mkdir()
    (library.parent / "site" / "leaky" / "__init__.py").write_text("import projmod\n")
    project.write("projmod.py", "VALUE = 'project'\n")
    script = project.write("train.py", "import leaky\nprint(leaky.projmod.VALUE)\n")
    said: list[str] = []
    with forkserver.scope():
        assert _spawner(script, said.append) is None
    assert said == [
        "flor-flows: replays of train.py start fresh processes: its libraries import the "
        "project's projmod"
    ]
    assert _run(script, None)[:2] == (0, ["project"])


PARENT = "import os\nimport countlib\nprint(os.getppid(), countlib.SCALE)\n"


@pytest.fixture
def keeper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[bytes]]:
    """Fork servers kept (`forkserver.keep`, as the warm process keeps them) until this
    process ends; the keeper's directory is ours, as the warm process's is its own."""
    process = subprocess.Popen(["sleep", "600"])
    (tmp_path / "forks").mkdir()
    monkeypatch.setattr(forkserver, "_keeper", [])
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no earlier test's measures
    pidfd = os.pidfd_open(process.pid)
    forkserver.keep(tmp_path / "forks", pidfd)
    yield process
    process.kill()
    process.wait()
    os.close(pidfd)
    for server in _servers():  # kept servers end with the keeper: not in the next test
        server.wait(60)


def _forked_by(script: Path, said: list[str] | None = None) -> int:
    """Run `script` in a scope of its own: the pid of its parent (its fork server's if forked)."""
    env = children.child_env()
    on_output = (said if said is not None else []).append
    with forkserver.scope():
        spawn = forkserver.spawner("s", script, script.parent, [script.parent], env, on_output)
        code, printed, _ = _run(script, spawn)
    assert code == 0 and printed[0].endswith(" 0.5"), printed
    return int(printed[0].split()[0])


def test_a_kept_server_serves_later_scopes_until_a_library_changes_or_its_keeper_ends(
    project: Project,
    library: Path,
    keeper: subprocess.Popen[bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = project.write("s.py", PARENT)
    said: list[str] = []
    assert forkserver.measured(script, children.child_env()) is None
    first = _forked_by(script, said)
    assert first != os.getpid() and len(_lines(library)) == 1  # the server imported countlib
    assert is_fork_server(psutil.Process(first))  # its scope closed: it stays
    assert [_untimed(line) for line in said] == [
                    "flor-flows: replays of s fork from one process that imported countlib "
                    "(kept for the next commands until 10 min without a replay, or until "
                    "`flor-flows server stop`)"]  # fmt: skip
    found = forkserver.measured(script, children.child_env())  # for the cost model
    other = project.write("other.py", "import json\n")  # imports no library of it
    assert found is not None and found[0] > 0 and found[1]
    assert forkserver.measured(other, children.child_env()) is None
    assert f"imported countlib in {found[0]:.2f} s" in said[0]  # said, as measured
    assert _forked_by(script) == first and len(_lines(library)) == 1  # a later scope: forked

    countlib = library.parent / "site" / "countlib" / "__init__.py"
    countlib.write_text(countlib.read_text() + "\n")  # upgraded, or edited
    second = _forked_by(script)
    assert second != first and len(_lines(library)) == 2  # a new server imported the new file
    psutil.Process(first).wait(10)  # the stale one retired
    assert _forked_by(script) == second
    (state,) = [json.loads(p.read_text()) for p in importtimes.directory().glob("*.json")]
    assert state["imports"] == ["countlib"] and len(state["measured"]) == 2  # both servers'
    measured = forkserver.measured(script, children.child_env())
    assert measured == (pytest.approx(sum(state["measured"]) / 2), True)  # the median

    keeper.kill()
    psutil.Process(second).wait(10)  # its keeper ended: so did it
    monkeypatch.setattr(forkserver, "_keeper", [])  # as in a new warm process: none kept yet
    (tmp_path / "forks-2").mkdir()
    forkserver.keep(tmp_path / "forks-2", os.pidfd_open(os.getpid()))
    ended = forkserver.measured(script, children.child_env())  # known still, for the next start
    os.close(forkserver._keeper[0].pidfd)
    assert ended == (measured[0], False)


def test_a_kept_server_ends_when_idle_and_the_next_scope_starts_another(
    project: Project,
    library: Path,
    keeper: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forkserver, "KEPT_IDLE_SECONDS", 1.0)
    script = project.write("s.py", PARENT)
    first = _forked_by(script)
    psutil.Process(first).wait(10)  # idle for a second
    second = _forked_by(script)
    assert second != first and len(_lines(library)) == 2


def test_a_killed_launcher_leaves_no_forked_replay_and_its_kept_server_serving(
    project: Project, library: Path, tmp_path: Path
) -> None:
    script = project.write("s.py", "import countlib\n" + ENDLESS)
    (tmp_path / "forks").mkdir()
    launcher, child = _launched(script, str(tmp_path / "forks"))
    server = child.parent()
    assert is_fork_server(server)
    launcher.kill()  # SIGKILL: no handler of ours runs
    launcher.wait(timeout=10)
    child.wait(timeout=30)  # its client went: the server ended it
    try:
        assert is_fork_server(server)
    finally:
        server.terminate()


def test_a_command_starts_its_first_replays_server_ahead_when_the_scripts_import_alike(
    project: Project, library: Path, keeper: subprocess.Popen[bytes]
) -> None:
    script = project.write("s.py", PARENT)
    commit = project.commit("s")
    settings = load_settings(project.root)
    project.write("s.py", PARENT.replace("import os", "import os, json"))  # the same libraries
    assert engine.start_setup(settings, commit, "s.py")
    server = wait_for(lambda: next(iter(_servers()), None), 60, "the fork server started ahead")
    wait_for(lambda: _lines(library), 60, "its import of countlib")
    assert _forked_by(script) == server.pid  # the replay found it
    assert len(_lines(library)) == 1

    project.write("s.py", PARENT.replace("import os", "import os, threadlib"))
    assert not engine.start_setup(settings, commit, "s.py")  # it would start another server
    assert _servers() == [server]


def test_prepare_starts_the_kept_server_and_waits_or_says_why_replays_start_fresh(
    project: Project, library: Path, keeper: subprocess.Popen[bytes]
) -> None:
    script = project.write("s.py", PARENT)
    env = children.child_env()
    said = forkserver.prepare("s.py", script, [project.root], env)
    assert _untimed(said).startswith(
        "flor-flows: replays of s.py fork from one process that imported countlib (kept"
    )
    assert len(_lines(library)) == 1  # imported before it returned
    (server,) = _servers()
    assert _forked_by(script) == server.pid  # a replay's command finds it
    again = forkserver.prepare("s.py", script, [project.root], env)
    assert again.endswith("(it was running already)") and _servers() == [server]

    threaded = project.write("t.py", "import threadlib\n")
    refused = forkserver.prepare("t.py", threaded, [project.root], env)
    assert refused.startswith("flor-flows: replays of t.py start fresh processes: ")
    assert "thread" in refused
    broken = project.write("b.py", "import (\n")
    unparsed = forkserver.prepare("b.py", broken, [project.root], env)
    assert unparsed.startswith("flor-flows: replays of b.py start fresh processes: ")
    assert "cannot be read or parsed" in unparsed and _servers() == [server]


def test_a_command_outside_the_warm_process_starts_no_server_ahead(
    project: Project, library: Path
) -> None:
    project.write("s.py", PARENT)
    commit = project.commit("s")
    assert not forkserver.keeping()  # no `keep`: servers end with their scope
    assert not engine.start_setup(load_settings(project.root), commit, "s.py")
    assert not _servers() and not _lines(library)


APPLIED = """
import os, sys
os.environ["PREFECT_API_URL"] = "http://127.0.0.1:9/server-api"  # the server's, at import
import prefect.settings
from flor_flows.replay import forkserver_main
forkserver_main.apply_env(dict(os.environ, PREFECT_API_URL="http://127.0.0.1:9/replay-api"))
print(prefect.settings.get_current_settings().api.url)
"""


def test_prefects_settings_read_at_use_are_not_in_the_key_and_a_fork_applies_its_own() -> None:
    env = children.child_env()
    exported = env | {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "PWD": "/elsewhere"}
    assert forkserver._key(b"import countlib\n", env) == forkserver._key(b"import countlib\n", exported)  # fmt: skip
    other = env | {"OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "") + "7"}  # read at import
    assert forkserver._key(b"import countlib\n", env) != forkserver._key(b"import countlib\n", other)  # fmt: skip
    # a server that imported Prefect with another API: the forked replay reads its own
    found = subprocess.run([sys.executable, "-c", APPLIED], capture_output=True, text=True)
    assert (found.returncode, found.stdout.strip()) == (0, "http://127.0.0.1:9/replay-api")
