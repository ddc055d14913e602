"""Code versioning: snapshot a project's source as a git commit under a hidden ref.

Every run records the exact source it ran as a commit at ``refs/flor/runs/<run_uid>``.
The commit is built with a throwaway index, so the user's branch, index and working
tree are never touched, and uncommitted edits of tracked files are still captured.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git

from flor_flows.errors import CodeVersionError, DirtySubmodule, NotAGitRepository

__all__ = [
    "CodeVersion",
    "archive",
    "commit_files",
    "has_commit",
    "listed",
    "new_repository",
    "python_files_at",
    "read_file",
    "run_ref",
    "snapshot",
]

RUN_REF_PREFIX = "refs/flor/runs/"
SNAPSHOT_IDENTITY = ("flor-flows", "flor-flows@localhost")
# Fixed date for root snapshots (no HEAD to copy dates from), so they stay deterministic.
_UNBORN_DATE = "@0 +0000"
_RUN_UID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class CodeVersion:
    """The code a run executed: a snapshot commit and where it came from."""

    commit: str  # hexsha of the snapshot commit (the code version id)
    tree: str  # hexsha of its tree
    base: str | None  # HEAD commit the snapshot was taken on; None on an unborn branch
    branch: str | None  # branch checked out at snapshot time; None on a detached HEAD
    dirty: bool  # True when the snapshot differs from HEAD's tree


def run_ref(run_uid: str) -> str:
    """The hidden ref that pins a run's code version: ``refs/flor/runs/<run_uid>``."""
    if not _RUN_UID.fullmatch(run_uid) or ".." in run_uid or run_uid.endswith(".lock"):
        raise CodeVersionError(
            f"Invalid run uid {run_uid!r}: use letters, digits, '.', '_' or '-' "
            "(no '..', not starting with '.' or '-', not ending in '.lock')."
        )
    return RUN_REF_PREFIX + run_uid


def _open_repo(start: Path | str) -> git.Repo:
    """Open the repository whose working tree contains `start` (no subprocess)."""
    path = Path(start).expanduser().absolute()
    if not path.exists():
        raise NotAGitRepository(f"{path} does not exist, so it cannot be in a git repository.")
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except git.InvalidGitRepositoryError:
        raise NotAGitRepository(
            f"{path} is not inside a git repository. flor-flows versions each run's code "
            f"with git: run `git init` in your project directory (and commit your code)."
        ) from None
    if repo.bare or repo.working_tree_dir is None:
        repo.close()
        raise NotAGitRepository(
            f"{path} is in a bare repository or inside a .git directory, not a working tree."
        )
    return repo


def _repo_relative(top: Path, base: Path, path: Path | str, what: str) -> str:
    """`path` (relative to `base`, or absolute) as a posix path relative to `top`."""
    p = Path(path).expanduser()
    p = Path(os.path.abspath(p if p.is_absolute() else base / p))
    if not p.exists():
        raise CodeVersionError(f"{what} {p} does not exist.")
    # Compare unresolved first (keeps in-repo symlinks in-repo), then resolved.
    for candidate in (p, p.parent.resolve() / p.name):
        for root in (Path(os.path.abspath(top)), top.resolve()):
            if candidate.is_relative_to(root) and candidate != root:
                rel = candidate.relative_to(root).as_posix()
                if rel != ".git" and not rel.startswith(".git/"):
                    return rel
    raise CodeVersionError(
        f"{what} {p} is outside the project repository {top}; only files inside the "
        "repository can be versioned. Move it into the repository or run from its repository."
    )


def _git(repo: git.Repo, *args: str, env: dict[str, str], what: str) -> str:
    """Run one git command, turning a failure into a FlorError that shows git's message."""
    try:
        return repo.git.execute(["git", *args], env=env)
    except git.GitCommandError as exc:
        raise CodeVersionError(
            f"Could not {what} in {repo.working_tree_dir}: {_stderr(exc)}"
        ) from exc


def _stderr(exc: git.GitCommandError) -> str:
    """Git's own error text, without GitPython's `stderr: '...'` decoration."""
    text = str(exc.stderr or "").strip()
    match = re.fullmatch(r"stderr: '(.*)'", text, flags=re.DOTALL)
    return (match.group(1) if match else text).strip()


def _head_info(repo: git.Repo, head_ref: str, env: dict[str, str]) -> list[str]:
    """[commit, tree, author time, tz, committer time, tz] of HEAD; [] on an unborn branch."""
    if head_ref != "HEAD":
        return _git(
            repo,
            "for-each-ref",
            "--format=%(objectname) %(tree) %(authordate:raw) %(committerdate:raw)",
            head_ref,
            env=env,
            what="read HEAD",
        ).split()
    commit = _git(repo, "rev-parse", "--verify", "HEAD^{commit}", env=env, what="read HEAD")
    raw = _git(repo, "cat-file", "commit", commit, env=env, what="read HEAD")
    fields = {}
    for line in raw.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(" ")
        fields.setdefault(key, value)
    author, committer = fields["author"].split()[-2:], fields["committer"].split()[-2:]
    return [commit, fields["tree"], *author, *committer]


