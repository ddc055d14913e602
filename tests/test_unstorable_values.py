"""A value a store cannot hold as is never costs other values or the training (issue 12)."""

from __future__ import annotations

import math

import pytest

from flor_flows.store import Store
from tests.conftest import Project

SCRIPT = """
import flor_flows as flor

class Unprintable:
    def __str__(self):
        raise RuntimeError("no")

for step in flor.loop("step", range(300)):
    flor.log("good", float(step))
    flor.log("text", "a\\x00b" if step == 5 else "\\ud800" if step == 7 else "ok")
    flor.log("obj", Unprintable())
flor.log("nan", float("nan"))
flor.log("inf", float("inf"))
print("trained to the end")
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_unstorable_text_is_stored_escaped_and_nothing_is_lost(
    project: Project, postgres_url: str, backend: str
) -> None:
    url = project.store_url if backend == "sqlite" else postgres_url
    project.write("train.py", SCRIPT)
    project.commit("hostile values")
    proc = project.run("train.py", env={"FLOR_FLOWS_STORE_URL": url})
    assert "trained to the end" in proc.stdout
    assert proc.stderr.count("warning: a text value of 'text'") == 1, proc.stderr
    store = Store(url)
    table = store.dataframe(["good", "text", "obj"])
    assert table["good"].tolist() == [float(k) for k in range(300)]
    assert table["text"].iloc[5] == "a\\x00b" and table["text"].iloc[7] == "\\ud800"
    assert set(table["obj"]) == {"<unprintable Unprintable: RuntimeError>"}
    run_level = store.dataframe(["nan", "inf"])
    assert math.isnan(run_level["nan"].iloc[0]) and run_level["inf"].iloc[0] == math.inf
    assert store.runs()["status"].tolist() == ["completed"]


def test_a_name_the_store_cannot_hold_is_an_error_at_its_line(project: Project) -> None:
    project.write(
        "train.py",
        """
        import flor_flows as flor
        flor.log("fine", 1)
        flor.log("x" * 300, 2)
        """,
    )
    project.commit("long name")
    proc = project.run("train.py", check=False)
    assert proc.returncode == 1
    assert 'line 4, in <module>\n    flor.log("x" * 300, 2)' in proc.stderr
    assert "is 300 characters; at most 255" in proc.stderr.splitlines()[-1]
    store = project.store()
    assert store.dataframe(["fine"])["fine"].tolist() == [1]  # logged before: kept
