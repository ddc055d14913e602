"""Time and resident memory added by importing the implementation."""

import os
import time

from benchlib import emit, load_flor, mem_mb

rss0 = mem_mb()
t0 = time.perf_counter()
load_flor()
elapsed = time.perf_counter() - t0
emit(
    import_s=elapsed, rss_before_mb=rss0, rss_added_mb=mem_mb() - rss0, impl=os.environ["FLOR_IMPL"]
)