def _warn_dirty_submodules(repo: git.Repo, top: Path, run_uid: str, env: dict[str, str]) -> None:
    """Say, once per run, which submodules have edits the code version does not hold.

    A snapshot records a submodule as the commit its HEAD is on; uncommitted edits inside
    it are not part of the code version, and that must not be silent. Read-only: runs on
    the snapshot's temporary index, with optional locks off.
    """
    if not (top / ".gitmodules").is_file():
        return
    status = _git(
        repo,
        "status",
        "--porcelain=v2",
        "-z",
        "--untracked-files=no",
        "--ignore-submodules=none",
        env=env | {"GIT_OPTIONAL_LOCKS": "0"},
        what="read the submodules' status",
    )
    dirty = []
    for entry in status.split("\0"):
        parts = entry.split(" ", 8)
        # "1 <XY> <sub> ... <path>": <sub> is "S<c><m><u>", <m> = "M" for tracked changes
        if parts[0] == "1" and len(parts) == 9 and parts[2][:1] == "S" and parts[2][2] == "M":
            dirty.append(parts[8])
    if dirty:
        listed = ", ".join(repr(path) for path in dirty)
        warnings.warn(
            f"run {run_uid}: submodule{'s' if len(dirty) > 1 else ''} {listed} in {top} "
            "has uncommitted edits that are not part of the run's code version (a snapshot "
            "records a submodule at its HEAD commit); commit them in the submodule to "
            "version them.",
            DirtySubmodule,
            stacklevel=4,  # snapshot's caller (via _write_tree, snapshot)
        )


def snapshot(
    root: Path,
    run_uid: str,
    entry_script: Path | None = None,
    include: Sequence[Path] = (),
) -> CodeVersion:
    """Commit the project's current source under refs/flor/runs/<run_uid> and return its version.

    The snapshot is the user's index plus every modification and deletion of tracked files,
    plus `entry_script` and `include` (forced, even if untracked or ignored). Relative
    paths are taken relative to `root`. Nothing the user sees (branch, index, working
    tree) changes; the only writes are git objects and the run's ref.
    """
    ref = run_ref(run_uid)
    root = Path(root).expanduser().absolute()
    repo = _open_repo(root)
    try:
        top = Path(repo.working_tree_dir)
        head = repo.head
        detached = head.is_detached
        # A detached HEAD (every CI checkout) records on the commit it points to, no branch.
        head_ref = "HEAD" if detached else head.reference.path  # readable even when unborn
        branch = None if detached else head_ref.removeprefix("refs/heads/")
        forced = [
            _repo_relative(top, root, p, "Entry script")
            for p in ([entry_script] if entry_script is not None else [])
        ] + [_repo_relative(top, root, p, "Included path") for p in include]

        env = {"GIT_LITERAL_PATHSPECS": "1"}
        info = _head_info(repo, head_ref, env)
        base = base_tree = None
        if info:  # [commit, tree, a_time, a_tz, c_time, c_tz]
            base, base_tree = info[0], info[1]
            dates = f"@{info[2]} {info[3]}", f"@{info[4]} {info[5]}"
        else:  # unborn branch: no commits yet
            dates = _UNBORN_DATE, _UNBORN_DATE

        tree = _write_tree(repo, top, run_uid, base, forced, env)
        if tree == base_tree:
            commit, dirty = base, False
        else:
            commit, dirty = _commit_tree(repo, tree, base, dates, env), True
        _git(repo, "update-ref", ref, commit, env=env, what=f"update {ref}")
        return CodeVersion(commit=commit, tree=tree, base=base, branch=branch, dirty=dirty)
    finally:
        repo.close()


def _write_tree(
    repo: git.Repo,
    top: Path,
    run_uid: str,
    base: str | None,
    forced: list[str],
    env: dict[str, str],
) -> str:
    """The snapshot's tree, written from a throwaway index: the user's index (or HEAD's tree)
    plus the tracked changes and the `forced` paths. Warns of dirty submodules."""
    tmpdir = tempfile.mkdtemp(prefix="flor-index-")
    try:
        index = os.path.join(tmpdir, "index")
        env["GIT_INDEX_FILE"] = index
        user_index = Path(repo.git_dir) / "index"
        if user_index.is_file():
            shutil.copy2(user_index, index)  # keeps git's stat cache (and its mtime)
        elif base is not None:
            _git(repo, "read-tree", base, env=env, what="read HEAD's tree")
        _git(repo, "add", "-u", env=env, what="stage tracked changes")
        if forced:
            _git(
                repo, "add", "-f", "--", *forced, env=env, what="add the entry script and includes"
            )
        tree = _git(repo, "write-tree", env=env, what="write the snapshot tree")
        _warn_dirty_submodules(repo, top, run_uid, env)
        return tree
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _commit_tree(
    repo: git.Repo, tree: str, base: str | None, dates: tuple[str, str], env: dict[str, str]
) -> str:
    """A snapshot commit of `tree` on `base`, by flor-flows, with HEAD's (author, committer)
    `dates` so that the same source on the same HEAD is the same commit."""
    name, email = SNAPSHOT_IDENTITY
    env.update(
        GIT_AUTHOR_NAME=name,
        GIT_AUTHOR_EMAIL=email,
        GIT_AUTHOR_DATE=dates[0],
        GIT_COMMITTER_NAME=name,
        GIT_COMMITTER_EMAIL=email,
        GIT_COMMITTER_DATE=dates[1],
    )
    parent = ["-p", base] if base is not None else []
    command = ["-c", "i18n.commitEncoding=UTF-8", "commit-tree", "--no-gpg-sign", tree, *parent]
    message = f"flor-flows snapshot\n\nbase {base or 'none'}"
    return _git(repo, *command, "-m", message, env=env, what="commit the snapshot")


