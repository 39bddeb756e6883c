"""Layer benchmark of the tensor-core family: vector-sparse kernels against cuDNN fp16 and the
Escoin CUDA-core kernel, on one GPU, in fp16 (or --dtype bfloat16).

For each layer, batch and sparsity, on random weights (``pruned_weight``'s, seed = the layer's
index):
  vector       the weight pruned in vectors of 16 output channels (prune.vectors), the
               vector-sparse kernel with its default config
  vector_best  the same, best of a small sweep of configs (--sweep; a bound for tuning)
  union        the weight magnitude-pruned (unstructured), in the vector-sparse format (each
               block's union of taps, explicit zeros), default config
  escoin       the unstructured weight in the Escoin CUDA-core kernel (fp16, default config)
  cudnn        torch conv2d of the dense weight, cuDNN, fp16, channels-last
Every time is the median over 50 replays of a CUDA graph of 20 calls (``graph_time``); every
kernel's output is checked against torch's conv2d in float64 on the same fp16 values.

Usage: python -m experiments.benchmarks.bench_vector_sparse [--sets benchmark,unseen]
       [--batches 1,16] [--sparsities 0.9,0.95] [--sweep] [--dtype float16] [--out DIR]
Writes JSON lines to experiments/results/ (or --out) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context


from experiments.benchmarks.layers import LAYER_SETS, pruned_weight
from experiments.common import environment, export_kernel, geomean, load_kernel, result_path

# (warps, fragments, k_fragments, image_block, stages), by whether the batch fills 8 images
SWEEP = {8: [(2, 2, 2, 8, 2), (4, 2, 2, 8, 2), (4, 4, 2, 8, 2), (2, 1, 2, 8, 2), (4, 2, 1, 8, 2),
             (4, 2, 4, 8, 2), (4, 2, 2, 8, 1), (8, 2, 2, 8, 2), (2, 2, 2, 1, 1)],
         1: [(1, 1, 2, 1, 1), (2, 1, 2, 1, 1), (2, 2, 2, 1, 1), (1, 1, 2, 1, 2), (2, 1, 2, 1, 2),
             (2, 2, 4, 1, 2), (4, 2, 2, 1, 1), (2, 1, 1, 1, 1)]}


def vector_weight(wshape, groups, sparsity, seed):
    """The benchmark's random weight for a layer, pruned in vectors of 16 channels."""
    import torch

    from escoin_tvm import prune

    dense = pruned_weight(wshape, 0.0, seed)
    conv = torch.nn.Conv2d(wshape[1] * groups, wshape[0], wshape[2:], groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(dense))
    prune.vectors(torch.nn.Sequential(conv), sparsity, group=16)
    return conv.weight.detach().numpy()


def weight_for(kind, wshape, groups, sparsity, seed):
    return (vector_weight(wshape, groups, sparsity, seed) if kind.startswith("vector")
            else pruned_weight(wshape, sparsity, seed))


def build(job):
    """Worker: compile one kernel and export it (compiles run in parallel on the CPUs)."""
    kind, key, batch, sparsity, chw, wshape, stride, padding, groups, seed, config, dtype, \
        workdir = job
    import escoin_tvm
    from escoin_tvm.kernels.vector_sparse.kernel import build_vector_sparse_conv2d
    from escoin_tvm.kernels.vector_sparse.schedule_gpu import TensorCoreConfig
    from escoin_tvm.support import dtypes

    weight = weight_for(kind, wshape, groups, sparsity, seed).astype(dtypes.numpy_dtype(dtype))
    args = dict(stride=stride, padding=padding, groups=groups, target="cuda")
    start = time.time()
    try:
        if kind == "escoin":
            kernel = escoin_tvm.build_sparse_conv2d(weight, (batch, *chw), **args)
            info = {"config": kernel.config.__dict__}
        else:
            kernel = build_vector_sparse_conv2d(
                weight, (batch, *chw), config=TensorCoreConfig(*config) if config else None,
                **args)
            info = {"config": kernel.config.__dict__, "density": kernel.weight.density,
                    "width": int(kernel.weight.offsets.shape[1]),
                    "mean_taps": float(kernel.weight.taps.mean())}
    except Exception as error:  # noqa: BLE001 - a config that does not build is a result
        return job, None, {"error": f"{type(error).__name__}: {error}"}
    path = os.path.join(workdir, f"{kind}_{key}_b{batch}_s{sparsity}_{config}.so".replace(
        " ", ""))
    export_kernel(kernel, path)
    info["build_s"] = time.time() - start
    info["input_shape"] = list(kernel.data_shape)  # what its function takes
    return job, path, info


