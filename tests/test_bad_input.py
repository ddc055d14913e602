"""Bad input and a broken environment are one line on stderr (exit 2): no traceback, no hang."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Project

SCRIPT = """
import flor_flows as flor
epochs = flor.arg("epochs", 2)
for epoch in flor.loop("epoch", range(epochs)):
    flor.log("loss", 1.0 / (epoch + 1))
"""
NEW = "x = 1\nflor.log('x', x)\nprint(x)\n"
UNREACHABLE = "http://127.0.0.1:9/api"


def cli(
    project: Project, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "flor_flows.cli", *args],
        cwd=project.root,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The single line a failing command printed on stderr (after asserting exit 2)."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flor-flows: error: "), proc.stderr
    return lines[0]


def recorded_store(project: Project) -> Path:
    """The project's store after one recorded run, its writer done with it (no WAL left)."""
    project.write("train.py", SCRIPT)
    project.run("train.py")
    store = project.root / ".flor-flows" / "store.db"
    deadline = time.monotonic() + 20
    while Path(f"{store}-wal").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for side in ("-wal", "-shm"):
        Path(f"{store}{side}").unlink(missing_ok=True)
    return store


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("overwritten", "file is not a database"), ("truncated", "database disk image is malformed")],
)
def test_a_corrupted_store_is_one_line(project: Project, damage: str, reason: str) -> None:
    store = recorded_store(project)
    size = store.stat().st_size
    if damage == "overwritten":
        store.write_bytes(os.urandom(size))
    else:
        with store.open("r+b") as file:
            file.truncate(size // 2)
    expected = f"the store {store} is not a readable SQLite database ({reason}): restore it"
    for args in (("runs",), ("dataframe", "loss"), ("query", "select 1")):
        line = one_error_line(cli(project, *args))
        assert expected in line and "FLOR_FLOWS_STORE_URL" in line, line
    # A script recording into it: its writer process reports the same, as the last line.
    script = project.run("train.py", check=False)
    assert script.returncode != 0 and "Traceback" not in script.stderr, script.stderr
    assert script.stderr.splitlines()[-1].startswith("flor-flows: the run was not recorded: ")
    assert expected in script.stderr.splitlines()[-1], script.stderr


@pytest.mark.parametrize(
    "args",
    [("train", "train.py"), ("replay", "--apply", "loss"), ("serve", "--script", "train.py")],
)
def test_an_unreachable_prefect_api_is_one_line_at_once(project: Project, args) -> None:
    project.write("train.py", SCRIPT)
    project.commit("script")
    start = time.monotonic()
    proc = cli(project, *args, env={"PREFECT_API_URL": UNREACHABLE}, timeout=60)
    elapsed = time.monotonic() - start
    line = one_error_line(proc)
    assert line.startswith(f"flor-flows: error: the Prefect API at {UNREACHABLE} does not answer (")
    assert "start it (flor-flows server)" in line
    assert ("unset PREFECT_API_URL" in line) == (args[0] != "serve"), line
    assert elapsed < 30, elapsed  # Python and Prefect's import; the check itself is one request
    assert not (project.root / ".flor-flows").exists()  # checked before any work started


def test_propagate_reads_utf8_regular_files_only(project: Project, tmp_path: Path) -> None:
    project.write("new.py", "import flor_flows as flor\n" + NEW)
    (project.root / "image.png").write_bytes(
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(64)
    )
    (project.root / "wide.py").write_bytes("x = 1\nprint(x)\n".encode("utf-16"))
    with (project.root / "huge.py").open("wb") as file:
        file.truncate(11 * 1024 * 1024)  # sparse: its size is all that matters
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    refused = {
        "image.png": "cannot read image.png: not UTF-8 text (invalid start byte at byte 0)",
        "wide.py": "cannot read wide.py: not UTF-8 text (invalid start byte at byte 0): it "
        "looks like UTF-16",
        "huge.py": "cannot read huge.py: larger than 10 MB",
        "/dev/zero": "cannot read /dev/zero: it is a device, not a regular file",
        str(fifo): f"cannot read {fifo}: it is a FIFO, not a regular file",
        str(tmp_path): f"cannot read {tmp_path}: it is a directory, not a regular file",
    }
    for old, message in refused.items():
        start = time.monotonic()
        line = one_error_line(cli(project, "propagate", "new.py", old, timeout=30))
        assert line.startswith(f"flor-flows: error: {message}"), line
        assert time.monotonic() - start < 15  # refused at once, never read
    # The same file as UTF-8 with a byte order mark is read (the mark dropped).
    (project.root / "bom.py").write_bytes(b"\xef\xbb\xbfx = 1\r\nprint(x)\r\n")
    placed = cli(project, "propagate", "new.py", "bom.py")
    assert placed.returncode == 0, placed.stderr
    assert "x = 1\nflor.log('x', x)\nprint(x)\n" in placed.stdout, placed.stdout
    assert "\ufeff" not in placed.stdout


def test_a_bad_kwargs_value_ends_the_training_output_clearly(
    project: Project, session_prefect_db: Path
) -> None:
    project.write("train.py", SCRIPT)
    project.commit("script")
    proc = cli(project, "train", "train.py", "--kwargs", "epochs=abc", timeout=240)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "flor-flows: error: training failed: train.py stopped: "
        "--kwargs epochs='abc': cannot convert to int like its default 2"
    ), proc.stderr[-3000:]
