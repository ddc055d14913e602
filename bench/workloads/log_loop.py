"""Cost of flor.log inside flor.loop, memory held by the buffered values, and commit() time.

Wall and CPU time; CPU counts every thread and helper process, so work handed to a background
writer is counted too.

A short warm-up loop and a pause first let any lazy initialisation finish (FlorDB's branch switch,
a background writer opening its store), so it is not charged to either timed loop.
"""

import time

from benchlib import cpu_s, emit, load_flor, mem_mb, params, reset_peak

flor = load_flor()
n = params()["n"]

for i in flor.loop("warmup", range(10)):
    flor.log("warm", i)
time.sleep(2)

t0, c0 = time.perf_counter(), cpu_s()
for i in flor.loop("bare", range(n)):
    x = i * 0.001
bare_s, bare_cpu = time.perf_counter() - t0, cpu_s() - c0

peak_before = mem_mb("VmHWM")
rss0 = mem_mb()
reset_peak()
t0, c0 = time.perf_counter(), cpu_s()
for i in flor.loop("step", range(n)):
    x = i * 0.001
    flor.log("loss", x)
logged_s, logged_cpu = time.perf_counter() - t0, cpu_s() - c0
rss1, peak_logging = mem_mb(), mem_mb("VmHWM")

t0 = time.perf_counter()
flor.commit()
commit_s = time.perf_counter() - t0

emit(
    n=n,
    bare_s=bare_s,
    logged_s=logged_s,
    log_us=(logged_s - bare_s) / n * 1e6,
    log_cpu_us=(logged_cpu - bare_cpu) / n * 1e6,
    rss_growth_mb=rss1 - rss0,
    rss_peak_growth_mb=peak_logging - rss0,
    commit_s=commit_s,
    peak_rss_mb=max(peak_before, mem_mb("VmHWM")),
)
