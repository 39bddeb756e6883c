"""Per-kernel time breakdown of a compiled network on the GPU: which kernels the latency goes to.

Each call the Relax VM makes (a TIR kernel, possibly two CUDA launches) is bracketed with CUDA
events through the VM's instrument hook, over several runs after a warm-up; the median per call
is reported, grouped by kernel family (Escoin convolutions, dense convolutions, matmuls/FC, pools,
other). Variants: escoin (the shipped pipeline), escoin_stock_fc (the same but TVM's stock dlight
rules for the fully-connected layers, i.e. without schedule/skinny_matmul.py), tvm_dense.
``--dtype float16`` compiles the model and its input in that dtype.

Usage: python -m experiments.profiling.profile_network alexnet,vgg16 16 0.9 [--runs 10]
    [--dtype float32] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import re

import numpy as np


from experiments.benchmarks.bench_networks import example, pruned_model
from experiments.common import RESULTS, gpu_short_name, result_path

VARIANTS = ("escoin", "escoin_stock_fc", "tvm_dense")


def family(symbol: str) -> str:
    if symbol.startswith("escoin_conv2d"):
        return "escoin conv"
    for name, pattern in (("dense conv", r"conv2d"), ("matmul/FC", r"matmul|dense"),
                          ("pool", r"pool"), ("vm builtin", r"^vm\.")):
        if re.search(pattern, symbol):
            return name
    return "other"


def compile_variant(network, batch, sparsity, variant, dtype="float32"):
    import torch

    import escoin_tvm
    from escoin_tvm import compiler

    original = compiler.relax_pipeline
    if variant == "escoin_stock_fc":
        compiler.relax_pipeline = lambda target, stock=False: original(target, stock=True)
    try:
        model, x = pruned_model(network, sparsity), example(batch)
        if dtype != "float32":
            model, x = model.to(getattr(torch, dtype)), x.to(getattr(torch, dtype))
        return escoin_tvm.compile(model, (x,), target="cuda",
                                  dispatch_by="none" if variant == "tvm_dense" else "threshold")
    finally:
        compiler.relax_pipeline = original


def profile(compiled, runs: int):
    """[(symbol, median ms)] in call order, and the median end-to-end time of the same runs."""
    import torch
    import tvm

    vm = compiled.vm
    events = []

    def instrument(func, symbol, before, ret, *args):
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # legacy default stream: the one TVM launches on
        events.append((symbol, before, event))
        return 0

    args = [tvm.runtime.tensor(np.random.default_rng(0).standard_normal(s).astype(d), compiled.device)
            for s, d in compiled.metadata["inputs"]]
    vm["main"](*args)  # warm-up, uninstrumented
    vm.set_instrument(instrument)
    per_run = []
    for _ in range(runs):
        events.clear()
        vm["main"](*args)
        torch.cuda.synchronize()
        calls, open_ = [], {}
        for symbol, before, event in events:
            if before:
                open_.setdefault(symbol, []).append(event)
            else:
                calls.append((symbol, open_[symbol].pop().elapsed_time(event)))
        per_run.append(calls)
    vm.set_instrument(None)
    symbols = [s for s, _ in per_run[0]]
    times = np.median(np.array([[t for _, t in run] for run in per_run]), axis=0)
    return list(zip(symbols, times.tolist())), compiled.time(number=10, repeat=5) * 1e3


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("networks")
    parser.add_argument("batch", type=int)
    parser.add_argument("sparsity")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.get_device_name(0)
    path = result_path("profile", gpu=gpu_short_name(gpu), out=args.out)
    for network in args.networks.split(","):
        for variant in args.variants.split(","):
            compiled = compile_variant(network, args.batch, args.sparsity, variant, args.dtype)
            calls, total = profile(compiled, args.runs)
            groups = {}
            for symbol, ms in calls:
                groups[family(symbol)] = groups.get(family(symbol), 0.0) + ms
            row = {"gpu": gpu, "network": network, "batch": args.batch, "sparsity": args.sparsity,
                   "variant": variant, "dtype": args.dtype, "latency_ms": total, "families_ms": groups, "calls": calls}
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"{network} b{args.batch} {args.sparsity} {variant} {args.dtype}: {total:.3f} ms end to end; "
                  + ", ".join(f"{k} {v:.3f}" for k, v in sorted(groups.items(), key=lambda kv: -kv[1])))
            for symbol, ms in sorted(calls, key=lambda c: -c[1])[:6]:
                print(f"    {ms:8.3f} ms  {symbol}")
    print("results:", path)


if __name__ == "__main__":
    main()
