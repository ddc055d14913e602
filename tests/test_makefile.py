"""`make demo` installs only what the demo needs, torch first; `make test` adds the rest.
Read from make's own dry run of the recipes (`make -n -B`), as a fresh clone would run them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _installs(target: str) -> list[str]:
    """What each `pip install` line of `make TARGET` installs, in order."""
    lines = subprocess.run(
        ["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [
        re.sub(r".*pip install( --[-a-z]+( on| off)?)* ", "", line)
        for line in lines
        if "pip install" in line
    ]


def test_make_demo_installs_torch_first_and_only_the_demos_extras() -> None:
    installs = _installs("demo")
    assert installs[1] == "torch==2.13.0"  # after pip itself: the pinned CPU build first
    assert installs[2:] == ["-e '.[torch,examples]'"]


def test_make_test_adds_the_test_extras_on_top() -> None:
    installs = _installs("test")
    assert installs[1:3] == ["torch==2.13.0", "-e '.[torch,examples]'"]
    assert installs[3] == "-e '.[torch,postgres,dask,examples,test]'"
