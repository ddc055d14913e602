"""Data batches: hash each declared batch and keep a content-addressed copy of it.

The copy lets a run be replayed after its source file changed or vanished. Any fsspec URL
works as a source and as the data store (opened with the project's storage options); the
script always gets a local path back.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from flor_flows.errors import DataError
from flor_flows.secrets import redact_url
from flor_flows.versioning import paths, storage

CHUNK = 1 << 20
NO_COPY = ("", "none")


@dataclass(frozen=True)
class Batch:
    """A versioned data batch: where it came from, its hash and size, its copy, what to read."""

    name: str
    uri: str  # as declared (or overridden)
    sha256: str
    bytes: int
    stored_uri: str | None  # the content-addressed copy, None when copying is off
    local_path: str  # what the script reads


_SUFFIX = re.compile(r"(\.[A-Za-z0-9_-]{1,16}){0,2}")


def _suffix(uri: str) -> str:
    """The batch's extension(s), kept on its copies when they are plain (else none)."""
    suffix = "".join(PurePosixPath(uri.split("?")[0]).suffixes[-2:])
    return suffix if _SUFFIX.fullmatch(suffix) else ""


_is_local = paths.is_local


def resolve(base: Path, uri: str) -> str:
    """`uri` with a relative local path taken from `base` (a project directory)."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str(base / uri)


def _store(tmp: str, dst_fs: fsspec.AbstractFileSystem, dst_path: str) -> None:
    """Put the local file `tmp` at `dst_path`, whole or not at all (`tmp` may be consumed)."""
    dst_fs.makedirs(str(PurePosixPath(dst_path).parent), exist_ok=True)
    with paths.atomic(dst_fs, dst_path) as part:
        if _is_local(dst_fs):
            try:
                os.replace(tmp, part)  # same filesystem: no copy
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copyfile(tmp, part)
        else:
            dst_fs.put_file(tmp, part)


def version(
    name: str,
    uri: str,
    store_url: str,
    cache_dir: Path,
    storage_options: Mapping[str, Any] | None = None,
) -> Batch:
    """Hash the batch at `uri`, copy it into `store_url` (unless "none"), return its record.

    The file is read once: hashing and copying share one streaming pass. Every copy (the
    store's and the local cache's) appears whole under its final name or not at all.
    """
    what = f"data batch {name!r}: cannot version"
    src_fs, src_path = storage.filesystem(uri, storage_options, DataError, what)
    digest = hashlib.sha256()
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache = fsspec.filesystem("file")
    paths.clean(cache, str(cache_dir))
    tmp = paths.temp_name(f"{cache_dir}/batch")
    size = 0
    try:
        if not storage.is_file(src_fs, src_path):
            raise DataError(
                f"data batch {name!r}: {redact_url(uri)!r} does not exist or is not a file"
            )
        with src_fs.open(src_path, "rb") as src, open(tmp, "wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        local = cache_dir / f"{sha}{_suffix(uri)}"
        if store_url.lower() in NO_COPY:
            if _is_local(src_fs):
                return Batch(name, uri, sha, size, None, str(Path(src_path).resolve()))
            os.replace(tmp, local)
            return Batch(name, uri, sha, size, None, str(local))
        stored = f"{store_url.rstrip('/')}/{sha[:2]}/{sha}{_suffix(uri)}"
        copying = f"data batch {name!r}: cannot store its copy at"
        dst_fs, dst_path = storage.filesystem(stored, storage_options, DataError, copying)
        with storage.failures(DataError, copying, stored):
            if not dst_fs.exists(dst_path):
                _store(tmp, dst_fs, dst_path)
        if _is_local(dst_fs):
            return Batch(name, uri, sha, size, stored, dst_path)
        if not local.exists():
            os.replace(tmp, local)
        return Batch(name, uri, sha, size, stored, str(local))
    except storage.STORE_ERRORS as exc:
        raise DataError(f"{what} {redact_url(uri)}: {storage.reason(exc)}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(
    stored_uri: str,
    sha256: str,
    cache_dir: Path,
    storage_options: Mapping[str, Any] | None = None,
) -> str:
    """A local path to a stored batch copy, checked against its hash (used by replay)."""
    what = "cannot fetch stored data batch"
    fs, path = storage.filesystem(stored_uri, storage_options, DataError, what)
    with storage.failures(DataError, what, stored_uri):
        if not storage.is_file(fs, path):
            raise DataError(f"stored data batch {redact_url(stored_uri)!r} is missing")
        if _is_local(fs):
            local = path
        else:
            local = str(cache_dir / f"{sha256}{_suffix(stored_uri)}")
            if not os.path.exists(local):
                cache_dir.mkdir(parents=True, exist_ok=True)
                with paths.atomic(fsspec.filesystem("file"), local) as part:
                    fs.get_file(path, part)
    digest = hashlib.sha256()
    with open(local, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise DataError(
            f"stored data batch {redact_url(stored_uri)!r} does not match its sha256 {sha256}"
        )
    return local
