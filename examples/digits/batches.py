"""Split scikit-learn's digits into dated arrival batches and a fixed test split.

Simulates a continuous-training feed: each CSV in ``<dest>/batches/`` is a day's worth of
newly labelled 8x8 images (columns ``p0``..``p63`` with pixel intensities 0-16, plus
``label``), and ``<dest>/test.csv`` is a held-out split that never changes.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits

FIRST_DAY = dt.date(2026, 11, 1)
TEST_FRACTION = 0.2


def write_batches(dest_dir: Path, n_batches: int = 4, seed: int = 0) -> list[Path]:
    """Write ``test.csv`` and ``n_batches`` dated batch CSVs under ``dest_dir``.

    Returns the batch paths in arrival order (``batches/2026-11-01.csv``, ...). The split
    depends only on ``seed`` and ``n_batches``, so reruns produce identical files.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    digits = load_digits()
    table = pd.DataFrame(
        digits.data.astype(np.int64), columns=[f"p{i}" for i in range(digits.data.shape[1])]
    )
    table["label"] = digits.target.astype(np.int64)

    order = np.random.default_rng(seed).permutation(len(table))
    n_test = int(len(table) * TEST_FRACTION)
    dest_dir = Path(dest_dir)
    (dest_dir / "batches").mkdir(parents=True, exist_ok=True)
    table.iloc[order[:n_test]].to_csv(dest_dir / "test.csv", index=False)

    paths = []
    for day, chunk in enumerate(np.array_split(order[n_test:], n_batches)):
        path = dest_dir / "batches" / f"{FIRST_DAY + dt.timedelta(days=day)}.csv"
        table.iloc[chunk].to_csv(path, index=False)
        paths.append(path)
    return paths


if __name__ == "__main__":
    import sys

    for p in write_batches(Path(sys.argv[1] if len(sys.argv) > 1 else "data")):
        print(p)
