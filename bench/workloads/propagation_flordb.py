"""FlorDB's side of the propagation benchmark: `flordb.hlast.backprop` on every case.

Run by workloads/propagation.py on the FlorDB venv's python, in a scratch git repo (importing
flordb sets up `.flor/` in the working directory). BENCH_PARAMS names a JSON file: a list of
{"id", "new", "old", "lines", "reps"}, `lines` being the line numbers in `new` of the statements
to carry. For each case and repetition the statements are propagated one call per line, in
order, each call's output being the next call's target, as FlorDB's replay does. Writes to
BENCH_OUT a list of {"id", "source" (the target after the last call), "errors" (one
"line N: Type: message" per call that raised), "exists" (lines backprop found already present),
"seconds" (per repetition, all calls of the version)}.
"""

import json
import signal
import time
from pathlib import Path

from benchlib import emit, params
from flordb.hlast import backprop

CALL_TIMEOUT_S = 300  # one backprop call; beyond this it counts as a failure of that call


def on_alarm(signum: int, frame: object) -> None:
    raise TimeoutError(f"backprop took more than {CALL_TIMEOUT_S} s")


def backprop_once(line: int, new: Path, target: Path, out: Path) -> tuple[str | None, float]:
    """One backprop call: its error ("Type: message", None if it returned) and its seconds."""
    out.unlink(missing_ok=True)
    signal.alarm(CALL_TIMEOUT_S)
    t0 = time.perf_counter()
    try:
        backprop(line, new, target, out)
    except Exception as exc:  # noqa: BLE001 - measuring a rival: any failure is its refusal
        return f"{type(exc).__name__}: {exc}", time.perf_counter() - t0
    finally:
        signal.alarm(0)
    return None, time.perf_counter() - t0


def carry(new: Path, old: str, lines: list[int], work: Path) -> tuple[dict, float]:
    """Propagate the statements at `lines` of `new` into `old`; the outcome and the seconds."""
    target, out = work / "target.py", work / "out.py"
    target.write_bytes(old.encode())
    errors, exists, seconds = [], [], 0.0
    for line in lines:
        error, took = backprop_once(line, new, target, out)
        seconds += took
        if error:
            errors.append(f"line {line}: {error}")
        elif out.exists():
            target.write_bytes(out.read_bytes())
        else:  # backprop caught its own FileExistsError ("already exists") and wrote nothing
            exists.append(line)
    return {"source": target.read_bytes().decode(), "errors": errors, "exists": exists}, seconds


def run_case(case: dict, work: Path) -> dict:
    """Every repetition of one case; the outcome of the first."""
    new = work / "new.py"
    new.write_bytes(case["new"].encode())
    runs = [carry(new, case["old"], case["lines"], work) for _ in range(case["reps"])]
    return {"id": case["id"], **runs[0][0], "seconds": [s for _, s in runs]}


def main() -> None:
    signal.signal(signal.SIGALRM, on_alarm)
    cases = json.loads(Path(params()["cases"]).read_text())
    work = Path("propagation-flordb")
    work.mkdir(exist_ok=True)
    emit(results=[run_case(case, work) for case in cases])


if __name__ == "__main__":
    main()
