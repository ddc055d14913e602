"""Code versions as archives beside the checkpoints, for hosts that do not have the repository.

A run's code version is a commit in the project's repository (`code`). A host that replays
it needs the version's files, but may have no repository at all (a Dask or Prefect worker
without a shared filesystem) or a clone without the runs' hidden refs. So the tree of each
recorded version is also kept at the checkpoint location, as a `git archive` tar:

    <checkpoint_url>/.code-versions/<commit>.sha256          the archive's sha256, one line
    <checkpoint_url>/.code-versions/<commit>/<sha256>.tar    the archive

Every file appears whole (`paths.atomic`) and the sha256 file is written last, so two hosts
publishing one version at once (their `git archive` bytes may differ) leave a consistent
pair. A reader fetches the archive the sha256 file names, checks its hash, and keeps it in a
cache of its host (`cache_dir`), bounded: the least recently used archives go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path

import fsspec

from flor_flows.config import Settings, user_cache
from flor_flows.errors import CodeArchiveError
from flor_flows.secrets import redact_url
from flor_flows.versioning import code, paths, storage

# A leading "." is never the directory of a run's checkpoints (`paths.segment` escapes it).
LOCATION = ".code-versions"
CACHE_ENTRIES = 32  # archives a host keeps at most ...
CACHE_BYTES = 1 << 30  # ... and bytes (the newest one is kept whatever its size)
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def location(settings: Settings) -> str:
    """The URL of the project's code archives: beside its checkpoints."""
    return f"{settings.checkpoint_url.rstrip('/')}/{LOCATION}"


def cache_dir() -> Path:
    """This host's cache of fetched archives (`user_cache`)."""
    return user_cache("code-versions")


def _checked(commit: str) -> str:
    """`commit` when it is a full hex object id (it names files)."""
    if not _COMMIT.fullmatch(commit):
        raise CodeArchiveError(f"{commit!r} is not a code version (a full commit id)")
    return commit


def publish(root: Path, commit: str, settings: Settings) -> bool:
    """Store the archive of `commit` (from the repository at `root`) beside the checkpoints,
    unless it is there already; True when this call stored it."""
    base = location(settings)
    what = f"cannot store code version {_checked(commit)[:10]} at"
    fs, path = storage.filesystem(base, settings.fs_options(), CodeArchiveError, what)
    with storage.failures(CodeArchiveError, what, base):
        recorded = f"{path}/{commit}.sha256"
        if fs.exists(recorded):
            return False
        data = code.archive(root, commit)
        sha256 = hashlib.sha256(data).hexdigest()
        target = f"{path}/{commit}/{sha256}.tar"
        fs.makedirs(f"{path}/{commit}", exist_ok=True)
        if not fs.exists(target):
            with paths.atomic(fs, target) as part:
                fs.pipe_file(part, data)
        with paths.atomic(fs, recorded) as part:
            fs.pipe_file(part, f"{sha256}\n".encode())
    return True


def fetch(commit: str, settings: Settings) -> bytes:
    """The archive of `commit` from this host's cache or the checkpoint location, checked
    against the sha256 recorded with it."""
    base = location(settings)
    what = f"cannot fetch code version {_checked(commit)[:10]} from"
    fs, path = storage.filesystem(base, settings.fs_options(), CodeArchiveError, what)
    with storage.failures(CodeArchiveError, what, base):
        try:
            sha256 = fs.cat_file(f"{path}/{commit}.sha256").decode().strip()
        except FileNotFoundError:
            raise CodeArchiveError(
                f"code version {commit[:10]} is not in a repository on this host and has no "
                f"archive at {redact_url(base)}: replay it on a host whose repository holds "
                "it (a backfill there stores the archive for the others)"
            ) from None
        if not _SHA256.fullmatch(sha256):
            raise CodeArchiveError(f"the sha256 recorded for code version {commit} is damaged")
        cached = _cached(commit, sha256)
        if cached is not None:
            return cached
        data = fs.cat_file(f"{path}/{commit}/{sha256}.tar")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CodeArchiveError(
            f"the archive of code version {commit[:10]} at {redact_url(base)} does not match "
            f"its recorded sha256 {sha256}"
        )
    _keep(commit, data)
    return data


def _cached(commit: str, sha256: str) -> bytes | None:
    """The cached archive of `commit` when its bytes match `sha256` (marked as just used)."""
    path = cache_dir() / f"{commit}.tar"
    try:
        data = path.read_bytes()
        os.utime(path)
    except FileNotFoundError:  # not cached, or evicted by another process meanwhile
        return None
    return data if hashlib.sha256(data).hexdigest() == sha256 else None


def _keep(commit: str, data: bytes) -> None:
    """Put a checked archive in this host's cache, whole, and keep the cache bounded."""
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    local = fsspec.filesystem("file")
    with paths.atomic(local, str(directory / f"{commit}.tar")) as part:
        Path(part).write_bytes(data)
    _evict(directory)


def _evict(directory: Path) -> None:
    """Remove the least recently used archives beyond CACHE_ENTRIES or CACHE_BYTES."""
    entries = []
    for path in directory.glob("*.tar"):
        with contextlib.suppress(FileNotFoundError):
            stat = path.stat()
            entries.append((stat.st_mtime, stat.st_size, path))
    entries.sort(reverse=True)
    total = 0
    for count, (_, size, path) in enumerate(entries):
        total += size
        if count and (count >= CACHE_ENTRIES or total > CACHE_BYTES):
            path.unlink(missing_ok=True)
