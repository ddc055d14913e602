"""Helpers shared by the workload scripts.

bench/run.py copies this folder into a fresh git repo per measurement and runs one script there.
Parameters come in through the environment (not argv, which FlorDB parses for its own flags):
FLOR_IMPL names the module to measure (flordb, flor_flows or noop_flor), BENCH_PARAMS is a JSON
object, and results go as JSON to the file named by BENCH_OUT (never to stdout, which FlorDB
captures as part of the run).
"""

import importlib
import json
import os


def load_flor():
    return importlib.import_module(os.environ.get("FLOR_IMPL", "flor_flows"))


def params() -> dict:
    return json.loads(os.environ.get("BENCH_PARAMS") or "{}")


def mem_mb(field: str = "VmRSS") -> float:
    """Resident memory (VmRSS) or its peak (VmHWM) of this process, in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so a later VmHWM is the peak since now."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def emit(**results) -> None:
    out = os.environ.get("BENCH_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(results, f)