def time_kernel(path, x, ref, out_shape, dtype):
    """(median seconds, max error relative to max |reference|) of an exported kernel."""
    import torch
    import tvm

    from escoin_tvm.support.timing import graph_time

    dev = tvm.cuda(0)
    mod, consts = load_kernel(path, dev)
    xt = tvm.runtime.from_dlpack(x)
    y = torch.empty(out_shape, dtype=x.dtype, device="cuda")
    yt = tvm.runtime.from_dlpack(y)
    seconds = graph_time(lambda: mod["main"](xt, *consts, yt), tvm_stream=True)
    mod["main"](xt, *consts, yt)
    torch.cuda.synchronize()
    err = float((y.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    return seconds, err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", default="benchmark,unseen")
    parser.add_argument("--layers", default=None, help="only these names (comma-separated)")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsities", default="0.9,0.95")
    parser.add_argument("--sweep", action="store_true", help="also a sweep of configs "
                        "(vector weights, the first sparsity)")
    parser.add_argument("--no-escoin", action="store_true", help="skip the CUDA-core kernel")
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from escoin_tvm.support.timing import graph_time

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    tdtype = getattr(torch, args.dtype)
    layers = [(s, i, layer) for s in args.sets.split(",") for i, layer in
              enumerate(LAYER_SETS[s])]
    if args.layers:
        wanted = set(args.layers.split(","))
        layers = [entry for entry in layers if entry[2][0] in wanted]
    batches = [int(b) for b in args.batches.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    workdir = tempfile.mkdtemp(prefix="bench_vs_")
    jobs = []
    for set_name, index, (name, chw, wshape, stride, padding, groups) in layers:
        seed = index if set_name == "benchmark" else 100 + index
        for batch in batches:
            for sparsity in sparsities:
                kinds = [("vector", None), ("union", None)]
                if not args.no_escoin:
                    kinds.append(("escoin", None))
                if args.sweep and sparsity == sparsities[0]:
                    kinds += [("vector_sweep", c) for c in SWEEP[8 if batch >= 8 else 1]]
                for kind, config in kinds:
                    jobs.append((kind, name, batch, sparsity, chw, wshape, stride, padding,
                                 groups, seed, config, args.dtype, workdir))
    start = time.time()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        built = list(pool.map(build, jobs))
    print(f"built {len(built)} kernels in {time.time() - start:.0f} s", flush=True)

    path_out = result_path(f"vector-sparse-{args.dtype}", out=args.out)
    env = environment()
    rows = {}
    with open(path_out, "w") as f:
        f.write(json.dumps({"environment": env, "args": vars(args)}) + "\n")
        for set_name, index, (name, chw, wshape, stride, padding, groups) in layers:
            seed = index if set_name == "benchmark" else 100 + index
            for batch in batches:
                gen = torch.Generator(device="cpu").manual_seed(seed)
                x = torch.randn((batch, *chw), generator=gen).to("cuda", tdtype)
                for sparsity in sparsities:
                    record = {"set": set_name, "layer": name, "batch": batch,
                              "sparsity": sparsity, "dtype": args.dtype}
                    for weight_kind in ("vector", "union"):
                        w = torch.from_numpy(weight_for(weight_kind, wshape, groups, sparsity,
                                                        seed)).to("cuda", tdtype)
                        ref = F.conv2d(x.double(), w.double(), None, stride, padding, 1, groups)
                        if weight_kind == "vector":
                            xc = x.to(memory_format=torch.channels_last)
                            wc = w.to(memory_format=torch.channels_last)
                            record["cudnn_s"] = graph_time(
                                lambda: F.conv2d(xc, wc, None, stride, padding, 1, groups))
                        for job, path, info in built:
                            if job[1:4] != (name, batch, sparsity):
                                continue
                            kind = job[0]
                            if (weight_kind == "vector") != kind.startswith("vector"):
                                continue
                            label = kind if job[10] is None else f"sweep{job[10]}"
                            if path is None:
                                record[f"{label}_error"] = info["error"]
                                continue
                            xin = x.reshape(info.pop("input_shape")).contiguous()
                            seconds, err = time_kernel(path, xin, ref, tuple(ref.shape),
                                                       args.dtype)
                            record[f"{label}_s"], record[f"{label}_err"] = seconds, err
                            record[f"{label}_info"] = info
                    sweep = {k: v for k, v in record.items()
                             if k.startswith("sweep") and k.endswith("_s")}
                    if sweep:
                        best = min(sweep, key=sweep.get)
                        record["vector_best_s"] = min(sweep[best], record.get("vector_s", 1e9))
                        record["vector_best_config"] = best[:-2]
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    rows[(set_name, name, batch, sparsity)] = record
                    print(_row(record), flush=True)
    _summary(rows, batches, sparsities)
    print(f"results: {path_out}")


def _row(r):
    def ratio(key):
        return f"{r['cudnn_s'] / r[key]:.2f}x" if key in r else "-"
    worst = max((v for k, v in r.items() if k.endswith("_err")), default=float("nan"))
    return (f"| {r['layer']} | {r['batch']} | {r['sparsity']} | {r['cudnn_s'] * 1e6:.1f} | "
            f"{ratio('vector_s')} | {ratio('vector_best_s')} | {ratio('union_s')} | "
            f"{ratio('escoin_s')} | {worst:.1e} |")


def _summary(rows, batches, sparsities):
    print("\n| set | batch | sparsity | vector | vector_best | union | escoin (CUDA cores) |")
    print("|---|---|---|---|---|---|---|")
    for set_name in ("benchmark", "unseen"):
        for batch in batches:
            for sparsity in sparsities:
                picked = [r for (s, _, b, sp), r in rows.items()
                          if s == set_name and b == batch and sp == sparsity]
                if not picked:
                    continue
                cells = []
                for key in ("vector_s", "vector_best_s", "union_s", "escoin_s"):
                    values = [r["cudnn_s"] / r[key] for r in picked if key in r]
                    cells.append(f"{geomean(values):.2f}x" if values else "-")
                print(f"| {set_name} | {batch} | {sparsity} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
