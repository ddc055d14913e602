"""An S3-compatible object store on loopback for the tests: moto in server mode, its own process.

The server picks a free port itself and says which in its log, so there is no port race.
Credentials reach flor-flows the way a team would give them: `storage_options` name the
environment variables (`KEY_VAR`, `SECRET_VAR`) that hold them.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_VAR, SECRET_VAR = "FLOR_TEST_S3_KEY", "FLOR_TEST_S3_SECRET"
_LISTENING = re.compile(r"Running on (http://127\.0\.0\.1:\d+)")


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def options(self) -> dict[str, Any]:
        """`storage_options` for this server: its endpoint, credentials by variable name."""
        return {"endpoint_url": self.endpoint, "key_env": KEY_VAR, "secret_env": SECRET_VAR}

    def toml(self) -> str:
        """The same as a `[tool.flor-flows.storage_options]` table."""
        return (
            "[tool.flor-flows.storage_options]\n"
            f'endpoint_url = "{self.endpoint}"\nkey_env = "{KEY_VAR}"\nsecret_env = "{SECRET_VAR}"\n'
        )

    def filesystem(self) -> Any:
        """An s3fs filesystem on this server, for the tests' own looks at the bucket."""
        import s3fs

        return s3fs.S3FileSystem(
            endpoint_url=self.endpoint, key="test", secret="test", skip_instance_cache=True
        )

    def bucket(self) -> str:
        """A new, empty bucket: its name."""
        name = f"flor-{uuid.uuid4().hex[:12]}"
        self.filesystem().mkdir(name)
        return name


@contextlib.contextmanager
def running(timeout: float = 60.0, **env: str) -> Iterator[S3Server]:
    """A moto server for the block (extra `env` for it, e.g. INITIAL_NO_AUTH_ACTION_COUNT)."""
    with tempfile.TemporaryDirectory(prefix="flor-moto-") as logs:
        log = Path(logs) / "moto.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=os.environ | env,
            )
        try:
            yield S3Server(_endpoint(proc, log, timeout))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _endpoint(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> str:
    """The URL the server listens on, once its log says so (polled up to `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text())
        if found:
            return found[1]
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited ({proc.returncode}):\n{log.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"moto server did not start within {timeout} s:\n{log.read_text()}")


def credentials_env() -> dict[str, str]:
    """The variables `S3Server.options` name (moto takes any credentials)."""
    return {KEY_VAR: "test", SECRET_VAR: "test"}
