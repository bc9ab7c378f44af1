"""What every benchmark shares: timing a call, and pinning the thread pools before they load.

Benchmarks run as scripts (``python bench/X.py``), so this sits beside them and they import it
by name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def timed_runs(fn: Callable[[], object], seconds: float, min_runs: int = 5, max_runs: int = 5000,
               warmup: int = 1) -> list[float]:
    """Seconds per call of ``fn``, after ``warmup`` untimed calls (first-call allocations, faiss
    table set-up), for about ``seconds`` of wall time and at least ``min_runs`` calls."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < seconds and len(times) < max_runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def pin_threads(threads: int) -> None:
    """Every thread pool to ``threads``. Call it before numpy is imported: OpenBLAS reads its
    variable at import; torch and faiss are set directly."""
    for var in THREAD_VARS:
        os.environ[var] = str(threads)
    import faiss
    import torch

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
