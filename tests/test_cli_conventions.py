"""Command-line conventions over real recorded runs: --version, a closed pipe, tables that fit
the terminal, --csv/--json for machines, unknown names, missing values, --kwargs before a
positional, serve's help, and an arg beside a logged value of the same name."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from importlib.metadata import version

import pandas as pd
import pytest

from deployments import serve as serving
from flor_flows.errors import FlorError
from flor_flows.record.context import RunContext
from tests.conftest import Project, new_project

# v1 takes lr as an arg only; v2 also logs the lr it uses per epoch (a schedule).
V1 = """
import flor_flows as flor
lr = flor.arg("lr", 0.05)
for epoch in flor.loop("epoch", range(2)):
    flor.log("loss", 1.0 / (epoch + 1))
"""
V2 = V1 + '    flor.log("lr", lr * 0.1 ** epoch)\n'
WARM = """
import numpy as np
import flor_flows as flor
w = np.zeros(2)
flor.warm_start(w=w)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(2)):
        w += 1.0
        flor.log("w", float(w.sum()))
"""
MANY = """
import flor_flows as flor
flor.arg("a_rather_long_hyper_parameter_name", "/an/absolute/path/that/goes/on/and/on")
for step in flor.loop("step", range(4000)):
    flor.log("value_with_a_long_name", step / 7)
