"""escoin-tvm against the dense model a user would run instead, on the same device, as the
demo and ``escoin bench`` print it.

On a GPU the dense baselines are PyTorch with all its launches captured in one CUDA graph
(``timing.graph_time``), in fp32 with TF32 off, in TF32 (PyTorch's default for convolutions) and
in fp16 channels-last (and bf16 for a bf16 model); escoin-tvm is timed by TVM's
``time_evaluator``, launches included. On the CPU the baseline is PyTorch eager in fp32, with
the threads it has. Every variant is timed in ``ROUNDS`` rounds taken in turn, so that a busy
machine slows all of them alike, and the min, median and max of each are printed; the last line
compares medians with the fastest baseline that ran, and says when the spreads overlap.
"""
from __future__ import annotations

import copy
import statistics

ROUNDS = 5


def error_against_float64(compiled, model, x, device: str) -> float:
    """Max |error| of ``compiled`` on ``x`` (its first output) relative to the largest output of
    ``model`` with the same weights and input in float64."""
    import torch

    with torch.no_grad():
        reference = copy.deepcopy(model).double()(x.double())
    result = compiled(x.to(device))
    result, reference = (r[0] if isinstance(r, (tuple, list)) else r for r in (result, reference))
    return float((result.double().cpu() - reference).abs().max() /
                 reference.abs().max().clamp_min(1e-30))


def time_against_dense(compiled, model, x, device: str, dtype: str, out=print,
                       rounds: int = ROUNDS) -> dict:
    """Times ``compiled`` (a CompiledModule of ``model``) and the dense baselines on input
    ``x``, prints the table and the verdict; returns {variant: [seconds per round]}."""
    import torch

    timers = {f"escoin-tvm, {dtype} ({'time_evaluator' if device == 'cuda' else 'TVM VM'})":
              lambda: compiled.time(number=10, repeat=1)}
    dense = _dense_timers(model, x, device, dtype)
    timers.update((f"dense PyTorch, {name}", timer) for name, timer in dense.items())
    runs = {name: [] for name in timers}
    for _ in range(rounds):  # in turn: a busy machine slows every variant alike
        for name, timer in timers.items():
            runs[name].append(timer())
    out(f"\n{'variant':<58s} {'min':>9s} {'median':>9s} {'max':>9s}  (ms, {rounds} rounds)")
    for name, times in runs.items():
        low, mid, high = (f(times) * 1e3 for f in (min, statistics.median, max))
        out(f"{name:<58s} {low:9.3f} {mid:9.3f} {high:9.3f}")
    ours = runs[next(iter(timers))]
    name, best = min(((n, t) for n, t in runs.items() if n.startswith("dense")),
                     key=lambda item: statistics.median(item[1]))
    mine, theirs = statistics.median(ours), statistics.median(best)
    verdict = f"{theirs / mine:.2f}x faster" if mine < theirs else f"{mine / theirs:.2f}x slower"
    overlap = max(ours) >= min(best) and max(best) >= min(ours)
    where = "the GPU" if device == "cuda" else \
        f"the CPU, with {torch.get_num_threads()} threads for PyTorch (escoin-tvm targets NVIDIA GPUs)"
    out(f"on {where}: escoin-tvm {dtype} is {verdict} than the fastest dense PyTorch run here "
        f"({name.removeprefix('dense PyTorch, ')}), by medians" +
        ("; their spreads overlap, so the difference is within this machine's noise"
         if overlap else ""))
    return runs


def _dense_timers(model, x, device: str, dtype: str) -> dict:
    """{baseline: a function returning one timing (seconds)} of the dense model a user would
    run instead (module docstring)."""
    import torch

    from .support.timing import median_time

    if device == "cpu":
        base = copy.deepcopy(model).float()
        xf = x.float()

        def eager():
            with torch.no_grad():
                return median_time(lambda: base(xf), "cpu", warmup=1, repeats=5)

        return {"eager fp32": eager}
    variants = {"fp32 in CUDA graphs (TF32 off)": (torch.float32, False, False),
                "TF32 in CUDA graphs (PyTorch's default)": (torch.float32, True, False),
                "fp16 channels-last in CUDA graphs": (torch.float16, True, True)}
    if dtype == "bfloat16":
        variants["bf16 channels-last in CUDA graphs"] = (torch.bfloat16, True, True)
    return {name: _graph_timer(model, x, *settings) for name, settings in variants.items()}


def _graph_timer(model, x, dtype, tf32: bool, channels_last: bool):
    """A function timing the dense model in ``dtype`` from a CUDA graph, with TF32 as given
    (PyTorch's settings are put back after each timing)."""
    import torch

    from .support.timing import graph_time

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    dense = copy.deepcopy(model).to("cuda", dtype).to(memory_format=fmt)
    xd = x.to("cuda", dtype).contiguous(memory_format=fmt)

    def timer():
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.benchmark)
        try:
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
            with torch.no_grad():
                return graph_time(lambda: dense(xd))
        finally:
            (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark) = saved

    return timer
