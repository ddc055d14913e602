"""A FlorDB 4.0.1 script runs on flor-flows with only its import line changed."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import Project

EXAMPLE = Path(__file__).parent / "data" / "flordb_example.py"


def test_flordb_script_runs_with_only_the_import_changed(project: Project) -> None:
    original = EXAMPLE.read_text()
    ported = original.replace("import flordb as flor\n", "import flor_flows as flor\n")
    changed = [
        (a, b) for a, b in zip(original.splitlines(), ported.splitlines(), strict=True) if a != b
    ]
    assert changed == [("import flordb as flor", "import flor_flows as flor")]
    project.write("train.py", ported)
    project.commit("flordb script")
    proc = project.run("train.py", "--kwargs", "epochs=2", "hidden=8")
    assert "accuracy" in proc.stdout
    df = project.store().dataframe(["loss", "accuracy"])
    assert len(df) == 2 * 8  # 2 epochs x 8 batches of 32
    assert df["hidden"].unique().tolist() == [8] and df["epochs"].unique().tolist() == [2]
    assert df["accuracy"].between(0, 100).all() and df["loss"].notna().all()
    ckpts = project.store().query("select count(*) as n from checkpoints")
    assert ckpts["n"][0] >= 1
