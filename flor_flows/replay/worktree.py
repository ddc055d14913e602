"""A code version in a private directory, extracted from its snapshot commit or its archive.

`git archive` reads the commit and writes nothing to the repository, so versions can be
materialised side by side and replayed in parallel while the user's working tree, index
and branch stay untouched. A host whose repository does not hold the commit (a worker with
no repository, or a clone without the runs' hidden refs) extracts the archive the run left
beside its checkpoints instead (`versioning.archives`, cached per host).

A replay must see the files its run saw: the tracked files as of the code version, and
everything else (untracked data, `../data` beside the repository) where it was. `view`
builds that: the version is extracted at `<dest>/<the repository's absolute path>`, every
other entry along that path links to the real one, and the repository's untracked and
ignored entries are linked into the extracted tree. Where the repository is not on this
host, there is nothing to link, and the extracted tree is marked as a project root of its
own (`config.VERSION_MARK`), so the replayed script finds its settings there.

Versions are materialised in a `workspace`: a temporary directory of one process, removed
when its block ends however it ends (the leftovers of killed processes are removed by the
next one). Another process, on this host or another, materialises its own (`owned`).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from flor_flows.config import STATE_DIR, VERSION_MARK, Settings
from flor_flows.errors import NotAGitRepository
from flor_flows.versioning import archives, code, paths

WORKSPACE_PREFIX = "flor-flows-code-"  # + "<pid>-": whose it is, for the sweep of leftovers
_owned: set[Path] = set()  # the workspaces this process holds open


def materialize(root: Path, commit: str, dest: Path, settings: Settings | None = None) -> Path:
    """Extract the tree of `commit` into `dest` (created); returns `dest`. The repository at
    `root` is used where it holds the commit, else the archive at `settings`' checkpoint
    location (none without `settings`)."""
    if code.has_commit(root, commit) or settings is None:
        archive = code.archive(root, commit)
    else:
        archive = archives.fetch(commit, settings)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
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
    names = code.listed(root, "--", "*.py")
    return {name: (root / name).read_text() for name in names if (root / name).is_file()}


def on_this_host(root: Path) -> bool:
    """Whether the repository at `root` is on this host (a replay worker may not have it)."""
    return (root / ".git").exists()


def view(root: Path, commit: str, dest: Path, settings: Settings | None = None) -> Path:
    """`commit` extracted where a relative path of its run resolves as it did; returns the
    repository's directory in the view (call `link_untracked` once its files are edited).
    `settings` say where the version's archive is, for a host whose repository lacks it."""
    root = root.resolve()
    real, mirror = Path(root.anchor), dest
    for part in root.relative_to(root.anchor).parts:
        mirror.mkdir(parents=True, exist_ok=True)
        try:
            siblings = [entry for entry in os.listdir(real) if entry != part]
        except OSError:  # an unreadable or missing level: relative paths through it fail
            siblings = []
        for entry in siblings:
            (mirror / entry).symlink_to(real / entry)
        real, mirror = real / part, mirror / part
    tree = materialize(root, commit, mirror, settings)
    if not on_this_host(root):
        mark = tree / STATE_DIR / VERSION_MARK
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.write_text(f"{commit}\n")
    return tree


def project_root(root: Path, tree: Path) -> Path:
    """The project root a replay of `tree` (a `view` of the repository at `root`) runs
    under: the repository where this host has it, else the marked tree itself."""
    return root if on_this_host(root) else tree


def link_untracked(root: Path, tree: Path) -> None:
    """Link the repository's untracked and ignored entries into `tree` (a materialised
    version), except where the version has a file of its own; none without the repository."""
    try:
        entries = code.listed(root, "--others", "--directory")
    except NotAGitRepository:
        return
    for entry in entries:
        relative = entry.rstrip("/")
        target = tree / relative
        if os.path.lexists(target):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(root / relative)


def share(settings: Settings, commits: Iterable[str]) -> None:
    """Store the archive of each of `commits` the repository holds beside the checkpoints
    (runs recorded before archives were kept), for the hosts that do not have it."""
    for commit in commits:
        if code.has_commit(settings.root, commit):
            archives.publish(settings.root, commit, settings)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A private temporary directory for the code versions this process materialises,
    removed when the block ends, however it ends (success, failure, cancellation)."""
    _sweep()
    with tempfile.TemporaryDirectory(prefix=f"{WORKSPACE_PREFIX}{os.getpid()}-") as name:
        directory = Path(name).resolve()
        _owned.add(directory)
        try:
            yield directory
        finally:
            _owned.discard(directory)


def owned(path: Path) -> bool:
    """Whether `path` is in a workspace this process holds open: anywhere else (another
    process, another host) a version must be materialised anew."""
    path = Path(path).resolve()
    return any(path.is_relative_to(directory) for directory in tuple(_owned))


def _sweep() -> None:
    """Remove the workspaces that processes of this host killed before their end left."""
    for leftover in Path(tempfile.gettempdir()).glob(f"{WORKSPACE_PREFIX}*-*"):
        pid = leftover.name.removeprefix(WORKSPACE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and paths.ended(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)
