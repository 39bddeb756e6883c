"""Which GPU kernels a graph runs under torch.compile's own backend and under ``backend="escoin"``
(both ``mode="reduce-overhead"``): where a graph whose Escoin layers each measured faster than
cuDNN can still lose time as a whole (fusions inductor loses around the custom operator, copies
it adds, a different layout).

For one case (network, batch, sparsity, precision as in ``bench_backend``), both compiled models
run ``--calls`` times under the PyTorch profiler (CUDA activity: the kernels inside the replayed
CUDA graphs), and each kernel name's device time per call is listed side by side: the kernels
only one side runs, and those whose time differs most. Both models are also timed alternately
(``bench_backend.time_compiled``) and checked against eager PyTorch.

Usage (GPU): python -m experiments.investigations.backend_kernels [--network googlenet]
    [--batch 1] [--sparsity 0.7] [--precision tf32] [--calls 50]
"""
from __future__ import annotations

import argparse
import copy
import json

from experiments.benchmarks.bench_backend import prepared, time_compiled
from experiments.benchmarks.bench_networks import relative_error
from experiments.common import RESULTS, environment, result_path


def kernel_times(fn, x, calls: int) -> dict:
    """{kernel name: (us per call, launches per call)} over ``calls`` calls of ``fn(x)``."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        for _ in range(3):
            fn(x)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(calls):
                fn(x)
            torch.cuda.synchronize()
    # with CUDA activity only, an entry with device time of its own is a kernel or a copy
    return {entry.key: (entry.self_device_time_total / calls, entry.count / calls)
            for entry in prof.key_averages() if entry.self_device_time_total > 0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", default="googlenet")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sparsity", default="0.7")
    parser.add_argument("--precision", choices=("tf32", "fp16"), default="tf32")
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    import torch

    from escoin_tvm.torch_compile import backend as escoin_backend

    torch._dynamo.reset()
    model, x = prepared(args.network, args.batch, args.sparsity, args.precision)
    with torch.no_grad():
        reference = model(x).float().cpu().numpy()
    fns, errors = {}, {}
    for name, kwargs in (("dense", {}), ("escoin", {"backend": "escoin"})):
        fns[name] = torch.compile(copy.deepcopy(model), mode="reduce-overhead", **kwargs)
        with torch.no_grad():
            for _ in range(3):
                out = fns[name](x)
        errors[name] = relative_error(out.float().cpu().numpy(), reference)
    layers = [{"name": d.name, "kernel": d.kernel, "escoin_us": d.escoin_us,
               "dense_us": d.dense_us} for d in escoin_backend.REPORTS[-1].layers]
    kernels = {name: kernel_times(fn, x, args.calls) for name, fn in fns.items()}

    times = time_compiled(fns, x, rounds=5)
    names = sorted(set(kernels["dense"]) | set(kernels["escoin"]))
    rows = []
    for kernel in names:
        dense_us, dense_n = kernels["dense"].get(kernel, (0.0, 0.0))
        escoin_us, escoin_n = kernels["escoin"].get(kernel, (0.0, 0.0))
        rows.append({"kernel": kernel, "dense_us": dense_us, "dense_launches": dense_n,
                     "escoin_us": escoin_us, "escoin_launches": escoin_n})
    rows.sort(key=lambda r: -abs(r["escoin_us"] - r["dense_us"]))
    path = result_path("backend-kernels", out=args.out)
    with open(path, "w") as f:
        f.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        f.write(json.dumps({"dense_ms": times["dense"] * 1e3, "escoin_ms": times["escoin"] * 1e3,
                            "rel_err": errors, "layers": layers}) + "\n")
        for row in rows:
            f.write(json.dumps(row) + "\n")
    busy = {side: sum(us for us, _ in kernels[side].values()) for side in kernels}
    print(f"{args.network} b{args.batch} {args.sparsity} {args.precision}: dense "
          f"{times['dense'] * 1e3:.3f} ms, escoin {times['escoin'] * 1e3:.3f} ms; kernel time "
          f"per call dense {busy['dense']:.1f} us, escoin {busy['escoin']:.1f} us; launches "
          f"{sum(n for _, n in kernels['dense'].values()):.0f} / "
          f"{sum(n for _, n in kernels['escoin'].values()):.0f}; rel err {errors}")
    for layer in layers:
        if layer["kernel"] == "escoin":
            print(f"  on Escoin: {layer['name']} ({layer['escoin_us']:.1f} us vs "
                  f"{layer['dense_us']:.1f} us)")
    for row in rows[:25]:
        print(f"  {row['dense_us']:7.2f} us x{row['dense_launches']:<4.0f} -> "
              f"{row['escoin_us']:7.2f} us x{row['escoin_launches']:<4.0f} {row['kernel'][:90]}")
    print("results:", path)


if __name__ == "__main__":
    main()
