"""Data batches: hash each declared batch and keep a content-addressed copy of it.

The copy lets a run be replayed after its source file changed or vanished. Any fsspec URL
works as a source and as the data store; the script always gets a local path back.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import fsspec

from flor_flows.errors import DataError

CHUNK = 1 << 20
NO_COPY = ("", "none")


@dataclass(frozen=True)
class Batch:
    name: str
    uri: str  # as declared (or overridden)
    sha256: str
    bytes: int
    stored_uri: str | None  # the content-addressed copy, None when copying is off
    local_path: str  # what the script reads


def _suffix(uri: str) -> str:
    return "".join(PurePosixPath(uri.split("?")[0]).suffixes[-2:])


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in fs.protocol if isinstance(fs.protocol, tuple) else fs.protocol == "file"


def resolve(base: Path, uri: str) -> str:
    """`uri` with a relative local path taken from `base` (a project directory)."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    return str(base / uri)


def version(name: str, uri: str, store_url: str, cache_dir: Path) -> Batch:
    """Hash the batch at `uri`, copy it into `store_url` (unless "none"), return its record.

    The file is read once: hashing and copying share one streaming pass.
    """
    src_fs, src_path = fsspec.core.url_to_fs(uri)
    if not src_fs.isfile(src_path):
        raise DataError(f"data batch {name!r}: {uri!r} does not exist or is not a file")
    digest = hashlib.sha256()
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".part")
    size = 0
    try:
        with src_fs.open(src_path, "rb") as src, os.fdopen(fd, "wb") as out:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
        sha = digest.hexdigest()
        if store_url.lower() in NO_COPY:
            if _is_local(src_fs):
                return Batch(name, uri, sha, size, None, str(Path(src_path).resolve()))
            local = cache_dir / f"{sha}{_suffix(uri)}"
            os.replace(tmp, local)
            return Batch(name, uri, sha, size, None, str(local))
        stored = f"{store_url.rstrip('/')}/{sha[:2]}/{sha}{_suffix(uri)}"
        dst_fs, dst_path = fsspec.core.url_to_fs(stored)
        if not dst_fs.exists(dst_path):
            dst_fs.makedirs(str(PurePosixPath(dst_path).parent), exist_ok=True)
            if _is_local(dst_fs):
                os.replace(tmp, dst_path)  # atomic: concurrent writers of one batch agree
            else:
                dst_fs.put_file(tmp, dst_path)
        if _is_local(dst_fs):
            return Batch(name, uri, sha, size, stored, dst_path)
        local = cache_dir / f"{sha}{_suffix(uri)}"
        if not local.exists():
            os.replace(tmp, local)
        return Batch(name, uri, sha, size, stored, str(local))
    except OSError as exc:
        raise DataError(f"data batch {name!r}: cannot version {uri!r}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch(stored_uri: str, sha256: str, cache_dir: Path) -> str:
    """A local path to a stored batch copy, checked against its hash (used by replay)."""
    fs, path = fsspec.core.url_to_fs(stored_uri)
    if not fs.isfile(path):
        raise DataError(f"stored data batch {stored_uri!r} is missing")
    if _is_local(fs):
        local = path
    else:
        local = str(cache_dir / f"{sha256}{_suffix(stored_uri)}")
        if not os.path.exists(local):
            cache_dir.mkdir(parents=True, exist_ok=True)
            fs.get_file(path, local)
    digest = hashlib.sha256()
    with open(local, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise DataError(f"stored data batch {stored_uri!r} does not match its sha256 {sha256}")
    return local
