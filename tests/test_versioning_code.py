"""Code versioning against real git repositories: snapshots must capture the source a
run executed without disturbing the user's branch, index or working tree."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from flor_flows.config import find_root
from flor_flows.errors import DirtySubmodule, FlorError, NotAGitRepository
from flor_flows.versioning.code import (
    CodeVersion,
    read_file,
    run_ref,
    snapshot,
)


def git(repo: Path, *args: str, check: bool = True) -> str:
    """Run git in `repo` and return its stdout with the trailing newline removed."""
    out = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=check
    ).stdout
    return out.removesuffix("\n")


def init_repo(path: Path, files: dict[str, bytes] | None = None) -> Path:
    """`git init -b main` at `path` and commit `files` (identity set only for that commit)."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    if files:
        for name, data in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_bytes(data)
        git(path, "config", "user.name", "Setup User")
        git(path, "config", "user.email", "setup@example.com")
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial")
        git(path, "config", "--unset", "user.name")
        git(path, "config", "--unset", "user.email")
    return path


@pytest.fixture(autouse=True)
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global/system git config and no identity in the environment."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for var in (
        "EMAIL",
        "GIT_AUTHOR_NAME",
        "GIT_AUTHOR_EMAIL",
        "GIT_AUTHOR_DATE",
        "GIT_COMMITTER_NAME",
        "GIT_COMMITTER_EMAIL",
        "GIT_COMMITTER_DATE",
        "GIT_INDEX_FILE",
        "GIT_DIR",
        "GIT_WORK_TREE",
    ):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A committed project: entry script, a package, an ignored pattern."""
    return init_repo(
        tmp_path / "proj",
        {
            "train.py": b"print('train v1')\n",
            "pkg/__init__.py": b"",
            "pkg/model.py": b"W = 1\n",
            "README.md": b"# project\n",
            ".gitignore": b"*.log\n",
        },
    )


class UserState:
    """Everything a snapshot must leave alone, captured before it runs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.status = git(root, "status", "--porcelain", "--untracked-files=all")
        index = root / ".git" / "index"
        self.index = index.read_bytes() if index.exists() else None
        self.head = git(root, "rev-parse", "-q", "--verify", "HEAD", check=False)
        self.symref = git(root, "symbolic-ref", "-q", "HEAD", check=False)
        self.files = {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and ".git" not in p.relative_to(root).parts
        }

    def assert_unchanged(self) -> None:
        after = UserState(self.root)
        assert after.index == self.index
        assert after.head == self.head
        assert after.symref == self.symref
        assert after.files == self.files
        assert after.status == self.status


def tree_paths(root: Path, commit: str) -> set[str]:
    return set(git(root, "ls-tree", "-r", "--name-only", "-z", commit).split("\0")) - {""}


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD")


# --- refs and project root ---------------------------------------------------------------


def test_run_ref_format() -> None:
    assert run_ref("abc-123") == "refs/flor/runs/abc-123"
    assert run_ref("2024.06.01_x") == "refs/flor/runs/2024.06.01_x"


@pytest.mark.parametrize("bad", ["", "a b", "a..b", "x.lock", ".hidden", "a/b", "a~1", "-x"])
def test_run_ref_rejects_invalid_uid(bad: str) -> None:
    with pytest.raises(FlorError, match="Invalid run uid"):
        run_ref(bad)


def test_find_root_from_subdir_and_file(repo: Path) -> None:
    assert find_root(repo) == repo.resolve()
    assert find_root(repo / "pkg") == repo.resolve()
    assert find_root(str(repo / "pkg" / "model.py")) == repo.resolve()


