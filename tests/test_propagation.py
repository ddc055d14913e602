"""Propagation: every benchmark case placed exactly as expected or refused with its reason."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from flor_flows.propagate import propagate, propagate_files

CASES = Path(__file__).parent / "data" / "propagation"
FLOR_FLOWS = str(Path(sys.executable).parent / "flor-flows")


def _cases() -> list[Path]:
    return sorted(p for p in CASES.iterdir() if (p / "new.py").is_file())


@pytest.mark.parametrize("case", _cases(), ids=lambda p: p.name)
def test_benchmark_case(case: Path) -> None:
    meta = tomllib.loads((case / "case.toml").read_text())
    old = (case / "old.py").read_text()
    result = propagate((case / "new.py").read_text(), old, meta.get("names"), version=case.name)
    if (case / "refuse.txt").is_file():
        expected_reason = (case / "refuse.txt").read_text().strip()
        assert any(expected_reason in r.reason for r in result.refusals), result
        return
    assert result.ok, result.refusals
    assert result.source == (case / "expected.py").read_text()  # placement and every other byte
    assert all(p.line > 0 and 0 < p.confidence <= 1 for p in result.placements)


def test_there_are_enough_cases_and_families() -> None:
    families = {case.name.split("__")[0] for case in _cases()}
    assert len(_cases()) >= 40 and len(families) >= 8


NEW = """import flor_flows as flor

def train(model, loader, optimizer):
    for x, y in flor.loop("step", loader):
        loss = model(x, y)
        loss.backward()
        flor.log("grad_norm", model.weight.grad.norm().item())
        optimizer.step()
"""
OLD = """import flor_flows as flor
from setup import loader, net, opt

# training, as it was
for x, y in flor.loop('step', loader):
    l = net(x, y)  # forward
    l.backward()
    opt.step()
"""


def test_a_statement_moves_out_of_a_function_with_renames() -> None:
    result = propagate(NEW, OLD)
    assert result.ok
    (placement,) = result.placements
    assert placement.code == 'flor.log("grad_norm", net.weight.grad.norm().item())'
    assert placement.line == 8 and "renamed model -> net" in placement.notes
    expected = OLD.replace("    l.backward()\n", "    l.backward()\n    " + placement.code + "\n")
    assert result.source == expected


def test_another_new_statement_is_no_anchor_for_a_requested_one() -> None:
    head = '    for x, y in flor.loop("step", loader):\n'
    both = NEW.replace(head, head + '        flor.log("a", 1)\n        flor.log("b", 2)\n')
    result = propagate(both, OLD, names=["b"])  # asked alone, after the other one
    assert result.ok and [(p.name, p.line) for p in result.placements] == [("b", 6)]


def test_already_present_is_a_no_op_and_unknown_names_are_refused() -> None:
    done = propagate(NEW, propagate(NEW, OLD).source)
    assert done.ok and done.present == ["grad_norm"] and not done.placements
    missing = propagate(NEW, OLD, names=["nope"])
    assert [str(r) for r in missing.refusals] == [
        "nope: no flor.log of this name in the new version"
    ]


def test_an_undefined_name_is_refused_with_line_and_version() -> None:
    new = NEW.replace("model.weight.grad", "lr_now * model.weight.grad")
    (refusal,) = propagate(new, OLD, version="3f2a1c9").refusals
    assert str(refusal) == "grad_norm: name 'lr_now' is not defined at line 7 of version 3f2a1c9"


def test_files_are_followed_across_renames() -> None:
    new = {"train.py": "import utils\nutils.fit()\n", "utils.py": NEW}
    old = {"train.py": "import helpers\nhelpers.fit()\n", "helpers.py": OLD}
    results = propagate_files(new, old, version="v0")
    assert list(results) == ["helpers.py"] and results["helpers.py"].ok
    assert "grad_norm" in results["helpers.py"].source
    gone = propagate_files({"probe.py": NEW}, {"other.py": "x = 1\n"}, version="v0")
    assert (
        str(gone["probe.py"].refusals[0]) == "grad_norm: probe.py has no counterpart in version v0"
    )
    # moved and changed past recognition: the one gone file of the same name is taken
    changed = OLD + "".join(f"x{k} = {k}\n" for k in range(30))
    moved = propagate_files({"src/probe.py": NEW}, {"probe.py": changed, "b.py": "y = 2\n"})
    assert list(moved) == ["probe.py"] and [p.name for p in moved["probe.py"].placements] == [
        "grad_norm"
    ]
    two = propagate_files({"src/probe.py": NEW}, {"probe.py": changed, "old/probe.py": changed})
    assert list(two) == ["src/probe.py"] and not two["src/probe.py"].placements  # which one?


# A version with the helper in the script, and today's: the helper split out into a module.
SPLIT_OLD = """import torch
import flor_flows as flor

