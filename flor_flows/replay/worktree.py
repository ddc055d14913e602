"""A code version in a private directory, extracted from its snapshot commit.

`git archive` reads the commit and writes nothing to the repository, so versions can be
materialised side by side and replayed in parallel while the user's working tree, index
and branch stay untouched.

A replay must see the files its run saw: the tracked files as of the code version, and
everything else (untracked data, `../data` beside the repository) where it was. `view`
builds that: the version is extracted at `<dest>/<the repository's absolute path>`, every
other entry along that path links to the real one, and the repository's untracked and
ignored entries are linked into the extracted tree.
"""

from __future__ import annotations

import io
import os
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


def view(root: Path, commit: str, dest: Path) -> Path:
    """`commit` extracted where a relative path of its run resolves as it did; returns the
    repository's directory in the view (call `link_untracked` once its files are edited)."""
    root = root.resolve()
    real, mirror = Path(root.anchor), dest
    for part in root.relative_to(root.anchor).parts:
        mirror.mkdir(parents=True, exist_ok=True)
        try:
            siblings = [entry for entry in os.listdir(real) if entry != part]
        except OSError:  # an unreadable level: relative paths through it fail as they would
            siblings = []
        for entry in siblings:
            (mirror / entry).symlink_to(real / entry)
        real, mirror = real / part, mirror / part
    return materialize(root, commit, mirror)


def link_untracked(root: Path, tree: Path) -> None:
    """Link the repository's untracked and ignored entries into `tree` (a materialised
    version), except where the version has a file of its own."""
    proc = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--others", "--directory"],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise FlorError(
            f"cannot list the untracked files of {root}: {proc.stderr.decode().strip()}"
        )
    for entry in filter(None, proc.stdout.decode(errors="surrogateescape").split("\0")):
        relative = entry.rstrip("/")
        target = tree / relative
        if os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(root / relative)
