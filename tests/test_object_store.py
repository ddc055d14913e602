"""Object-store settings (issue 16): `storage_options` in pyproject.toml or the environment,
credentials only by environment-variable name, used by every fsspec call, and a store that
cannot be used failing fast in one line. The object store is moto's S3 server on loopback.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flor_flows.config import Settings, load_settings
from flor_flows.errors import CheckpointError, CodeArchiveError, DataError, StorageOptionsError
from flor_flows.replay.engine import prepare_version, replay
from flor_flows.training import arrivals
from flor_flows.versioning import archives, data, storage
from flor_flows.versioning.checkpoints import CheckpointStore, snapshot
from tests import s3server
from tests.conftest import Project, git
from tests.s3server import S3Server

SECRET = "s3cr3t-value"
SCRIPT = """
import numpy as np
import flor_flows as flor
rows = np.loadtxt(flor.data("batch", "data/batch.csv"), delimiter=",")
w = np.zeros(3)
with flor.checkpointing(w=w):
    for epoch in flor.loop("epoch", range(3)):
        w += rows.sum(axis=0) * (epoch + 1)
        flor.log("w", float(w.sum()))
"""
NEW = SCRIPT + '        flor.log("w_max", float(w.max()))\n'


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3server.running() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; credentials only in the variables `storage_options` name."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in s3server.credentials_env().items():
        monkeypatch.setenv(key, value)
    return s3.bucket()


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text, text
    return text


# --- settings -----------------------------------------------------------------------------


def test_storage_options_come_from_pyproject_or_the_environment(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.write(
        "pyproject.toml",
        """
        [tool.flor-flows.storage_options]
        endpoint_url = "http://127.0.0.1:9000"
        key_env = "TEAM_S3_KEY"
        secret_env = "TEAM_S3_SECRET"
        config_kwargs = { connect_timeout = 1 }
        """,
    )
    monkeypatch.setenv("TEAM_S3_KEY", "AKIAEXAMPLE")
    monkeypatch.setenv("TEAM_S3_SECRET", SECRET)
    settings = load_settings(project.root)
    assert SECRET not in settings.storage_options  # settings keep the variables' names only
    options = settings.fs_options()
    assert options == {
        "endpoint_url": "http://127.0.0.1:9000",
        "key": "AKIAEXAMPLE",
        "secret": SECRET,
        "config_kwargs": {"connect_timeout": 1},
    }
    # what an S3 filesystem gets: fail-fast defaults under the user's own choices
    given = storage.options_for("s3://bucket/x", options)
    assert given["config_kwargs"] == storage.S3_FAIL_FAST | {"connect_timeout": 1}
    assert storage.options_for(str(project.root / "x"), options) == {}  # a local path: none

    monkeypatch.setenv("FLOR_FLOWS_STORAGE_OPTIONS", '{"endpoint_url": "http://minio:9000"}')
    assert load_settings(project.root).fs_options() == {"endpoint_url": "http://minio:9000"}

    monkeypatch.delenv("FLOR_FLOWS_STORAGE_OPTIONS")
    monkeypatch.delenv("TEAM_S3_SECRET")
    with pytest.raises(StorageOptionsError, match="TEAM_S3_SECRET, which is not set"):
        settings.fs_options()


@pytest.mark.parametrize(
    ("table", "named"),
    [
        (f'secret = "{SECRET}"', "storage_options.secret"),
        (f'key = "{SECRET}"', "storage_options.key"),
        (
            f'client_kwargs = {{ aws_session_token = "{SECRET}" }}',
            "client_kwargs.aws_session_token",
        ),
        (f'endpoint_url = "http://admin:{SECRET}@127.0.0.1:9000"', "storage_options.endpoint_url"),
        (f'secret_env = "{SECRET}!"', "storage_options.secret_env"),
    ],
)
def test_a_literal_credential_in_a_file_is_refused(
    project: Project, table: str, named: str
) -> None:
    project.write("pyproject.toml", f"[tool.flor-flows.storage_options]\n{table}\n")
    with pytest.raises(StorageOptionsError) as caught:
        load_settings(project.root)
    message = _one_line(caught.value)
    assert named in message and SECRET not in message
    assert "_env" in message  # says what to write instead


def test_a_literal_credential_in_the_environment_is_refused(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOR_FLOWS_STORAGE_OPTIONS", json.dumps({"token": SECRET}))
    with pytest.raises(StorageOptionsError, match="storage_options.token holds a literal") as e:
        load_settings(project.root)
    assert SECRET not in str(e.value)
    monkeypatch.setenv("FLOR_FLOWS_STORAGE_OPTIONS", "{not json")
    with pytest.raises(StorageOptionsError, match="FLOR_FLOWS_STORAGE_OPTIONS is not JSON"):
        load_settings(project.root)


# --- a run and its replay with everything on the object store -----------------------------


def test_checkpoints_data_and_code_on_the_object_store_replay_to_the_ground_truth(
    project: Project, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    settings = (
        f'[tool.flor-flows]\ncheckpoint_url = "s3://{bucket}/checkpoints"\n'
        f'data_url = "s3://{bucket}/data"\ncheckpoint_policy = "every"\n\n'
    )
    project.write("pyproject.toml", settings + s3.toml())
    project.write("data/batch.csv", "1,2,3\n4,5,6\n")
    project.write(".gitignore", ".flor-flows/\ndata/\n")
    project.write("train.py", SCRIPT)
    commit = project.commit("train")
    project.run("train.py")
    (run,) = project.store().runs().itertuples()

    fs = s3.filesystem()
    assert len(fs.glob(f"{bucket}/checkpoints/{run.run_uid}/*.ckpt")) == 3
    assert len(fs.glob(f"{bucket}/data/*/*.csv")) == 1
    (recorded,) = fs.glob(f"{bucket}/checkpoints/{archives.LOCATION}/*.sha256")
    assert recorded.endswith(f"{commit}.sha256")
    assert not (project.root / ".flor-flows" / "checkpoints").exists()  # nothing local

    (project.root / "data" / "batch.csv").unlink()  # the replay reads the stored copy
    settings = load_settings(project.root)
    version = prepare_version(
        project.root, run.code_version, {"train.py": NEW}, ["w_max"], tmp_path / "v"
    )
    replay(version, run.run_uid, "train.py", settings, ["w_max"], on_output=lambda _: None)
    replayed = project.store().dataframe(["w", "w_max"]).sort_values("epoch")

    # ground truth: the new code run from scratch on the same batch
    truth = Project(tmp_path / "truth")
    truth.root.mkdir()
    git(truth.root, "init", "-q", "-b", "main")
    truth.write("data/batch.csv", "1,2,3\n4,5,6\n")
    truth.write("train.py", NEW)
    truth.run("train.py")
    fresh = truth.store().dataframe(["w", "w_max"]).sort_values("epoch")
    assert replayed["w_max"].tolist() == fresh["w_max"].tolist()
    assert replayed["w"].tolist() == fresh["w"].tolist()


def test_arriving_batches_are_listed_on_the_object_store(
    project: Project, s3: S3Server, bucket: str
) -> None:
    fs = s3.filesystem()
    fs.pipe_file(f"{bucket}/inbox/a.csv", b"1\n")
    fs.pipe_file(f"{bucket}/inbox/b.csv", b"2\n")
    options = {"endpoint_url": s3.endpoint, "key": "test", "secret": "test"}
    found = arrivals.arrived(project.root, f"s3://{bucket}/inbox/*.csv", options)
    assert sorted(found) == [f"s3://{bucket}/inbox/a.csv", f"s3://{bucket}/inbox/b.csv"]


# --- failures: one line, fast, the URL named with its password hidden -----------------------


def test_an_unreachable_endpoint_fails_in_one_line_within_seconds(
    project: Project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in s3server.credentials_env().items():
        monkeypatch.setenv(key, value)
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    options = {"endpoint_url": endpoint, "key": "test", "secret": "test"}
    (tmp_path / "b.csv").write_text("1,2\n")
    attempts = [
        (CheckpointError, lambda: CheckpointStore.read("s3://b/r/e-0.ckpt", None, options)),
        (CheckpointError, lambda: CheckpointStore("s3://b/c", options).write("r", "e", 0, {})),
        (
            DataError,
            lambda: data.version("b", str(tmp_path / "b.csv"), "s3://b/d", tmp_path, options),
        ),
        (DataError, lambda: data.fetch("s3://b/d/x.csv", "0" * 64, tmp_path, options)),
        (DataError, lambda: arrivals.arrived(project.root, "s3://b/in/*.csv", options)),
    ]
    for error, attempt in attempts:
        start = time.monotonic()
        with pytest.raises(error) as caught:
            attempt()
        assert time.monotonic() - start < 8  # not botocore's default 10 s of retries
        message = _one_line(caught.value)
        assert "s3://b/" in message and "EndpointConnectionError" in message, message
        assert "endpoint_url" in message  # what to check

    # a training run whose checkpoint location is unreachable says so in one line, fast
    project.write(
        "pyproject.toml",
        f'[tool.flor-flows]\ncheckpoint_url = "s3://b/checkpoints"\n\n{S3Server(endpoint).toml()}',
    )
    project.write("train.py", SCRIPT.replace('flor.data("batch", "data/batch.csv")', '"b.csv"'))
    project.write("b.csv", "1,2,3\n")
    project.commit("train")
    start = time.monotonic()
    proc = project.run("train.py", check=False)
    assert proc.returncode != 0 and time.monotonic() - start < 30
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("flor_flows.errors.")]
    assert "CheckpointError: checkpoint location 's3://b/checkpoints' is not writable" in line


def test_bad_or_missing_credentials_fail_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with s3server.running(INITIAL_NO_AUTH_ACTION_COUNT="0") as strict:  # checks credentials
        bad = {"endpoint_url": strict.endpoint, "key": "AKIAWRONG", "secret": "wrong"}
        none = {"endpoint_url": strict.endpoint}
        for options, expected in ((bad, "PermissionError"), (none, "NoCredentialsError")):
            start = time.monotonic()
            with pytest.raises(CheckpointError) as caught:
                CheckpointStore("s3://b/c", options).write("r", "e", 0, snapshot({}))
            assert time.monotonic() - start < 8
            message = _one_line(caught.value)
            assert message.startswith("cannot write checkpoint s3://b/c/r/e-0.ckpt: ")
            assert expected in message and "wrong" not in message
            assert "key_env" in message or "credentials" in message

        monkeypatch.setenv("WRONG_KEY", "AKIAWRONG")
        monkeypatch.setenv("WRONG_SECRET", "wrong")
        references = {"endpoint_url": strict.endpoint, "key_env": "WRONG_KEY"}
        references["secret_env"] = "WRONG_SECRET"
        settings = Settings(
            root=tmp_path,
            store_url="sqlite://",
            checkpoint_url="s3://b/checkpoints",
            data_url="none",
            checkpoint_policy="every",
            storage_options=json.dumps(references),
        )
        with pytest.raises(CodeArchiveError, match="PermissionError") as caught:
            archives.fetch("a" * 40, settings)
        assert "wrong" not in _one_line(caught.value)


def test_a_password_in_a_url_is_never_shown(tmp_path: Path) -> None:
    source = f"http://reader:{SECRET}@127.0.0.1:{_closed_port()}/batch.csv"
    with pytest.raises(DataError) as caught:
        data.version("b", source, str(tmp_path / "store"), tmp_path / "cache")
    message = _one_line(caught.value)
    assert SECRET not in message and "reader:***@127.0.0.1" in message
