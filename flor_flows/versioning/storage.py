"""Filesystems for URLs, opened with the project's storage options, and their errors in one line.

Every fsspec filesystem flor-flows opens for a URL comes from `filesystem`: a URL that is
not a local path gets the project's storage options (`Settings.fs_options`), and an S3 one
also fails fast when its endpoint cannot be reached (a connect timeout of a few seconds and
one retry, unless the options say otherwise) instead of botocore's ten seconds of retries.

`failures` turns what an object store raises (OSError and its s3fs translations,
botocore's EndpointConnectionError, NoCredentialsError, ClientError, a missing s3fs) into one
line naming the URL, its password hidden, as the caller's `FlorError` subclass.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from typing import Any

import fsspec

from flor_flows.errors import FlorError
from flor_flows.secrets import redact_url, redact_urls

_LOCAL = frozenset({"file", "local"})
_S3 = frozenset({"s3", "s3a"})
# botocore config for S3: fail within seconds when the endpoint is unreachable.
S3_FAIL_FAST = {"connect_timeout": 3, "retries": {"total_max_attempts": 2, "mode": "standard"}}
_HINTS = {
    "EndpointConnectionError": "check storage_options.endpoint_url",
    "ConnectTimeoutError": "check storage_options.endpoint_url",
    "NoCredentialsError": "set key_env and secret_env in storage_options (the names of "
    "environment variables holding them) on every host",
    "PartialCredentialsError": "set both key_env and secret_env in storage_options",
    # s3fs's translation of an S3 refusal (not a local file's permissions)
    "PermissionError/ClientError": "check the credentials storage_options name and what "
    "they may access",
}


def _store_errors() -> tuple[type[BaseException], ...]:
    """OSError, and botocore's own errors where botocore is installed (with s3fs)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return (OSError,)
    return (OSError, BotoCoreError, ClientError)


STORE_ERRORS = _store_errors()


def protocol(url: str) -> str:
    """The fsspec protocol of `url` ("file" for a plain path)."""
    found, _ = fsspec.core.split_protocol(url)
    return found or "file"


def options_for(url: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The keyword arguments of the filesystem of `url`: none for a local path; the storage
    options (a fresh copy: botocore edits its config in place) plus S3's fail-fast defaults."""
    scheme = protocol(url)
    if scheme in _LOCAL:
        return {}
    chosen = copy.deepcopy(dict(options or {}))
    if scheme in _S3:
        chosen["config_kwargs"] = copy.deepcopy(S3_FAIL_FAST) | chosen.get("config_kwargs", {})
    return chosen


def filesystem(
    url: str, options: Mapping[str, Any] | None, error: type[FlorError], what: str
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) of `url` with the storage options; a filesystem that cannot be
    opened (its package missing) raises `error` naming `what` and the URL."""
    with failures(error, what, url):
        try:
            return fsspec.core.url_to_fs(url, **options_for(url, options))
        except ImportError as exc:  # fsspec: "Install s3fs to access S3"
            raise error(
                f"{what} {redact_url(url)}: {_first_line(exc)} (pip install 'flor-flows[s3]')"
            ) from exc


def is_file(fs: fsspec.AbstractFileSystem, path: str) -> bool:
    """Whether `path` is a file; unlike fsspec's `isfile`, which answers no to any error, an
    unreachable store raises."""
    try:
        return fs.info(path)["type"] == "file"
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def failures(error: type[FlorError], what: str, url: str) -> Iterator[None]:
    """Raise what the store raises inside as one line: `error("<what> <url>: <reason>")`."""
    try:
        yield
    except STORE_ERRORS as exc:
        raise error(f"{what} {redact_url(url)}: {reason(exc)}") from exc


def reason(exc: BaseException) -> str:
    """One line saying why a store call failed, URLs' passwords hidden, with a hint."""
    name = type(exc).__name__
    text = _first_line(exc)
    hint = _HINTS.get(name) or _HINTS.get(f"{name}/{type(exc.__cause__).__name__}")
    return f"{name}: {text}" + (f"; {hint}" if hint else "")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact_urls(lines[0]) if lines else type(exc).__name__
