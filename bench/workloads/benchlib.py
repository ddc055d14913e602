"""Helpers shared by the workload scripts.

bench/run.py copies this folder into a fresh git repo per measurement and runs one script there.
Parameters come in through the environment (not argv, which FlorDB parses for its own flags):
FLOR_IMPL names the module to measure (flordb, flor_flows or noop_flor), BENCH_PARAMS is a JSON
object, and results go as JSON to the file named by BENCH_OUT (never to stdout, which FlorDB
captures as part of the run).

CPU and memory figures cover this process and its live descendants, so work or data handed to a
helper process is counted too.
"""

import importlib
import json
import os
import resource
import time


def load_flor():
    return importlib.import_module(os.environ.get("FLOR_IMPL", "flor_flows"))


def prefect_env(home, startup_timeout_s: int = 180) -> None:
    """Before prefect is imported: drop inherited PREFECT_* variables, keep Prefect's state
    in `home`, telemetry off. The default 20 s ephemeral start-up is too short on 2 busy
    cores; the timeout only affects failures, not timings."""
    for key in [k for k in os.environ if k.startswith("PREFECT_")]:
        del os.environ[key]
    os.environ.update(
        {
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(startup_timeout_s),
            "DO_NOT_TRACK": "1",
        }
    )
    os.makedirs(home, exist_ok=True)


def params() -> dict:
    return json.loads(os.environ.get("BENCH_PARAMS") or "{}")


def _tree() -> dict[int, list[str]]:
    """This process and its live descendants: pid -> the fields of /proc/<pid>/stat after comm."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stats[int(entry)] = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
    tree, todo = {}, [os.getpid()]
    while todo:
        pid = todo.pop()
        tree[pid] = stats.get(pid, [])
        todo += [child for child, st in stats.items() if int(st[1]) == pid and child not in tree]
    return tree


def _status(pid: int, field: str) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def mem_mb(field: str = "VmRSS") -> float:
    """Sum over the process tree of VmRSS (or of VmHWM, the per-process peaks), in MB."""
    return sum(_status(pid, field) for pid in _tree())


def reset_peak() -> None:
    """Reset VmHWM to the current RSS in every process of the tree (Linux >= 4.0)."""
    for pid in _tree():
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


def cpu_s() -> float:
    """CPU seconds of this process (all threads), its reaped children and live descendants."""
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = sum(int(st[11]) + int(st[12]) for pid, st in _tree().items() if pid != os.getpid())
    return time.process_time() + kids.ru_utime + kids.ru_stime + ticks / os.sysconf("SC_CLK_TCK")


def emit(**results) -> None:
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(results, f)
