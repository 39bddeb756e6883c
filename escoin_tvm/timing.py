"""Timing of PyTorch callables for the demo and the benchmarks (not for unit tests)."""
from __future__ import annotations

import time

import numpy as np


def median_time(fn, device: str = "cuda", warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds of ``fn()``: CUDA events on the GPU, a host clock on the CPU."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
    else:
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return float(np.median(times))