"""


def cli(
    project: Project, *args: str, columns: int | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env |= {"COLUMNS": str(columns)} if columns else {}
    return subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", *args],
        cwd=project.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def versions(project: Project) -> tuple[str, str]:
    """Two runs: v1 with its arg lr 0.05 only, v2 with --kwargs lr=0.01, logging lr too."""
    project.write("train.py", V1)
    project.commit("v1")
    project.run("train.py")
    project.write("train.py", V2)
    project.commit("v2")
    project.run("train.py", "--kwargs", "lr=0.01")
    first, second = project.store().runs()["run_uid"].tolist()
    return first, second


def test_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", "--version"], capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout == f"flor-flows {version('flor-flows')}\n"


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """One recorded run of MANY (4,000 steps), only read by the tests that take it."""
    project = new_project(tmp_path_factory.mktemp("many") / "proj")
    project.write("many.py", MANY)
    project.run("many.py")
    return project


def test_a_closed_pipe_ends_quietly(many: Project) -> None:
    project = many
    for args in (("dataframe", "value_with_a_long_name"), ("runs",)):
        command = [sys.executable, "-m", "flor_flows.cli", *args, "--csv"]
        writer = subprocess.Popen(
            command, cwd=project.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        head = subprocess.run(["head", "-1"], stdin=writer.stdout, capture_output=True)
        writer.stdout.close()
        stderr = writer.stderr.read().decode()
        writer.wait(timeout=120)
        assert head.stdout.decode().startswith("run_uid,")
        assert stderr == ""
        # 4,000 rows of CSV do not fit a pipe's buffer: the dataframe meets the closed pipe,
        # and ends as git and ls do (141: SIGPIPE); the one-row run list may end first.
        assert writer.returncode == (141 if args[0] == "dataframe" else writer.returncode)
        assert writer.returncode in (0, 141)


def test_tables_fit_the_terminal_and_machines_get_everything(many: Project) -> None:
    project = many
    for args in (("dataframe", "value_with_a_long_name"), ("runs", "--all-columns"), ("runs",)):
        text = cli(project, *args, columns=80)
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert max(map(len, lines)) <= 80 and len(lines) >= 2
    wide = cli(project, "dataframe", "value_with_a_long_name", columns=80).stdout.splitlines()
    assert wide[0].split()[:3] == ["run", "version", "step"] and len(wide[1].split()[0]) == 6
    assert "/an/absolute" not in "\n".join(wide)
    truth = project.store().dataframe(["value_with_a_long_name"])
    as_csv = pd.read_csv(
        io.StringIO(cli(project, "dataframe", "value_with_a_long_name", "--csv").stdout)
    )
    as_json = pd.read_json(
        io.StringIO(cli(project, "dataframe", "value_with_a_long_name", "--json").stdout),
        orient="records",
        precise_float=True,
    )
    for frame in (as_csv, as_json):
        assert list(frame.columns) == list(truth.columns)
        assert frame["run_uid"].tolist() == truth["run_uid"].tolist()
        assert frame["a_rather_long_hyper_parameter_name"].iloc[0].startswith("/an/absolute")
        assert frame["value_with_a_long_name"].tolist() == truth["value_with_a_long_name"].tolist()


def test_an_unknown_name_is_an_error_listing_the_known_ones(
    project: Project, versions: tuple[str, str]
) -> None:
    done = cli(project, "dataframe", "loss,nosuchname")
    assert done.returncode == 2 and done.stderr.splitlines() == [
        "flor-flows: error: unknown name(s) nosuchname; logged names: loss, lr; args: lr"
    ]
    with pytest.raises(FlorError, match="unknown name"):
        project.store().dataframe(["nosuchname"])


def test_an_arg_and_a_logged_value_of_one_name_both_stay(
    project: Project, versions: tuple[str, str]
) -> None:
    first, second = versions
    frame = project.store().dataframe(["lr"])
    rows = frame[["run_uid", "arg.lr", "epoch", "lr"]].astype(object)
    assert rows.where(rows.notna(), None).values.tolist() == [
        [first, 0.05, None, None],  # v1 logged no lr: its row keeps its arg
        [second, 0.01, 0, 0.01],
        [second, 0.01, 1, pytest.approx(0.001)],
    ]
    by_arg = cli(project, "replay", "--apply", "lr", "--where", "arg.lr > 0.02", "--dry-run")
    by_log = cli(project, "replay", "--apply", "lr", "--where", "lr < 0.005", "--dry-run", "--all")
    assert by_arg.returncode == 0 and by_log.returncode == 0, by_arg.stderr + by_log.stderr
    assert first in by_arg.stdout and second not in by_arg.stdout
    assert second in by_log.stdout and first not in by_log.stdout
    assert "where matched 1" in by_log.stdout  # the epoch whose logged lr is 0.001


def test_a_missing_parent_reads_the_same_everywhere(project: Project) -> None:
    project.write("train.py", WARM)
    project.run("train.py")
    (first,) = project.store().runs()["run_uid"].tolist()
    project.run("train.py", env=RunContext(resumed_from=first).to_env())
    for args in (("runs",), ("runs", "--all-columns"), ("dataframe",)):
        text = cli(project, *args, columns=400).stdout
        assert "None" not in text and "NaN" not in text and "nan" not in text, text
    parents = json.loads(cli(project, "runs", "--json").stdout)
    assert [run["resumed_from"] for run in parents] == [None, first]
    listed = cli(project, "runs", columns=400).stdout.splitlines()
    at = listed[0].index("parent")  # columns are aligned; a time holds a space
    assert [line[at:].split()[0] for line in listed[1:]] == ["-", first[-6:]]


def test_kwargs_end_at_the_first_argument_without_an_equals_sign(project: Project) -> None:
    from flor_flows.cli import parser

    given = parser().parse_args(["train", "--kwargs", "lr=0.1", "epochs=2", "train.py"])
    assert (given.script, given.kwargs) == ("train.py", [("lr", "0.1"), ("epochs", "2")])
    project.write("train.py", V1)
    bare = cli(project, "train", "train.py", "--kwargs", "epochs")
    assert bare.returncode == 2 and "--kwargs: expected NAME=VALUE, got 'epochs'" in bare.stderr
    missing = cli(project, "train", "--kwargs", "lr=0.1", "nosuch.py")
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        f"flor-flows: error: training script 'nosuch.py' not found in {project.root}"
    ]  # at once: no Prefect server was started for it


def test_serve_help_lists_every_deployment_served(project: Project) -> None:
    project.write("train.py", V1)
    made = serving.deployments(project.root, "train.py", "data/incoming/*.csv")
    helped = subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", "--help"], capture_output=True, text=True
    ).stdout
    listed = " ".join(helped.split())
    assert len(made) == 3
    for deployment in made:
        assert f"{deployment.flow_name}/{deployment.name}" in listed


def test_an_untracked_entry_script_is_new_code(project: Project) -> None:
    script = (
        "import flor_flows as flor\nfor e in flor.loop('epoch', range(2)):\n    flor.log('a', e)\n"
    )
    project.write("train.py", script)  # never added to git, as people do
    project.run("train.py")  # its code version holds the untracked script
    project.write("train.py", script + "    flor.log('b', 2 * e)\n")
    done = cli(project, "replay", "--apply", "b", "--dry-run")
    assert done.returncode == 0 and done.stdout.splitlines()[1].endswith(" ok"), done.stdout


def test_replay_input_errors_come_before_prefect_starts(
    project: Project, versions: tuple[str, str]
) -> None:
    project.write("train.py", V2 + '    flor.log("new", 1)\n')
    for args, why in [
        (("--apply", "nosuch"), "no flor.log statement for nosuch in the new code"),
        (("--apply", "new", "--where", "zz < 1"), "zz is neither a logged name nor a run column"),
    ]:
        done = cli(project, "replay", *args)
        assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
        assert why in done.stderr and "Flow run" not in done.stderr + done.stdout
