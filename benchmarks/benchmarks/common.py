"""Shared, cached benchmark data. The data must not change between commits (only be
appended to), or timings stop being comparable."""
import os
from functools import lru_cache

import numpy as np

THREADS = [t for t in (1, 2, 4, 8) if t <= (os.cpu_count() or 1)]


@lru_cache(maxsize=4, typed=True)
def get_logits(n_rows, n_classes, dtype):
    rng = np.random.default_rng(1234)
    return (rng.standard_normal((n_rows, n_classes), dtype=np.float32) * 3).astype(dtype)


@lru_cache(maxsize=4)
def get_targets(n_rows, n_classes):
    return np.random.default_rng(5678).integers(0, n_classes, n_rows)


class Benchmark:
    timeout = 300
