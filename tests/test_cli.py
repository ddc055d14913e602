"""The `flor-flows` command line over a real recorded project."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import Project

SCRIPT = """
import flor_flows as flor
for epoch in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (epoch + 1))
    flor.log("acc", 0.5 * epoch)
"""


def cli(project: Project, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", *args],
        cwd=project.root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_runs_dataframe_and_query(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py")
    runs = cli(project, "runs")
    assert runs.returncode == 0 and "completed" in runs.stdout and "train.py" in runs.stdout
    assert runs.stdout.split("\n")[0].split() == [
        *("run", "version", "status", "started", "script", "parent", "flow", "run")
    ]
    frame = cli(project, "dataframe", "loss,acc", "--csv")
    lines = frame.stdout.strip().splitlines()
    assert lines[0].endswith("epoch,loss,acc") and len(lines) == 3
    assert lines[2].endswith(",1,0.5,0.5")
    query = cli(project, "query", "select count(*) as n from logs", "--csv")
    assert query.stdout.split() == ["n", "4"]


def test_errors_and_help(project: Project, tmp_path) -> None:
    outside = subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", "runs"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert outside.returncode == 2 and "not inside a git repository" in outside.stderr
    helped = cli(project, "dataframe", "--help")
    assert helped.returncode == 0 and "comma-separated names" in helped.stdout


def test_bad_input_is_a_clear_error_not_a_traceback(project: Project) -> None:
    project.write("train.py", "import flor_flows as flor\nflor.log('x', 1)\n")
    project.run("train.py")
    bad_sql = cli(project, "query", "selec")
    assert bad_sql.returncode == 2 and "query failed" in bad_sql.stderr
    assert "Traceback" not in bad_sql.stderr
    missing = cli(project, "propagate", "nope.py", "train.py")
    assert missing.returncode == 2 and "cannot read nope.py" in missing.stderr
    for args, why in [
        (("--apply", "x", "--max-parallel", "0"), "max-parallel: Input should be greater"),
        (("--apply", ","), "--apply: nothing given (at least one is needed)"),
        (
            ("--apply", "1x"),
            "--apply: '1x' is not a name (letters, digits and _, not first a digit)",
        ),
        (("--apply", "a-b"), "--apply: 'a-b' is not a name"),
    ]:
        invalid = cli(project, "replay", *args, "--dry-run")
        assert invalid.returncode == 2 and why in invalid.stderr, invalid.stderr
        assert "Traceback" not in invalid.stderr


def test_reading_a_project_without_runs_creates_nothing(project: Project) -> None:
    for args in (("runs",), ("dataframe", "loss"), ("query", "select 1"), ("replay", "--apply", "x", "--dry-run")):  # fmt: skip
        empty = cli(project, *args)
        assert empty.returncode == 2, empty.stderr
        assert empty.stderr.startswith("flor-flows: error: no runs recorded yet: there is no store")
    assert not (project.root / ".flor-flows").exists()


def test_query_cannot_change_the_store(project: Project) -> None:
    project.write("train.py", SCRIPT)
    project.run("train.py")
    dropped = cli(project, "query", "DROP TABLE logs")
    assert dropped.returncode == 2 and len(dropped.stderr.splitlines()) == 1, dropped.stderr
    assert "query failed: not authorized" in dropped.stderr
    assert cli(project, "query", "select count(*) as n from logs", "--csv").stdout.split() == [
        "n",
        "4",
    ]


def test_a_store_on_read_only_storage_can_be_read(project: Project) -> None:
    """A read-only bind mount of the store's directory (root, as in CI): every read works."""
    project.write("train.py", SCRIPT)
    project.run("train.py")
    state = project.root / ".flor-flows"
    subprocess.run(["mount", "--bind", str(state), str(state)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(state)], check=True)
        assert not os.access(state, os.W_OK)
        runs = cli(project, "runs")
        assert runs.returncode == 0 and "completed" in runs.stdout, runs.stderr
        frame = cli(project, "dataframe", "loss,acc", "--csv")
        assert frame.returncode == 0 and frame.stdout.strip().splitlines()[2].endswith(",1,0.5,0.5")
        query = cli(project, "query", "select count(*) as n from logs", "--csv")
        assert query.stdout.split() == ["n", "4"], query.stderr
        api = subprocess.run(
            [sys.executable, "-c", "import flor_flows as flor; print(len(flor.dataframe('loss')))"],
            cwd=project.root,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert api.stdout.split() == ["2"], api.stderr
        train = project.run("train.py", check=False)  # a run cannot be recorded: said why
        assert train.returncode == 1
        assert (
            f"({state / 'store.db'} is read-only here: the store can be read, not written)"
            in train.stderr
        )
    finally:
        subprocess.run(["umount", str(state)], check=True)
