"""Latency of flor.dataframe over an existing store, median of `reps` calls in this process."""

import statistics
import time

from benchlib import emit, load_flor, params

flor = load_flor()
reps = params().get("reps", 5)
SEVEN = ("loss", "acc", "grad_norm", "val_loss", "val_acc", "lr_now", "w_norm")
CASES = {"one": ("loss",), "seven": SEVEN, "runs": ()}

results = {}
for label, names in CASES.items():
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        df = flor.dataframe(*names)
        times.append(time.perf_counter() - t0)
    results[label] = {"median_s": statistics.median(times), "shape": list(df.shape)}
emit(**results)
