"""Layer benchmark: escoin-tvm against what a PyTorch user would run instead, on one GPU.

For each layer, sparsity and batch, on the same random magnitude-pruned weights:
  escoin       escoin-tvm's sparse direct convolution
  cudnn_fp32   torch conv2d, cuDNN, TF32 off
  cudnn_tf32   torch conv2d, cuDNN, TF32 on (PyTorch's default for convolutions)
  cudnn_fp16   torch conv2d, cuDNN, fp16 weights and inputs, channels-last
  escoin_fp16  escoin-tvm's kernel in fp16 (float32 sums), its column compared with cudnn_fp16
  cublas_im2col   unfold + dense GEMM (fp32, TF32 off)
  cusparse_im2col unfold + CSR SpMM (torch.sparse, cuSPARSE, fp32)
  tvm_dense    TVM's own conv2d for CUDA, default GPU schedules (Relax + dlight)
escoin-tvm and the torch baselines are timed the same way (``graph_time``): 20 calls captured in
one CUDA graph (TVM's kernels join the capture through tvm_ffi's torch-stream context), the graph
replayed 50 times under CUDA events, the median divided by 20, so no launch overhead, Python's or
the driver's, is counted for anyone. tvm_dense (a Relax VM) is timed by time_evaluator, and so
is escoin-tvm a second time (escoin_time_evaluator_s: back-to-back launches, the method of
earlier runs). Every escoin result (both runs) is checked against cuDNN fp32 in the same run.

Usage: python -m experiments.benchmarks.bench_layers [--quick] [--layers a,b] [--sparsities ..] [--batches ..]
Writes JSON lines to experiments/results/ (or --out) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


from experiments.benchmarks.layers import LAYER_SETS, pruned_weight
from experiments.common import (RESULTS, environment, export_kernel, geomean, gpu_short_name,
                                load_kernel, result_path)
from escoin_tvm.kernels.conv2d.operator import kernel_input_shape
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from escoin_tvm.support.timing import graph_time, median_time

FP32_PEAK = {"H100": 66.9e12, "H200": 66.9e12}  # non-tensor fp32 FMA peak, SXM datasheets


def build_escoin(job):
    """Worker: compile one escoin kernel and export it (compiles run in parallel on the CPUs)."""
    (name, batch, sparsity, input_chw, wshape, stride, padding, groups, seed, workdir, config,
     dtype) = job
    import escoin_tvm
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig

    weight = pruned_weight(wshape, sparsity, seed).astype(dtype)
    start = time.time()
    kernel = escoin_tvm.build_sparse_conv2d(
        weight, (batch, *input_chw), stride=stride, padding=padding, groups=groups,
        target="cuda", config=GpuConfig(**config) if config else None)
    path = os.path.join(workdir, f"{name}_b{batch}_s{sparsity}_{dtype}.so")
    export_kernel(kernel, path)
    return path, kernel.config.__dict__, time.time() - start, kernel.weight.nnz


def torch_baselines(x, weight, stride, padding, groups, which):
    import torch
    import torch.nn.functional as F

    out = {}
    w = torch.from_numpy(weight).cuda()
    if "cudnn_fp32" in which:
        torch.backends.cudnn.allow_tf32 = False
        out["cudnn_fp32"] = graph_time(lambda: F.conv2d(x, w, None, stride, padding, 1, groups))
    if "cudnn_tf32" in which:
        torch.backends.cudnn.allow_tf32 = True
        out["cudnn_tf32"] = graph_time(lambda: F.conv2d(x, w, None, stride, padding, 1, groups))
        torch.backends.cudnn.allow_tf32 = False
    if "cudnn_fp16" in which:
        xh = x.half().to(memory_format=torch.channels_last)
        wh = w.half().to(memory_format=torch.channels_last)
        out["cudnn_fp16"] = graph_time(lambda: F.conv2d(xh, wh, None, stride, padding, 1, groups))
    o, cg, kh, kw = weight.shape
    og = o // groups
    n = x.shape[0]
    if "cublas_im2col" in which or "cusparse_im2col" in which:
        torch.backends.cuda.matmul.allow_tf32 = False
        wg = w.reshape(groups, og, cg * kh * kw)

        def cols():  # (groups, cg*kh*kw, n*L)
            c = F.unfold(x, (kh, kw), padding=padding, stride=stride)  # (n, C*kh*kw, L)
            return c.reshape(n, groups, cg * kh * kw, -1).permute(1, 2, 0, 3).reshape(
                groups, cg * kh * kw, -1)

        if "cublas_im2col" in which:
            out["cublas_im2col"] = graph_time(lambda: torch.bmm(wg, cols()))
        if "cusparse_im2col" in which and weight.any():
            csr = [wg[g].to_sparse_csr() for g in range(groups)]

            def spmm():
                c = cols()
                return [torch.sparse.mm(csr[g], c[g]) for g in range(groups)]

            try:
                out["cusparse_im2col"] = graph_time(spmm)
            except RuntimeError:  # some torch builds can't capture cuSPARSE: time eagerly
                out["cusparse_im2col"] = median_time(spmm, repeats=100)
    return out


def half_kernel_time(path, x, ref, spec):
    """(seconds, max error relative to the fp32 reference) of an exported fp16 kernel on the
    input rounded to fp16, timed as the fp32 kernel is."""
    import torch
    import tvm

    dev = tvm.cuda(0)
    mod, consts = load_kernel(path, dev)
    xh = x.half().reshape(kernel_input_shape(spec)).contiguous()
    xt = tvm.runtime.from_dlpack(xh)
    yt = tvm.runtime.empty(tuple(ref.shape), "float16", dev)
    seconds = graph_time(lambda: mod["main"](xt, *consts, yt), tvm_stream=True)
    torch.cuda.synchronize()
    err = float((torch.from_dlpack(yt).float() - ref).abs().max() /
                ref.abs().max().clamp_min(1e-30))
    return seconds, err


def build_tvm_dense(job):
    """Worker: TVM's own dense conv2d for CUDA with its default (dlight) GPU schedules."""
    name, batch, input_chw, wshape, stride, padding, groups, seed, workdir = job
    import tvm
    from tvm import relax
    from escoin_tvm.support.target import resolve_target

    weight = pruned_weight(wshape, 0.0, seed)  # dense: the path does not look at zeros
    bb = relax.BlockBuilder()
    data = relax.Var("x", relax.TensorType((batch, *input_chw), "float32"))
    with bb.function("main", [data]):
        y = bb.emit(relax.op.nn.conv2d(data, relax.const(weight), strides=stride, padding=padding,
                                       groups=groups))
        bb.emit_func_output(y)
    target = resolve_target("cuda")
    with target:
        exe = tvm.compile(bb.get(), target=target)
    path = os.path.join(workdir, f"dense_{name}_b{batch}.so")
    exe.export_library(path)
    return path


