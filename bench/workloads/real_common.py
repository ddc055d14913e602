"""Shared by workloads/real_replay.py (flor_flows) and real_replay_flordb.py (FlorDB 4.0.1).

The script is workloads/real_torch.py (flor_flows) or real_torch_flordb.py (its FlorDB twin).
Each side records it once in a git repo of its own, records the new version (the four
hindsight statements below added) from scratch in another repo for the ground truth, then
writes the new version into the recorded repo's working tree and times one replay per
statement. No flor implementation is imported here.
"""

from __future__ import annotations

from pathlib import Path

import replay_common as rc

HERE = Path(__file__).resolve().parent
TEMPLATES = {"flor_flows": HERE / "real_torch.py", "flordb": HERE / "real_torch_flordb.py"}

# kind -> (anchor line, "before"/"after", statement, name); the statement goes at the anchor's
# indentation. In the order of the table.
STATEMENTS = {
    "start": (
        "train(args, model, device, train_loader, optimizer, epoch)",
        "before",
        'flor.log("lr_now{sfx}", optimizer.param_groups[0]["lr"])',
        "lr_now",
    ),
    "end": (
        "scheduler.step()",
        "after",
        'flor.log("lr_next{sfx}", scheduler.get_last_lr()[0])',
        "lr_next",
    ),
    "run": (
        '_mark("loop_end")',
        "after",
        'flor.log("w_norm{sfx}", sum(float(p.detach().pow(2).sum()) for p in model.parameters())'
        " ** 0.5)",
        "w_norm",
    ),
    "step": (
        "loss.backward()",
        "after",
        'flor.log("grad_norm{sfx}", sum(float(p.grad.pow(2).sum()) for p in model.parameters())'
        " ** 0.5)",
        "grad_norm",
    ),
}
KINDS = tuple(STATEMENTS)


def name(kind: str, sfx: str) -> str:
    return f"{STATEMENTS[kind][3]}{sfx}"


def script(module: str, sfx: str | None = None, kinds: tuple[str, ...] = KINDS) -> str:
    """train.py for `module`: the recorded version, or with sfx the new one holding the
    statements of `kinds`, named with that suffix."""
    out = []
    found = set()
    for line in TEMPLATES[module].read_text().splitlines(keepends=True):
        indent = line[: len(line) - len(line.lstrip())]
        added = []
        if sfx is not None:
            for kind in kinds:
                anchor, where, statement, _ = STATEMENTS[kind]
                if line.strip() == anchor:
                    found.add(kind)
                    added.append((where, indent + statement.format(sfx=sfx) + "\n"))
        out += [s for w, s in added if w == "before"]
        out.append(line)
        out += [s for w, s in added if w == "after"]
    if sfx is not None and found != set(kinds):
        raise RuntimeError(f"anchors not found for {set(kinds) - found}")
    return "".join(out)


def make_project(project: Path, module: str, sfx: str | None = None) -> None:
    """A git repo holding train.py (the .gitignore keeps both implementations' state out)."""
    rc.make_project(project, module)
    (project / ".gitignore").write_text(".flor-flows/\n")
    (project / "train.py").write_text(script(module, sfx))
    rc.git(project, "add", "-A")
    rc.git(project, "commit", "-q", "--allow-empty", "-m", "train.py")


def keyed(rows: list[tuple]) -> list[tuple]:
    """(epoch or None, value) in write order -> ((epoch, position within that epoch), value)."""
    seen: dict = {}
    out = []
    for epoch, value in rows:
        pos = seen.get(epoch, 0)
        seen[epoch] = pos + 1
        out.append(((epoch, pos), value))
    return out
