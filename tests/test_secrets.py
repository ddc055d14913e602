"""Secrets are never printed: passwords in URLs and secret-looking args (issue 12)."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from flor_flows.errors import StoreError
from flor_flows.secrets import is_secret, redact_url
from flor_flows.store import Store
from flor_flows.training.artifacts import records, summary_markdown
from tests.conftest import Project

SECRET = "hunter2"
BAD_URL = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:5432/flor_no_such_database_q"


def test_urls_are_redacted_and_secret_names_recognised() -> None:
    assert redact_url(BAD_URL) == BAD_URL.replace(SECRET, "***")
    assert redact_url("s3://AKIA:wJal@bucket/x") == "s3://AKIA:***@bucket/x"
    assert redact_url("sqlite:////tmp/store.db") == "sqlite:////tmp/store.db"
    secret = ["db_password", "api_token", "apiKey", "AWS_SECRET_ACCESS_KEY", "hf-token", "key"]
    plain = ["lr", "monkey", "tokenizer", "author", "passes", "keys", "epochs"]
    assert [n for n in secret + plain if is_secret(n)] == secret


def test_a_store_error_does_not_print_the_password(project: Project) -> None:
    with pytest.raises(StoreError) as caught:
        Store(BAD_URL)
    assert SECRET not in str(caught.value) and "postgres:***@" in str(caught.value)
    project.write("train.py", "import flor_flows as flor\nflor.log('x', 1)\n")
    project.commit("x")
    proc = project.run("train.py", env={"FLOR_FLOWS_STORE_URL": BAD_URL}, check=False)
    assert proc.returncode == 1 and "the run was not recorded" in proc.stderr
    assert SECRET not in proc.stderr + proc.stdout


def test_artifacts_mask_secret_args(project: Project) -> None:
    project.write(
        "train.py",
        """
        import flor_flows as flor
        flor.arg("db_password", "x")
        flor.arg("lr", 0.1)
        flor.log("loss", 1.0)
        """,
    )
    project.commit("args")
    project.run("train.py", "--kwargs", f"db_password={SECRET}", "lr=0.5")
    store = project.store()
    uid = store.runs()["run_uid"].iloc[0]
    assert store.runs()["db_password"].iloc[0] == SECRET  # the store keeps what was given
    summary = summary_markdown(store, uid)
    assert SECRET not in summary and "`db_password=***`" in summary and "`lr=0.5`" in summary
    rows = records(pd.DataFrame({"api_token": [SECRET, None], "lr": [0.1, 0.2]}))
    assert rows == [{"api_token": "***", "lr": 0.1}, {"api_token": None, "lr": 0.2}]


def test_the_server_warns_about_a_password_on_its_command_line() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "flor_flows.cli",
            "server",
            "--database",
            f"mysql://u:{SECRET}@h/db",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and SECRET not in proc.stderr
    assert "set FLOR_FLOWS_SERVER_DATABASE=URL instead of --database" in proc.stderr
    assert "unsupported database URL 'mysql://u:***@h/db'" in proc.stderr
