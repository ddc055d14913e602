"""Fill a store with `runs` runs of a two-level training-like log through the real API.

Each run: 4 flor.args, epoch(20) > step(9) with 3 step metrics and 4 epoch metrics,
4 + 20 * (9 * 3 + 4) = 624 logged values, then flor.commit().
"""

import math
import time

from benchlib import emit, load_flor, params

flor = load_flor()
p = params()
runs, start = p["runs"], p.get("start", 0)

t0 = time.perf_counter()
for r in range(start, start + runs):
    lr = flor.arg("lr", round(0.001 * (1 + r % 10), 4))
    flor.arg("batch_size", 32 * (1 + r % 4))
    flor.arg("seed", r)
    flor.arg("optimizer", "adam" if r % 2 else "sgd")
    loss = 2.5
    for epoch in flor.loop("epoch", range(20)):
        for step in flor.loop("step", range(9)):
            loss *= 1 - lr
            flor.log("loss", loss)
            flor.log("acc", 1 - loss / 3)
            flor.log("grad_norm", math.sqrt(loss) + step * 1e-3)
        flor.log("val_loss", loss * 1.1)
        flor.log("val_acc", 1 - loss / 2.8)
        flor.log("lr_now", lr * 0.95**epoch)
        flor.log("w_norm", 10 + epoch * 0.1 + r * 1e-4)
    flor.commit()
emit(build_s=time.perf_counter() - t0, runs=runs)
