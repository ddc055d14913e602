"""The main job end to end: real git, real retraining flow runs, real training, the real store."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from flor_flows import demo as demo_module
from flor_flows.demo import STEPS, run_demo
from flor_flows.errors import DemoStepFailed
from flor_flows.store import project_store


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, str]:
    workdir = tmp_path_factory.mktemp("demo") / "repo"
    out = io.StringIO()
    table = run_demo(workdir, out=out)
    return workdir, table, out.getvalue()


def test_one_run_per_version_each_with_step_losses(demo: tuple[Path, pd.DataFrame, str]) -> None:
    _, table, _ = demo
    versions = [s.version for s in STEPS]
    assert sorted(table["version"].unique()) == versions
    runs = table.groupby("version")["run_uid"].nunique()
    assert runs.to_dict() == dict.fromkeys(versions, 1)
    for version in versions:
        losses = table.loc[(table["version"] == version) & table["loss"].notna()]
        assert len(losses) > 0, version
        assert losses["step"].notna().all(), version


def test_metrics_appear_with_the_version_that_logs_them(
    demo: tuple[Path, pd.DataFrame, str],
) -> None:
    _, table, _ = demo
    epoch_rows = table.loc[table["acc"].notna()]
    by_version = {v: rows for v, rows in epoch_rows.groupby("version")}
    assert by_version["v1"]["lr"].isna().all()
    assert by_version["v2"]["lr"].notna().all()
    assert by_version["v2"]["val_loss"].isna().all()
    assert by_version["v3"]["val_loss"].notna().all()
    # v2 anneals the learning rate from its default 0.1; v3 ran with --kwargs lr=0.05.
    assert by_version["v2"].sort_values("epoch")["lr"].iloc[0] == pytest.approx(0.1)
    assert by_version["v2"].sort_values(["epoch", "step"])["lr"].is_monotonic_decreasing
    assert by_version["v3"].sort_values("epoch")["lr"].iloc[0] == pytest.approx(0.05)


def test_each_run_has_its_own_code_version(demo: tuple[Path, pd.DataFrame, str]) -> None:
    _, table, _ = demo
    per_run = table.groupby("run_uid")["code_version"].unique()
    assert all(len(v) == 1 for v in per_run)
    assert per_run.map(lambda v: v[0]).nunique() == len(STEPS)


def test_each_day_trains_on_its_arrived_batch_warm_started(
    demo: tuple[Path, pd.DataFrame, str],
) -> None:
    workdir, table, _ = demo
    used = table.groupby("version")["data.batch"].unique()
    expected = {s.version: f"data/incoming/2026-11-0{i}.csv" for i, s in enumerate(STEPS, 1)}
    assert {v: len(b) for v, b in used.items()} == dict.fromkeys(expected, 1)
    assert all(used[v][0].endswith(b) for v, b in expected.items())
    runs = project_store(workdir).runs().sort_values("started_at")
    uids = runs["run_uid"].tolist()
    assert runs["resumed_from"].tolist()[1:] == uids[:-1]  # each day continues the previous


def test_training_learns(demo: tuple[Path, pd.DataFrame, str]) -> None:
    _, table, _ = demo
    epoch_rows = table.loc[table["acc"].notna()]
    assert ((epoch_rows["acc"] >= 0.0) & (epoch_rows["acc"] <= 1.0)).all()
    final = epoch_rows.sort_values("epoch").groupby("version")["acc"].last()
    assert (final > 0.5).all(), final.to_dict()
    per_epoch = table.groupby(["version", "epoch"])["loss"].mean().groupby("version")
    assert (per_epoch.last() < per_epoch.first()).all(), per_epoch.apply(list).to_dict()
    first_epoch = epoch_rows[epoch_rows["epoch"] == 0].groupby("version")["acc"].first()
    assert first_epoch["v2"] > first_epoch["v1"] + 0.2  # day 2 starts from day 1's model


def test_progress_and_repo(demo: tuple[Path, pd.DataFrame, str]) -> None:
    workdir, _, printed = demo
    assert "[day 1/4] v1, 2026-11-01.csv arrived: retraining ..." in printed
    assert "[day 3/4] v3, 2026-11-03.csv arrived (lr=0.05): retraining ..." in printed
    assert printed.count("warm-started from") == 3 and "(from scratch)" in printed
    assert "no new data" in printed and "digits-metrics" not in printed  # keys name the project
    assert f"{workdir.name}-metrics" in printed
    log = subprocess.run(
        ["git", "log", "--format=%s", "main"], cwd=workdir, capture_output=True, text=True
    ).stdout.split("\n")
    assert [f"train.py: {s.version}" for s in reversed(STEPS)] == log[: len(STEPS)]
    assert (workdir / "data" / "test.csv").is_file()


def test_rejects_a_non_empty_workdir(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("x")
    with pytest.raises(FileExistsError):
        run_demo(tmp_path, out=io.StringIO())


def test_a_failing_run_raises_with_its_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nsys.exit('boom: no column named label')\n")
    monkeypatch.setattr(demo_module, "_version_file", lambda version: broken)
    with pytest.raises(
        DemoStepFailed, match="(?s)retraining flow run ended FAILED.*boom: no column"
    ):
        run_demo(tmp_path / "repo", out=io.StringIO())


def test_hindsight_fills_grad_norm_for_every_past_version(
    demo: tuple[Path, pd.DataFrame, str],
) -> None:
    workdir, table, printed = demo
    steps = table[table["loss"].notna()]
    assert steps["grad_norm"].notna().all()  # every step of every version, v1 to v4
    assert sorted(steps["version"].unique()) == [s.version for s in STEPS]
    assert (steps["grad_norm"] > 0).all()
    assert "[hindsight]" in printed and "4 of 4 runs replayed" in printed
    replays = project_store(workdir).query("select code_commit, status from replays")
    assert replays["status"].tolist() == ["completed"] * 4
    assert replays["code_commit"].nunique() == 4  # each run in its own code version


def test_options_given_on_the_command_line_are_recorded_and_replayed_verified(
    demo: tuple[Path, pd.DataFrame, str],
) -> None:
    workdir, _, printed = demo
    assert "[day 4/4] v4, 2026-11-04.csv arrived (--weight-decay 1e-3 --smoothing 0.1)" in printed
    runs = project_store(workdir).runs().sort_values("started_at")
    assert runs.iloc[-1][["weight_decay", "smoothing"]].tolist() == [0.001, 0.1]  # argparse
    checked = re.search(r"verified: the replays re-logged (\d+) values .*: all equal", printed)
    assert checked and int(checked.group(1)) > 100, printed
