"""Timing on the GPU for the demo, the benchmarks and tuning (not for unit tests)."""
from __future__ import annotations

import time
from typing import List

import numpy as np


def median_time(fn, device: str = "cuda", warmup: int = 3, repeats: int = 20) -> float:
    """Median seconds of ``fn()``: CUDA events on the GPU, a host clock on the CPU."""
    return call_time(fn, device, warmup=warmup, calls=1, repeats=repeats)


def call_time(fn, device: str = "cuda", warmup: int = 10, calls: int = 100,
              repeats: int = 5) -> float:
    """Median seconds per call of ``fn`` called ``calls`` times back to back from Python, over
    ``repeats`` such loops: what a program launching it call by call pays, the host's work
    included (CUDA events around each loop on the GPU, a host clock on the CPU)."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(repeats):
            start.record()
            for _ in range(calls):
                fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3 / calls)
    else:
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(calls):
                fn()
            times.append((time.perf_counter() - t) / calls)
    return float(np.median(times))


def graph_times(fn, warmup: int = 3, replays: int = 50, calls: int = 20,
                tvm_stream: bool = False) -> List[float]:
    """Seconds per call of ``fn``, one value per replay: ``calls`` calls captured in one CUDA
    graph, the graph replayed ``replays`` times, each replay timed by CUDA events and divided by
    ``calls``, so that neither the host's launch latency nor the graph's is counted (a batch-1
    Escoin kernel runs 5-20 us; launches from the host add a few us that vary from run to run).
    ``tvm_stream``: ``fn`` launches TVM kernels, which join PyTorch's capture through tvm_ffi's
    stream context."""
    import torch
    import tvm_ffi

    def on(context):
        return tvm_ffi.use_torch_stream(context) if tvm_stream else context

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with on(torch.cuda.stream(stream)):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with on(torch.cuda.graph(graph)):
        for _ in range(calls):
            fn()
    for _ in range(warmup):
        graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / calls)
    return times


def graph_time(fn, warmup: int = 3, replays: int = 50, calls: int = 20,
               tvm_stream: bool = False) -> float:
    """Median of ``graph_times``."""
    return float(np.median(graph_times(fn, warmup, replays, calls, tvm_stream)))
