"""The shape of the package: imports point one way (no cycle between modules or packages,
lazy imports included), and every subpackage names its public parts in `__all__`."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import flor_flows

ROOT = Path(flor_flows.__file__).parent
TOP = [ROOT, ROOT.parent / "flows", ROOT.parent / "deployments"]  # the installed packages
PACKAGES = sorted(p.parent for p in ROOT.glob("*/__init__.py"))


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(path): path for top in TOP for path in top.rglob("*.py")}


def _type_only(tree: ast.Module) -> set[int]:
    """The nodes under `if TYPE_CHECKING:` (never imported at run time)."""
    return {
        id(node)
        for branch in ast.walk(tree)
        if isinstance(branch, ast.If) and "TYPE_CHECKING" in ast.unparse(branch.test)
        for node in ast.walk(branch)
    }


def _imports(path: Path) -> set[str]:
    """The flor_flows modules `path` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    skipped, found = _type_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]  # fmt: skip
            found.update(subs if len(subs) == len(node.names) else [node.module, *subs])
    return {name for name in found if name in MODULES}


def _unit(module: str) -> str:
    """The package a module belongs to (flor_flows.store, flows...), or the module itself."""
    parts = module.split(".")
    if parts[0] != "flor_flows":
        return parts[0]
    return ".".join(parts[:2]) if len(parts) > 2 or (ROOT / parts[-1]).is_dir() else module


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for after in sorted(graph.get(node, ())):
            if after not in index:
                visit(after)
                low[node] = min(low[node], low[after])
            elif after in stack:
                low[node] = min(low[node], index[after])
        if low[node] == index[node]:
            component = []
            while (top := stack.pop()) != node:
                component.append(top)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules_or_packages() -> None:
    modules = {name: _imports(path) - {name} for name, path in MODULES.items()}
    packages: dict[str, set[str]] = {}
    for name, imported in modules.items():
        packages.setdefault(_unit(name), set()).update(_unit(i) for i in imported)
    packages = {name: imported - {name} for name, imported in packages.items()}
    assert len(modules) > 70 and "flor_flows.store.store" in modules["flor_flows.store"]
    assert _cycles(modules) == []
    assert _cycles(packages) == []


def test_the_walker_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_subpackage_names_its_public_parts() -> None:
    for package in PACKAGES:
        name = _module(package / "__init__.py")
        module = importlib.import_module(name)
        public = sorted(
            p.stem for p in package.glob("*.py") if not p.stem.startswith("_")
        )  # its modules, or the names it defines from them
        assert hasattr(module, "__all__"), name
        for exported in module.__all__:
            assert hasattr(module, exported) or exported in public, f"{name}.{exported}"
        assert module.__doc__, name


def _layout_entries() -> dict[str, str]:
    """The README's Layout block as {entry: its text}: `flor_flows/record/`, `flows/`, and
    `flor_flows/` for the lines of the package's own modules."""
    readme = (ROOT.parent / "README.md").read_text()
    block = readme.split("## Layout\n\n```\n", 1)[1].split("```", 1)[0]
    entries: dict[str, str] = {}
    top = key = ""
    for line in block.splitlines():
        indent = len(line) - len(line.lstrip())
        first = line.split()[0] if line.strip() else ""
        if indent == 0:
            top = key = first
        elif indent == 2 and first.endswith("/"):
            key = top + first
        elif indent == 2:
            key = top
        entries[key] = entries.get(key, "") + line + "\n"
    return entries


def test_the_readme_layout_names_every_module_where_it_lives() -> None:
    entries = _layout_entries()
    for top in TOP:
        for path in top.rglob("*.py"):
            if path.name == "__init__.py":
                continue
            where = path.parent.relative_to(ROOT.parent).as_posix() + "/"
            assert path.name in entries.get(where, ""), f"README Layout: {where}{path.name}"
    assert "warm.py" not in entries["flor_flows/record/"]  # each entry only its own files