def tvm_dense_time(path, batch, input_chw):
    import tvm
    from tvm import relax

    dev = tvm.cuda(0)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), dev)
    x = tvm.runtime.tensor(np.random.default_rng(0).standard_normal((batch, *input_chw)).astype(
        np.float32), dev)
    timer = vm.time_evaluator("main", dev, number=20, repeat=5)
    return float(np.median(timer(x).results))


def memory_bandwidth():
    """Measured device-to-device copy bandwidth (bytes read + written per second)."""
    import torch

    a = torch.empty(256 * 2**20, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    t = graph_time(lambda: b.copy_(a), replays=50)
    return 2 * a.numel() * 4 / t


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="", help="comma-separated names (default: all)")
    parser.add_argument("--layer-set", default="benchmark", choices=("benchmark", "unseen"),
                        help="the benchmark's 15 layers, or shapes from other networks")
    parser.add_argument("--sparsities", default="0.7,0.8,0.9,0.95")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--baselines", default="cudnn_fp32,cudnn_tf32,cudnn_fp16,cublas_im2col,"
                        "cusparse_im2col,tvm_dense")
    parser.add_argument("--config", default="", help="JSON GpuConfig knobs for every layer")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--tag", default="layers")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--no-fp16", action="store_true", help="leave out escoin_fp16 (the same "
                        "kernels in fp16, float32 sums, against cudnn_fp16)")
    args = parser.parse_args(argv)

    layers = [l for l in LAYER_SETS[args.layer_set]
              if not args.layers or l[0] in args.layers.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    baselines = [b for b in args.baselines.split(",") if b]
    config = json.loads(args.config) if args.config else None
    workdir = os.path.join(os.environ.get("TMPDIR", "/tmp"), "escoin_bench")
    os.makedirs(workdir, exist_ok=True)

    jobs = [(name, b, s, chw, wshape, stride, pad, groups, seed, workdir, config, "float32")
            for seed, (name, chw, wshape, stride, pad, groups) in enumerate(layers)
            for b in batches for s in sparsities]
    half_jobs = [] if args.no_fp16 else [(*job[:10], None, "float16") for job in jobs]
    t0 = time.time()
    dense_jobs = [(name, b, chw, wshape, stride, pad, groups, seed, workdir)
                  for seed, (name, chw, wshape, stride, pad, groups) in enumerate(layers)
                  for b in batches] if "tvm_dense" in baselines else []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        dense_built = pool.map(build_tvm_dense, dense_jobs)
        built = list(pool.map(build_escoin, jobs))
        half_built = list(pool.map(build_escoin, half_jobs)) or [None] * len(jobs)
        dense_paths = {(j[0], j[1]): p for j, p in zip(dense_jobs, dense_built)}
    print(f"built {len(jobs)} escoin kernels in {time.time() - t0:.0f} s", flush=True)

    import torch
    import tvm
    import torch.nn.functional as F

    torch.backends.cudnn.benchmark = True
    env = environment()
    bandwidth = memory_bandwidth()
    peak = next((v for k, v in FP32_PEAK.items() if k in env["gpu"]), FP32_PEAK["H100"])
    os.makedirs(args.out, exist_ok=True)
    out_path = result_path(args.tag, gpu=gpu_short_name(env["gpu"]), out=args.out)
    dev = tvm.cuda(0)
    rows = []
    dense_cache = {}
    with open(out_path, "w") as log:
        log.write(json.dumps({"environment": env, "measured_bandwidth": bandwidth,
                              "fp32_peak": peak}) + "\n")
        for job, (path, cfg, build_s, nnz), half in zip(jobs, built, half_built):
            name, batch, sparsity, chw, wshape, stride, pad, groups, seed = job[:9]
            weight = pruned_weight(wshape, sparsity, seed)
            x = torch.randn(batch, *chw, device="cuda")
            torch.backends.cudnn.allow_tf32 = False
            ref = F.conv2d(x, torch.from_numpy(weight).cuda(), None, stride, pad, 1, groups)
            mod, consts = load_kernel(path, dev)
            spec = Conv2dSpec.create(x.shape, wshape, stride=stride, padding=pad, groups=groups)
            xt = tvm.runtime.from_dlpack(x.reshape(kernel_input_shape(spec)))
            yt = tvm.runtime.empty(tuple(ref.shape), "float32", dev)
            yt_graph = tvm.runtime.empty(tuple(ref.shape), "float32", dev)
            escoin_s = graph_time(lambda: mod["main"](xt, *consts, yt_graph), tvm_stream=True)
            mod["main"](xt, *consts, yt)
            torch.cuda.synchronize()
            err = max(float((torch.from_dlpack(out) - ref).abs().max() /
                            ref.abs().max().clamp_min(1e-30)) for out in (yt, yt_graph))
            timer = mod.time_evaluator("main", dev, number=50, repeat=7)
            escoin_te_s = float(np.median(timer(xt, *consts, yt).results))
            times = torch_baselines(x, weight, stride, pad, groups, baselines)
            if half is not None:
                times["escoin_fp16"], half_err = half_kernel_time(half[0], x, ref, spec)
            if "tvm_dense" in baselines:
                key = (name, batch)
                if key not in dense_cache:
                    dense_cache[key] = tvm_dense_time(dense_paths[key], batch, chw)
                times["tvm_dense"] = dense_cache[key]
            ho, wo = ref.shape[2], ref.shape[3]
            flops = 2.0 * nnz * batch * ho * wo
            bytes_moved = 4.0 * (x.numel() + ref.numel()) + 8.0 * nnz
            bound = max(flops / peak, bytes_moved / bandwidth)
            row = {"layer": name, "batch": batch, "sparsity": sparsity, "nnz": nnz,
                   "escoin_s": escoin_s, "escoin_time_evaluator_s": escoin_te_s,
                   **{f"{k}_s": v for k, v in times.items()},
                   "max_rel_err": err, "correct": err < 1e-4, "roofline_s": bound,
                   **({"fp16_max_rel_err": half_err, "fp16_config": half[1]} if half else {}),
                   "roofline_frac": bound / escoin_s, "config": cfg, "build_s": build_s}
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{name:22s} b{batch:<3d} s{sparsity:.2f} escoin {escoin_s*1e6:8.1f} us  " +
                  "  ".join(f"{k} {v*1e6:8.1f}" for k, v in times.items()) +
                  f"  err {err:.1e}  roof {bound/escoin_s:.0%}", flush=True)
    print(f"\nresults: {out_path}")
    print(markdown_table(rows, baselines))
    return rows


def markdown_table(rows, baselines):
    lines = ["| sparsity | batch | " + " | ".join(f"vs {b}" for b in baselines) + " |",
             "|---|---|" + "---|" * len(baselines)]
    for s in sorted({r["sparsity"] for r in rows}):
        for b in sorted({r["batch"] for r in rows}):
            sel = [r for r in rows if r["sparsity"] == s and r["batch"] == b]
            cells = [f"{geomean([r.get(k + '_s', 0) / r['escoin_s'] for r in sel]):.2f}x"
                     for k in baselines]
            lines.append(f"| {s} | {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
