"""`flor-flows backfills [ID]`: the hindsight requests, the runs of one, and --retry-failed
replaying exactly the runs that failed, through a real backfill whose one replay fails."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from flor_flows.replay.backfill import BackfillRequest
from flows.backfill import backfill
from tests.conftest import Project

FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")
TRAIN = """
import argparse
import flor_flows as flor
parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=1.0)
args = parser.parse_args()
state = {"w": 0.0}
with flor.checkpointing(state=state):
    for epoch in flor.loop("epoch", range(2)):
        state["w"] += args.lr
        flor.log("w", state["w"])
"""
# The new statement reads a file the run with lr 2 needs and that is not there at first.
NEW = (
    TRAIN + '        flor.log("w2", state["w"] * (1 if args.lr < 1 else len(open(FLAG).read())))\n'
)


def _cli(project: Project, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOR_FLOWS, *args],
        cwd=project.root,
        env=os.environ | {"PREFECT_API_URL": api, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.timeout(1200)  # two backfills and eight commands, each a process of its own
def test_backfills_list_items_and_retry_only_the_failed_run(
    project: Project, prefect_api: str, tmp_path: Path
) -> None:
    flag = tmp_path / "flag"
    project.write("train.py", TRAIN)
    project.commit("train")
    project.run("train.py", "--lr", "0.5")
    project.run("train.py", "--lr", "2")
    ok, bad = project.store().runs()["run_uid"].tolist()
    project.write("train.py", NEW.replace("FLAG", repr(str(flag))))
    request = BackfillRequest(project=str(project.root), names=["w2"], where="lr > 0.1")
    state = backfill(request, return_state=True)
    assert state.is_failed() and state.message.startswith("1 of 2 runs replayed"), state.message

    listing = _cli(project, prefect_api, "backfills", "--json")
    assert listing.returncode == 0, listing.stderr
    (request,) = pd.read_json(io.StringIO(listing.stdout), orient="records").to_dict("records")
    assert (request["names"], request["replayed"], request["replay failed"]) == ("w2", 1, 1)
    table = _cli(project, prefect_api, "backfills")
    assert table.stdout.split("\n")[0].split()[:3] == ["id", "names", "created"]

    items = _cli(project, prefect_api, "backfills", str(request["id"]))
    lines = items.stdout.strip().split("\n")
    assert lines[0].split()[:3] == ["run", "version", "status"] and len(lines) == 3
    assert lines[1].startswith(ok[-6:]) and " replayed " in lines[1]
    assert lines[2].startswith(bad[-6:]) and "replay failed" in lines[2]
    assert f"replay of run {bad[:10]}" in lines[2]  # the error's first line, cut to fit
    assert max(map(len, lines)) <= 100
    missing = _cli(project, prefect_api, "backfills", "7")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        f"flor-flows: error: no backfill 7; backfills: {request['id']}"
    )

    flag.write_text("xyz")  # what the failed replay lacked is there now
    retried = _cli(project, prefect_api, "backfills", str(request["id"]), "--retry-failed")
    assert retried.returncode == 0, retried.stderr[-3000:]
    retry = f"retrying 1 run(s): flor-flows replay --apply w2 --runs {bad} --where lr > 0.1"
    assert retry in retried.stderr  # the request's selection again: the same request
    store = project.store()
    replays = store.query(
        "SELECT r.uid, COUNT(*) AS n FROM replays p JOIN runs r ON r.id = p.run_id GROUP BY r.uid"
    )
    assert dict(zip(replays["uid"], replays["n"], strict=True)) == {ok: 1, bad: 2}
    statuses = store.query("SELECT backfill_id, run_uid, status FROM backfill_items")
    assert set(statuses["backfill_id"]) == {request["id"]}  # the same request, not a new one
    assert set(statuses["status"]) == {"replayed"}
    w2 = store.dataframe(["w2"]).set_index("run_uid")["w2"]
    assert w2.loc[bad].tolist() == [2 * 3, 4 * 3]  # w times len("xyz")
    again = _cli(project, prefect_api, "backfills", str(request["id"]), "--retry-failed")
    assert again.returncode == 0 and "has no run to retry" in again.stdout