def read_file(root: Path, commit: str, path: str) -> bytes:
    """The exact bytes of `path` (relative to the repository root) at `commit`."""
    repo = _open_repo(root)
    try:
        rel = PurePosixPath(Path(path).as_posix())
        if rel.is_absolute():
            top = Path(repo.working_tree_dir)
            for candidate in (Path(os.path.abspath(top)), top.resolve()):
                if Path(path).is_relative_to(candidate):
                    rel = PurePosixPath(Path(path).relative_to(candidate).as_posix())
                    break
            else:
                raise CodeVersionError(f"{path} is outside the project repository {top}.")
        return repo.git.execute(
            ["git", "cat-file", "blob", f"{commit}:{rel}"],
            stdout_as_string=False,
            strip_newline_in_stdout=False,
        )
    except git.GitCommandError as exc:
        raise CodeVersionError(
            f"Cannot read {rel} at code version {commit}: {_stderr(exc)}"
        ) from exc
    finally:
        repo.close()


def has_commit(root: Path, commit: str) -> bool:
    """Whether `root` is in a git working tree here whose repository holds `commit` (a replay
    worker may have no repository, or a clone without the runs' hidden refs)."""
    try:
        repo = _open_repo(root)
    except NotAGitRepository:
        return False
    try:
        repo.git.execute(["git", "cat-file", "-e", f"{commit}^{{commit}}"])
        return True
    except git.GitCommandError:
        return False
    finally:
        repo.close()


def archive(root: Path, commit: str) -> bytes:
    """The tree of `commit` as a tar archive (`git archive`: reads the repository only)."""
    return _output(
        root, ["archive", "--format=tar", commit], f"cannot materialise code version {commit}"
    )


def listed(root: Path, *options: str) -> list[str]:
    """The paths `git ls-files -z <options>` lists in the working tree of `root`, relative to
    it (e.g. the tracked Python files, or with `--others` the untracked entries)."""
    out = _output(
        root, ["-C", str(root), "ls-files", "-z", *options], f"cannot list the files of {root}"
    )
    return [name for name in out.decode(errors="surrogateescape").split("\0") if name]


def _output(root: Path, args: list[str], failing: str) -> bytes:
    """What `git <args>` prints in the repository of `root`, as bytes; a CodeVersionError
    `failing: <git's message>` when it fails."""
    repo = _open_repo(root)
    try:
        return repo.git.execute(
            ["git", *args], stdout_as_string=False, strip_newline_in_stdout=False
        )
    except git.GitCommandError as exc:
        raise CodeVersionError(f"{failing}: {_stderr(exc)}") from exc
    finally:
        repo.close()


def python_files_at(root: Path, ref: str) -> dict[str, str]:
    """The Python files of the repository of `root` at `ref` (a branch, tag or commit), by
    path, as text: where the new statements of a `--from` request come from."""
    repo = _open_repo(root)
    try:
        listing = repo.git.execute(["git", "ls-tree", "-r", "-z", "--name-only", ref])
        names = [name for name in listing.split("\0") if name.endswith(".py")]
        return {
            name: repo.git.execute(
                ["git", "cat-file", "blob", f"{ref}:{name}"], strip_newline_in_stdout=False
            )
            for name in names
        }
    except git.GitCommandError as exc:
        raise CodeVersionError(f"cannot read the Python files at {ref!r}: {_stderr(exc)}") from exc
    finally:
        repo.close()


def new_repository(root: Path, name: str, email: str) -> None:
    """`git init` at `root` on branch main, with a local identity (the demo's project)."""
    try:
        repo = git.Repo.init(root, initial_branch="main")
    except git.GitCommandError as exc:
        raise CodeVersionError(f"cannot create a git repository at {root}: {_stderr(exc)}") from exc
    with repo.config_writer() as config:
        config.set_value("user", "name", name)
        config.set_value("user", "email", email)
    repo.close()


def commit_files(root: Path, paths: list[str], message: str) -> str:
    """Commit `paths` (relative to `root`) as they are now, as a user would; the commit."""
    repo = _open_repo(root)
    try:
        repo.git.execute(["git", "add", "--", *paths])
        repo.git.execute(["git", "commit", "-q", "-m", message])
        return repo.head.commit.hexsha
    except git.GitCommandError as exc:
        raise CodeVersionError(
            f"cannot commit {', '.join(paths)} in {root}: {_stderr(exc)}"
        ) from exc
    finally:
        repo.close()