def train_one_epoch(net, opt, X):
    for i in range(4):
        loss = net(X).sum()
        loss.backward()
        opt.step()
    return loss.item()

net = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
sched = torch.optim.lr_scheduler.StepLR(opt, 1)
for epoch in flor.loop("epoch", range(3)):
    loss = train_one_epoch(net, opt, torch.ones(3, 2))
    sched.step()
    flor.log("loss", loss)
"""
SPLIT_NEW = {
    "scripts/utils.py": (
        SPLIT_OLD.split("\nnet =")[0]
        .replace("import torch\n", "")
        .replace("backward()\n", "backward()\n        flor.log('gnorm', net.weight.grad.norm().item())\n")
    ),
    "scripts/train.py": (
        "import torch\nimport flor_flows as flor\nfrom utils import train_one_epoch\n\n"
        + "net =" + SPLIT_OLD.split("\nnet =")[1].replace("sched.step()\n", "sched.step()\n    flor.log('lr', sched.get_last_lr()[0])\n    flor.log('best', best)\n")
    ),
}  # fmt: skip


@pytest.mark.parametrize("order", [1, -1])
def test_two_new_files_with_one_old_file_both_bring_their_statements(order: int) -> None:
    new = dict(list(SPLIT_NEW.items())[::order])  # either one first
    (result,) = propagate_files(new, {"train.py": SPLIT_OLD}, ["lr", "gnorm", "best"]).values()
    assert sorted(p.name for p in result.placements) == ["gnorm", "lr"]
    lines = result.source.splitlines()
    for placement in result.placements:  # each at its line in the final source
        assert lines[placement.line - 1].strip() == placement.code
    assert [r.name for r in result.refusals] == ["best"]  # not in that version: said
    assert result.source == SPLIT_OLD.replace(
        "backward()\n", "backward()\n        flor.log('gnorm', net.weight.grad.norm().item())\n"
    ).replace("sched.step()\n", "sched.step()\n    flor.log('lr', sched.get_last_lr()[0])\n")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLOR_FLOWS, "propagate", *args], cwd=cwd, capture_output=True, text=True)


def test_cli_prints_writes_diffs_and_exits_3_on_refusal(tmp_path: Path) -> None:
    (tmp_path / "new.py").write_text(NEW)
    (tmp_path / "old.py").write_text(OLD)
    printed = _cli("new.py", "old.py", cwd=tmp_path)
    assert printed.returncode == 0 and printed.stdout == propagate(NEW, OLD).source
    assert "placed grad_norm at line 8" in printed.stderr
    diff = _cli("new.py", "old.py", "--diff", cwd=tmp_path)
    added = [
        line
        for line in diff.stdout.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    assert added == ['+    flor.log("grad_norm", net.weight.grad.norm().item())']
    assert _cli("new.py", "old.py", "-o", "out.py", cwd=tmp_path).returncode == 0
    assert (tmp_path / "out.py").read_text() == printed.stdout
    (tmp_path / "py2.py").write_text("print 'epoch', epoch\n")
    refused = _cli("new.py", "py2.py", cwd=tmp_path)
    assert refused.returncode == 3 and "does not parse as Python 3" in refused.stderr


def test_the_flor_import_comes_along_when_the_old_version_lacks_it() -> None:
    old = '"""Train."""\nimport torch\n\nfor x in loader:\n    loss = f(x)\n    loss.backward()\n'
    new = old.replace("import torch\n", "import torch\nimport flor_flows as flor\n")
    new += '    flor.log("loss", loss.item())\n'
    result = propagate(new, old)
    assert result.ok and [p.line for p in result.placements] == [8]
    assert result.source == new