def test_find_root_not_a_repo(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(NotAGitRepository) as err:
        find_root(plain)
    assert str(plain) in str(err.value)
    assert "git init" in str(err.value)


def test_snapshot_of_a_missing_path(tmp_path: Path) -> None:
    with pytest.raises(NotAGitRepository, match="does not exist"):
        snapshot(tmp_path / "nope", "run-1")


# --- snapshots ---------------------------------------------------------------------------


def test_clean_tree_is_head_commit(repo: Path) -> None:
    (repo / "junk.txt").write_text("untracked, not part of the code\n")
    before = UserState(repo)
    v = snapshot(repo, "run1", entry_script=Path("train.py"))
    before.assert_unchanged()
    assert v == CodeVersion(
        commit=head(repo),
        tree=git(repo, "rev-parse", "HEAD^{tree}"),
        base=head(repo),
        branch="main",
        dirty=False,
    )
    assert git(repo, "rev-parse", "refs/flor/runs/run1") == head(repo)
    assert git(repo, "rev-list", "--count", "--all") == "1"  # no new commit


def test_dirty_edit_is_captured_without_touching_user_state(repo: Path) -> None:
    new_src = b"print('train v2, uncommitted')\n\n"
    (repo / "train.py").write_bytes(new_src)
    (repo / "junk.txt").write_text("untracked junk\n")
    (repo / "debug.log").write_text("ignored\n")
    before = UserState(repo)
    base = head(repo)

    v = snapshot(repo, "run1", entry_script=repo / "train.py")

    before.assert_unchanged()
    assert v.dirty is True
    assert v.base == base
    assert v.branch == "main"
    assert v.commit != base
    assert git(repo, "rev-parse", f"{v.commit}^{{tree}}") == v.tree
    assert git(repo, "rev-parse", f"{v.commit}^") == base
    assert git(repo, "rev-parse", run_ref("run1")) == v.commit
    shown = subprocess.run(
        ["git", "show", f"{v.commit}:train.py"], cwd=repo, capture_output=True, check=True
    ).stdout
    assert shown == new_src
    assert read_file(repo, v.commit, "train.py") == new_src
    assert tree_paths(repo, v.commit) == {
        ".gitignore",
        "README.md",
        "pkg/__init__.py",
        "pkg/model.py",
        "train.py",
    }


def test_snapshot_commit_identity_and_dates(repo: Path) -> None:
    (repo / "train.py").write_text("changed\n")
    v = snapshot(repo, "run1")
    fmt = "%an <%ae>|%cn <%ce>|%ad|%cd|%B"
    ident, committer, adate, cdate, message = git(
        repo, "show", "-s", "--date=raw", f"--format={fmt}", v.commit
    ).split("|")
    assert ident == committer == "flor-flows <flor-flows@localhost>"
    head_dates = git(repo, "show", "-s", "--date=raw", "--format=%ad|%cd", "HEAD").split("|")
    assert [adate, cdate] == head_dates
    assert message.startswith("flor-flows snapshot")
    assert v.base in message


def test_deletion_is_captured(repo: Path) -> None:
    (repo / "pkg" / "model.py").unlink()
    before = UserState(repo)
    v = snapshot(repo, "run1")
    before.assert_unchanged()
    assert v.dirty
    assert "pkg/model.py" not in tree_paths(repo, v.commit)
    assert "pkg/__init__.py" in tree_paths(repo, v.commit)
    assert not (repo / "pkg" / "model.py").exists()


def test_untracked_entry_script_and_includes_are_forced(repo: Path) -> None:
    (repo / "junk.txt").write_text("junk\n")
    (repo / "experiments").mkdir()
    (repo / "experiments" / "new_train.py").write_text("print('new')\n")
    (repo / "settings.log").write_text("ignored but explicitly included\n")
    (repo / "conf").mkdir()
    (repo / "conf" / "a.yaml").write_text("a: 1\n")
    (repo / "conf" / "b.yaml").write_text("b: 2\n")
    before = UserState(repo)

    v = snapshot(
        repo,
        "run1",
        entry_script=Path("experiments/new_train.py"),
        include=[Path("settings.log"), repo / "conf"],
    )

    before.assert_unchanged()
    paths = tree_paths(repo, v.commit)
    assert {"experiments/new_train.py", "settings.log", "conf/a.yaml", "conf/b.yaml"} <= paths
    assert "junk.txt" not in paths
    assert v.dirty
    assert read_file(repo, v.commit, "settings.log") == b"ignored but explicitly included\n"


def test_staged_new_file_is_part_of_snapshot(repo: Path) -> None:
    """A file added to the user's index is tracked, so the snapshot includes it."""
    (repo / "pkg" / "extra.py").write_text("X = 2\n")
    git(repo, "add", "pkg/extra.py")
    (repo / "pkg" / "extra.py").write_text("X = 3\n")  # later unstaged edit wins
    before = UserState(repo)
    v = snapshot(repo, "run1")
    before.assert_unchanged()
    assert read_file(repo, v.commit, "pkg/extra.py") == b"X = 3\n"


def test_same_dirty_source_gives_same_version(repo: Path) -> None:
    (repo / "train.py").write_text("print('dirty')\n")
    (repo / "new.py").write_text("untracked entry\n")
    a = snapshot(repo, "run-a", entry_script=Path("new.py"))
    b = snapshot(repo, "run-b", entry_script=Path("new.py"))
    assert a == b
    assert git(repo, "rev-parse", run_ref("run-a")) == git(repo, "rev-parse", run_ref("run-b"))

    (repo / "train.py").write_text("print('dirty, differently')\n")
    c = snapshot(repo, "run-c", entry_script=Path("new.py"))
    assert c.commit != a.commit and c.base == a.base

    (repo / "train.py").write_bytes(b"print('train v1')\n")
    d = snapshot(repo, "run-d")
    assert d.commit == head(repo) and not d.dirty


def test_rerun_same_uid_moves_ref(repo: Path) -> None:
    first = snapshot(repo, "run1")
    (repo / "train.py").write_text("edited\n")
    second = snapshot(repo, "run1")
    assert first.commit != second.commit
    assert git(repo, "rev-parse", run_ref("run1")) == second.commit


def test_works_without_user_index(repo: Path) -> None:
    """With no .git/index, the snapshot starts from HEAD's tree and creates no index."""
    (repo / ".git" / "index").unlink()
    v = snapshot(repo, "run1")
    assert v.commit == head(repo) and not v.dirty
    assert not (repo / ".git" / "index").exists()
    (repo / "train.py").write_text("edited\n")
    w = snapshot(repo, "run2")
    assert w.dirty and read_file(repo, w.commit, "train.py") == b"edited\n"
    assert not (repo / ".git" / "index").exists()


def test_unborn_branch_makes_root_commit(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "fresh")
    (root / "train.py").write_text("print('first')\n")
    (root / "junk.txt").write_text("junk\n")
    before = UserState(root)

    v = snapshot(root, "run1", entry_script=Path("train.py"))

    before.assert_unchanged()
    assert v.base is None and v.branch == "main" and v.dirty
    assert git(root, "rev-list", "--parents", "-n", "1", v.commit) == v.commit  # no parent
    assert tree_paths(root, v.commit) == {"train.py"}
    assert git(root, "rev-parse", "-q", "--verify", "HEAD", check=False) == ""  # still unborn
    assert not (root / ".git" / "index").exists()
    assert snapshot(root, "run2", entry_script=root / "train.py") == v


def test_unborn_branch_with_staged_files(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "fresh")
    (root / "lib.py").write_text("L = 1\n")
    (root / "train.py").write_text("import lib\n")
    git(root, "add", "lib.py")
    before = UserState(root)
    v = snapshot(root, "run1", entry_script=Path("train.py"))
    before.assert_unchanged()
    assert tree_paths(root, v.commit) == {"lib.py", "train.py"}


def test_works_from_another_branch(repo: Path) -> None:
    git(repo, "switch", "-q", "-c", "feature/x")
    (repo / "train.py").write_text("feature work\n")
    before = UserState(repo)
    v = snapshot(repo, "run1")
    before.assert_unchanged()
    assert v.branch == "feature/x"
    assert v.base == head(repo)
    assert git(repo, "symbolic-ref", "HEAD") == "refs/heads/feature/x"


def test_detached_head_records_on_the_commit_it_points_to(repo: Path) -> None:
    """Every CI checkout is detached: the snapshot's parent is that commit, no branch."""
    first = head(repo)
    (repo / "pkg" / "model.py").write_bytes(b"W = 2\n")
    git(repo, "-c", "user.name=U", "-c", "user.email=u@x", "commit", "-qam", "second")
    git(repo, "checkout", "-q", "--detach", first)
    (repo / "train.py").write_bytes(b"print('edited on a detached HEAD')\n")
    before = UserState(repo)
    head_file = (repo / ".git" / "HEAD").read_bytes()

    v = snapshot(repo, "run1", entry_script=Path("train.py"))

    before.assert_unchanged()
    assert (repo / ".git" / "HEAD").read_bytes() == head_file
    assert (v.base, v.branch, v.dirty) == (first, None, True)
    assert git(repo, "rev-parse", f"{v.commit}^") == first
    assert read_file(repo, v.commit, "train.py") == b"print('edited on a detached HEAD')\n"
    assert read_file(repo, v.commit, "pkg/model.py") == b"W = 1\n"  # the detached commit's
    # the snapshot copies the detached commit's dates, like a branch snapshot does
    dates = "%at %ai %ct %ci"
    assert git(repo, "show", "-s", f"--format={dates}", v.commit) == git(
        repo, "show", "-s", f"--format={dates}", first
    )
    git(repo, "checkout", "-q", "main")
    (repo / "train.py").write_bytes(b"print('train v1')\n")
    clean = snapshot(repo, "run2")  # and a clean detached checkout is the commit itself
    git(repo, "checkout", "-q", "--detach", first)
    assert snapshot(repo, "run3") == CodeVersion(
        commit=first, tree=git(repo, "rev-parse", f"{first}^{{tree}}"), base=first,
        branch=None, dirty=False,
    )  # fmt: skip
    assert clean.branch == "main"


def _submodule_repo(repo: Path, tmp_path: Path) -> Path:
    """`repo` with a real submodule at `sub` (committed), from a local repository."""
    init_repo(tmp_path / "upstream", {"lib.py": b"X = 1\n"})
    ident = ["-c", "user.name=U", "-c", "user.email=u@x"]
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q",
        str(tmp_path / "upstream"), "sub")  # fmt: skip
    git(repo, *ident, "commit", "-qm", "add submodule")
    return repo / "sub"


