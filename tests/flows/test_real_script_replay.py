"""Hindsight replay of a training script written the way real ones are, end to end.

The script (tests/data/real_script/, after the PyTorch MNIST example) takes its options from
argparse, reads its data from `../data/digits.npz` (relative to the working directory, outside
the repository), trains in a plain `for batch_idx, (data, target) in enumerate(loader)` loop
inside `train()` and steps a StepLR scheduler once per epoch. Three committed versions are run
from scratch with non-default options; today's version adds an epoch-level `lr_now` and a
step-level `grad_norm`. One backfill flow run computes both over the three runs, and every
replayed value must equal what the hand-written expected version of that run's code logs when
run from scratch with the same command line (the ground truth).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import column, select, table

from flor_flows.replay.backfill import BackfillRequest
from flor_flows.store import open_store
from flows.backfill import backfill
from tests.conftest import git

SCRIPTS = Path(__file__).resolve().parents[1] / "data" / "real_script"
VERSIONS = (1, 2, 3)
EPOCHS = 3
ARGV = ("--epochs", str(EPOCHS), "--lr", "0.5", "--gamma", "0.5", "--log-interval", "1")
NAMES = ("lr_now", "grad_norm")
STEPS_PER_EPOCH = 4  # 240 training samples, batches of 64
STEP_EPOCHS = [e for e in range(EPOCHS) for _ in range(STEPS_PER_EPOCH)]  # of each grad_norm
LOGS = table(
    "logs", column("id"), column("run_id"), column("name"), column("source"), column("num"),
    column("i0"),
)  # fmt: skip
RUNS = table("runs", column("id"))

Values = dict[str, list[tuple[int | None, float]]]


def _write_digits(path: Path) -> None:
    """300 of scikit-learn's bundled 8x8 digits, scaled to [0, 1]: 240 to train, 60 to test."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    images = (images[:300] / 16.0).astype(np.float32).reshape(-1, 8, 8)
    labels = labels[:300].astype(np.int64)
    np.savez(
        path,
        train_images=images[:240],
        train_labels=labels[:240],
        test_images=images[240:],
        test_labels=labels[240:],
    )


def _new_repo(root: Path, digits: Path) -> Path:
    """`root/proj`, a fresh git repository, with the data beside it in `root/data`."""
    proj = root / "proj"
    proj.mkdir(parents=True)
    (root / "data").mkdir()
    shutil.copyfile(digits, root / "data" / "digits.npz")
    git(proj, "init", "-q", "-b", "main")
    (proj / ".gitignore").write_text(".flor-flows/\n")
    return proj


def _commit_script(proj: Path, script: str, message: str) -> None:
    shutil.copyfile(SCRIPTS / script, proj / "train.py")
    git(proj, "add", "-A")
    git(proj, "commit", "-q", "-m", message)


def _train(proj: Path) -> None:
    """Run train.py from scratch in the repository, as a user would."""
    proc = subprocess.run(
        [sys.executable, "train.py", *ARGV],
        cwd=proj,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"train.py in {proj} failed:\n{proc.stderr[-3000:]}"


def _store_url(proj: Path) -> str:
    return f"sqlite:///{proj / '.flor-flows' / 'store.db'}"


def _run_ids(url: str) -> list[int]:
    with open_store(url).engine.connect() as conn:
        return list(conn.execute(select(RUNS.c.id).order_by(RUNS.c.id)).scalars())


def _values(url: str, run_id: int, source: str, names: tuple[str, ...]) -> Values:
    """name -> [(epoch iteration, value)] of one run, in logged order (epoch, then write)."""
    query = (
        select(LOGS.c.name, LOGS.c.i0, LOGS.c.num)
        .where(LOGS.c.run_id == run_id, LOGS.c.source == source, LOGS.c.name.in_(names))
        .order_by(LOGS.c.i0, LOGS.c.id)  # segments of one replay may be written in any order
    )
    found: Values = {name: [] for name in names}
    with open_store(url).engine.connect() as conn:
        for name, i0, num in conn.execute(query):
            found[name].append((i0, num))
    return found


def _replayed_epochs(url: str) -> list[int | None]:
    query = select(LOGS.c.i0).where(LOGS.c.source == "replay").order_by(LOGS.c.id)
    with open_store(url).engine.connect() as conn:
        return list(conn.execute(query).scalars())


def _ground_truth(tmp: Path, digits: Path, k: int) -> tuple[Values, Values]:
    """vK_expected run from scratch in its own repository: its new and its old values."""
    proj = _new_repo(tmp / f"truth{k}", digits)
    _commit_script(proj, f"v{k}_expected.py", f"v{k} expected")
    _train(proj)
    url = _store_url(proj)
    [run_id] = _run_ids(url)
    return _values(url, run_id, "forward", NAMES), _values(url, run_id, "forward", ("loss", "acc"))


@pytest.mark.timeout(300)  # ~1 min on 2 idle cores (9 torch processes); 4.7 min seen at load 8
def test_replay_of_an_argparse_script_matches_its_new_code_run_from_scratch(
    tmp_path: Path,
) -> None:
    digits = tmp_path / "digits.npz"
    _write_digits(digits)
    with ThreadPoolExecutor(max_workers=1) as pool:  # the ground truth, beside the history
        truths = {k: pool.submit(_ground_truth, tmp_path, digits, k) for k in VERSIONS}

        proj = _new_repo(tmp_path, digits)
        for k in VERSIONS:
            _commit_script(proj, f"v{k}.py", f"v{k}")
            _train(proj)
        truth = {k: future.result() for k, future in truths.items()}

    url = _store_url(proj)
    runs = dict(zip(VERSIONS, _run_ids(url), strict=True))
    for k in VERSIONS:
        new, old = truth[k]
        # the ground truth ran with the command line's options, not the defaults (lr 1.0, gamma 0.7)
        assert [v for _, v in new["lr_now"]] == [0.25, 0.125, 0.0625]
        assert [i for i, _ in new["grad_norm"]] == STEP_EPOCHS
        # the two new statements change nothing: the old values are the historical run's own
        assert old == _values(url, runs[k], "forward", ("loss", "acc")), f"v{k}"

    shutil.copyfile(
        SCRIPTS / "v3_expected.py", proj / "train.py"
    )  # today: v3 + both statements, uncommitted
    state = backfill(BackfillRequest(project=str(proj), names=list(NAMES)), return_state=True)
    assert state.is_completed(), state.message
    assert "3 of 3 runs replayed" in state.message

    for k in VERSIONS:
        got = _values(url, runs[k], "replay", NAMES)
        for name in NAMES:  # bit for bit: same code, same state, same batches (measured: exact)
            assert got[name] == truth[k][0][name], (
                f"{name} of the v{k} run, (epoch, value): replayed {got[name]}, "
                f"from scratch {truth[k][0][name]}"
            )
    assert all(i is not None and i < EPOCHS for i in _replayed_epochs(url)), (
        "the replay ran epochs the runs did not record"
    )
