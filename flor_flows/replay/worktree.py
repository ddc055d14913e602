"""A code version in a private directory, extracted from its snapshot commit.

`git archive` reads the commit and writes nothing to the repository, so versions can be
materialised side by side and replayed in parallel while the user's working tree, index
and branch stay untouched.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from flor_flows.errors import FlorError


def materialize(root: Path, commit: str, dest: Path) -> Path:
    """Extract the tree of `commit` into `dest` (created); returns `dest`."""
    proc = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", commit],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        message = proc.stderr.decode(errors="replace").strip()
        raise FlorError(f"cannot materialise code version {commit}: {message}")
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def python_files(directory: Path) -> dict[str, str]:
    """{relative path: source} of the Python files under `directory` (a materialised tree)."""
    return {
        path.relative_to(directory).as_posix(): path.read_text()
        for path in sorted(directory.rglob("*.py"))
        if path.is_file()
    }


def working_tree_files(root: Path) -> dict[str, str]:
    """The project's tracked Python files as they are on disk now, uncommitted edits included."""
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--", "*.py"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise FlorError(f"cannot list the files of {root}: {proc.stderr.decode().strip()}")
    names = [n for n in proc.stdout.decode().split("\0") if n]
    return {name: (root / name).read_text() for name in names if (root / name).is_file()}