def test_dirty_submodule_is_named_in_a_warning(repo: Path, tmp_path: Path) -> None:
    sub = _submodule_repo(repo, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean submodule: no warning at all
        snapshot(repo, "clean")
    (sub / "lib.py").write_bytes(b"X = 2  # uncommitted, inside the submodule\n")
    before = UserState(repo)
    sub_index = (repo / ".git" / "modules" / "sub" / "index").read_bytes()

    with pytest.warns(DirtySubmodule) as caught:
        v = snapshot(repo, "run1", entry_script=Path("train.py"))

    assert len(caught) == 1  # once per run, naming the submodule and what is missing
    message = str(caught[0].message)
    assert "run run1" in message and "'sub'" in message
    assert "uncommitted edits that are not part of the run's code version" in message
    before.assert_unchanged()
    assert (repo / ".git" / "modules" / "sub" / "index").read_bytes() == sub_index
    assert v.dirty is False  # the superproject itself is clean: the gitlink is unchanged
    with pytest.warns(DirtySubmodule, match="run run2"):  # every run says it again
        snapshot(repo, "run2")


def test_not_a_repo_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "train.py").write_text("x\n")
    with pytest.raises(NotAGitRepository) as err:
        snapshot(plain, "run1", entry_script=Path("train.py"))
    assert str(plain) in str(err.value) and "git init" in str(err.value)


