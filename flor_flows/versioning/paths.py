"""Paths built from names, and files that appear whole or not at all, on any fsspec filesystem.

`segment` turns a name (a loop name, a run uid) into one path segment that cannot leave its
directory: anything outside ``[A-Za-z0-9._-]`` is percent-encoded, as is a leading ``.`` (so
``..`` and hidden names cannot occur), and a very long name is shortened with its hash.

`atomic` writes to a temporary name in the destination's directory and moves it into place
only once complete (`os.replace` locally; `fs.mv` after a full upload elsewhere), so a write
killed half-way never leaves a truncated file under the final name. Temporary names start
with `.flor-tmp.` and carry the writer's host and pid: `clean` removes the leftovers of
writers that are dead (on this host), and readers, which open recorded names only, never see
them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec

from flor_flows.versioning.storage import STORE_ERRORS

_SAFE = re.compile(r"[A-Za-z0-9._-]")
_MAX = 120  # bytes of a segment: leaves room for suffixes and temporary-name prefixes
_TMP = re.compile(r"\.flor-tmp\.(?P<host>[A-Za-z0-9_-]*)\.(?P<pid>\d+)\.[0-9a-f]+\.")
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40]
_in_flight: set[str] = set()  # this process's temporary names still being written
_lock = threading.Lock()


def segment(name: str) -> str:
    """`name` as one path segment that stays in its directory; distinct names stay distinct."""
    out = "".join(
        ch if _SAFE.fullmatch(ch) and not (i == 0 and ch == ".") else _escape(ch)
        for i, ch in enumerate(name)
    )
    if not out:
        return "%"  # the empty name: no other name encodes to a lone '%'
    if len(out) > _MAX:  # a long name: a readable prefix and the hash of the whole name
        digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
        out = f"{re.sub(r'%[0-9A-F]?$', '', out[: _MAX - 66])}~{digest}"
    return out


def _escape(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8", "surrogatepass"))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is the local filesystem, whose paths are used in place (`os.replace`)."""
    protocol = fs.protocol
    return "file" in protocol if isinstance(protocol, tuple) else protocol == "file"


def _parent(path: str) -> str:
    return str(PurePosixPath(path).parent)


def temp_name(path: str) -> str:
    """A temporary name for `path`, in its directory, unique to this writer."""
    name = PurePosixPath(path).name[:_MAX]
    tag = f".flor-tmp.{_HOST}.{os.getpid()}.{uuid.uuid4().hex[:12]}.{name}"
    return f"{_parent(path)}/{tag}"


@contextlib.contextmanager
def atomic(fs: fsspec.AbstractFileSystem, path: str, tidy: bool = True) -> Iterator[str]:
    """Yield a temporary path to write; on success it becomes `path`, whole, in one step.

    Leftovers of dead writers in the same directory are removed first (unless `tidy` is
    False: the caller did it already). On failure the temporary file is removed and nothing
    appears under `path`.
    """
    tmp = temp_name(path)
    with _lock:
        _in_flight.add(tmp)
    done = False
    try:
        if tidy:
            clean(fs, _parent(path))
        yield tmp
        if is_local(fs):
            os.replace(tmp, path)  # atomic on POSIX and Windows, replaces an older copy
        else:  # object stores: the upload is complete, the move makes the object appear whole
            fs.mv(tmp, path)
        done = True
    finally:
        with _lock:
            _in_flight.discard(tmp)
        if not done:
            with contextlib.suppress(*STORE_ERRORS):
                fs.rm_file(tmp)


def _dead(host: str, pid: int) -> bool:
    """Whether the writer `pid` on `host` is gone (unknowable for another host: assume not)."""
    if host != _HOST or os.name == "nt":  # (os.kill(pid, 0) would end a Windows process)
        return False
    if pid == os.getpid():
        return True  # this process: its live temporaries are in `_in_flight`
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. EPERM: the process exists
        return False
    return False


def ended(pid: int) -> bool:
    """Whether process `pid` of this host has ended (never true of this process)."""
    return pid != os.getpid() and _dead(_HOST, pid)


def clean(fs: fsspec.AbstractFileSystem, directory: str) -> None:
    """Remove temporary files in `directory` left by writers that were killed mid-write."""
    try:
        names = fs.ls(directory, detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return
    with _lock:
        busy = set(_in_flight)
    for full in names:
        match = _TMP.match(PurePosixPath(full).name)
        if match is None or full in busy or f"{directory}/{PurePosixPath(full).name}" in busy:
            continue
        if _dead(match["host"], int(match["pid"])):
            with contextlib.suppress(*STORE_ERRORS):
                fs.rm_file(full)