def test_entry_script_outside_repo_is_refused(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.py"
    outside.write_text("x\n")
    for entry in (outside, Path("../elsewhere.py")):
        with pytest.raises(FlorError, match="outside the project repository"):
            snapshot(repo, "run1", entry_script=entry)
    with pytest.raises(FlorError, match="outside the project repository"):
        snapshot(repo, "run1", include=[outside])
    assert git(repo, "for-each-ref", "refs/flor") == ""


def test_missing_entry_script_is_refused(repo: Path) -> None:
    with pytest.raises(FlorError, match="does not exist"):
        snapshot(repo, "run1", entry_script=Path("nope.py"))
    with pytest.raises(FlorError, match="does not exist"):
        snapshot(repo, "run1", include=[Path("nope/")])


def test_subdirectories_and_spaces(tmp_path: Path) -> None:
    root = init_repo(
        tmp_path / "my project",
        {"src dir/my train.py": b"v1\n", "src dir/util s.py": b"u\n", "top.py": b"t\n"},
    )
    (root / "src dir" / "my train.py").write_bytes(b"v2 with spaces\n")
    (root / "src dir" / "new file.py").write_bytes(b"new\n")
    before = UserState(root)

    rel = snapshot(root, "run-rel", entry_script=Path("src dir/new file.py"))
    absolute = snapshot(root, "run-abs", entry_script=root / "src dir" / "new file.py")
    from_str_root = snapshot(str(root), "run-str", entry_script=Path("src dir/new file.py"))

    before.assert_unchanged()
    assert rel == absolute == from_str_root
    assert read_file(root, rel.commit, "src dir/my train.py") == b"v2 with spaces\n"
    assert read_file(root, rel.commit, "src dir/new file.py") == b"new\n"
    assert read_file(root, rel.commit, str(root / "src dir" / "util s.py")) == b"u\n"


def test_root_may_be_a_subdirectory(repo: Path) -> None:
    """Relative paths are taken relative to `root`, which may be inside the repository."""
    (repo / "pkg" / "run.py").write_text("print('pkg run')\n")
    v = snapshot(repo / "pkg", "run1", entry_script=Path("run.py"))
    assert "pkg/run.py" in tree_paths(repo, v.commit)


def test_read_file_exact_bytes_and_errors(repo: Path) -> None:
    data = b"\x00\xffbinary\r\n\n\n"
    (repo / "blob.bin").write_bytes(data)
    v = snapshot(repo, "run1", include=[Path("blob.bin")])
    assert read_file(repo, v.commit, "blob.bin") == data
    assert read_file(repo, v.commit, "./pkg/model.py") == b"W = 1\n"
    assert read_file(repo, v.commit, "pkg/__init__.py") == b""
    with pytest.raises(FlorError, match="missing.py"):
        read_file(repo, v.commit, "missing.py")
    with pytest.raises(FlorError, match="Cannot read"):
        read_file(repo, "0" * 40, "train.py")


# --- robustness --------------------------------------------------------------------------


def test_parallel_threads(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    (repo / "train.py").write_text("dirty for threads\n")
    before = UserState(repo)
    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(lambda i: snapshot(repo, f"t{i}"), range(16)))
    before.assert_unchanged()
    assert len({v.commit for v in versions}) == 1
    refs = git(repo, "for-each-ref", "--format=%(objectname)", "refs/flor/runs").split()
    assert refs == [versions[0].commit] * 16
    assert list(scratch.iterdir()) == []  # temp indexes removed


def test_parallel_processes(repo: Path) -> None:
    (repo / "train.py").write_text("dirty for processes\n")
    before = UserState(repo)
    code = (
        "import sys\n"
        "from flor_flows.versioning.code import snapshot\n"
        "print(snapshot(sys.argv[1], sys.argv[2], entry_script='train.py').commit)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(repo), f"p{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(6)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    before.assert_unchanged()
    assert len({out.strip() for out, _ in results}) == 1
    assert len(git(repo, "for-each-ref", "refs/flor/runs").splitlines()) == 6


def test_temp_index_removed_when_git_fails(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A path inside a submodule cannot be added; the error is clear and nothing leaks."""
    nested = init_repo(repo / "nested", {"inner.txt": b"inner\n"})
    git(repo, "-c", "user.name=S", "-c", "user.email=s@x", "add", "nested")
    git(repo, "-c", "user.name=S", "-c", "user.email=s@x", "commit", "-q", "-m", "sub")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    before = UserState(repo)
    with pytest.raises(FlorError, match="Could not"):
        snapshot(repo, "run1", include=[nested / "inner.txt"])
    before.assert_unchanged()
    assert list(scratch.iterdir()) == []
    assert git(repo, "for-each-ref", "refs/flor") == ""
