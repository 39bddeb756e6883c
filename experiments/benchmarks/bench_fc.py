"""Fully-connected layers: escoin-tvm's sparse linear kernel against dense cuBLAS, on one GPU.

For AlexNet's and VGG-16's fc6, fc7, fc8 (224x224 inputs: 9216 / 25088 features in), at each
sparsity (and Deep Compression's per-layer rates: "dc") and batch, on the same random pruned
weights:
  escoin        the sparse linear kernel, fp32 (and escoin_fp16 in fp16), bias and ReLU fused,
                with the knobs a user gets (the shipped table's for the layer, else the heuristic)
  escoin_h      the same with the heuristic's knobs, where the shipped table has a record
  escoin_t      the same reading a transposed copy of the input (``transposed_input``; batch > 1)
  cublas_fp32   torch.nn.functional.linear, TF32 off
  cublas_tf32   the same with TF32 (what PyTorch does once matmul TF32 is allowed)
  cublas_fp16   the same in fp16
  vector_fp16   with ``--vectors``: the weights pruned in vectors of 16 output features
                (``prune.vectors``; every column above then runs on those weights), on the
                tensor-core family's linear kernel (the 1 x 1 convolution whose pixels are
                the batch), fp16, bias and ReLU fused, default knobs
each timed from a CUDA graph (``timing.graph_time``: 20 calls captured, median of 50 replays);
the roofline is the time to read the CSR bytes (values, column indices, row pointers) and the
activations once at the measured device-to-device copy bandwidth. Every escoin output is
checked against cuBLAS fp32.

Usage: python -m experiments.benchmarks.bench_fc [--sparsities 0.9,dc] [--batches 1,16]
    [--layers vgg16_fc6,vgg16_fc7] [--vectors]
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np

from experiments.common import RESULTS, environment, geomean, gpu_short_name, result_path

FC_LAYERS = [  # (name, in_features, out_features, relu)
    ("alexnet_fc6", 256 * 36, 4096, True), ("alexnet_fc7", 4096, 4096, True),
    ("alexnet_fc8", 4096, 1000, False),
    ("vgg16_fc6", 512 * 49, 4096, True), ("vgg16_fc7", 4096, 4096, True),
    ("vgg16_fc8", 4096, 1000, False),
]


def density(name: str, sparsity: str) -> float:
    """The fraction of weights kept: 1 - sparsity, or Deep Compression's for ``"dc"``."""
    from escoin_tvm.prune import DEEP_COMPRESSION_FC_DENSITY

    if sparsity != "dc":
        return 1.0 - float(sparsity)
    network, layer = name.split("_")
    return DEEP_COMPRESSION_FC_DENSITY[network][("fc6", "fc7", "fc8").index(layer)]


def cublas_times(x, w, b=None) -> dict:
    """{"cublas_fp32" (TF32 off), "cublas_tf32", "cublas_fp16": seconds} of
    ``torch.nn.functional.linear(x, w, b)``, each from a CUDA graph (``timing.graph_time``)."""
    import torch
    import torch.nn.functional as F

    from escoin_tvm.support.timing import graph_time

    times = {}
    for label, dtype, tf32 in (("cublas_fp32", torch.float32, False),
                               ("cublas_tf32", torch.float32, True),
                               ("cublas_fp16", torch.float16, True)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        wd, xd = w.to(dtype), x.to(dtype)
        bd = None if b is None else b.to(dtype)
        times[label] = graph_time(lambda: F.linear(xd, wd, bd))
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.9,dc")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--layers", default="", help="comma-separated names (default: all)")
    parser.add_argument("--vectors", action="store_true",
                        help="prune in vectors of 16 output features and time the tensor-core "
                        "linear kernel too")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.kernel import build_sparse_linear
    from escoin_tvm.kernels.linear.knobs import heuristic_linear_config, shipped_linear_config
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm import prune
    from escoin_tvm.kernels.vector_sparse.kernel import build_vector_sparse_linear
    from escoin_tvm.prune import prune_array
    from escoin_tvm.support.timing import graph_time

    env = environment()
    target = resolve_target("cuda")
    src = torch.empty(1 << 28, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / graph_time(lambda: dst.copy_(src))
    path = result_path("fc-vectors" if args.vectors else "fc", gpu=gpu_short_name(env["gpu"]),
                       out=args.out)
    rows = []
    with open(path, "w") as log:
        log.write(json.dumps({"environment": env, "measured_bandwidth": bandwidth}) + "\n")
        for seed, (name, k, n, relu) in enumerate(FC_LAYERS):
            if args.layers and name not in args.layers.split(","):
                continue
            for sparsity in args.sparsities.split(","):
                rng = np.random.default_rng(seed)
                weight = rng.standard_normal((n, k)).astype(np.float32) * 0.01
                if args.vectors:
                    layer = torch.nn.Linear(k, n, bias=False)
                    with torch.no_grad():
                        layer.weight.copy_(torch.from_numpy(weight))
                    prune.vectors(torch.nn.Sequential(layer), 1.0 - density(name, sparsity),
                                  group=16, layers="all")
                    weight = layer.weight.detach().numpy().copy()
                else:
                    weight = prune_array(weight, 1.0 - density(name, sparsity))
                bias = rng.standard_normal(n).astype(np.float32)
                w, b = torch.from_numpy(weight).cuda(), torch.from_numpy(bias).cuda()
                sparse = {dtype: SparseLinearWeight.from_dense(weight.astype(dtype))
                          for dtype in ("float32", "float16")}
                for batch in (int(v) for v in args.batches.split(",")):
                    x = torch.randn(batch, k, device="cuda")
                    torch.backends.cuda.matmul.allow_tf32 = False
                    ref = F.linear(x, w, b)
                    ref = torch.relu(ref) if relu else ref
                    row = {"layer": name, "sparsity": sparsity, "batch": batch,
                           "nnz": int(np.count_nonzero(weight))}
                    heuristic = heuristic_linear_config(batch, sparse["float32"], target)
                    variants = [("escoin", "float32", None), ("escoin_fp16", "float16", None)]
                    variants += [(f"escoin_h{suffix}", dtype, heuristic)
                                 for suffix, dtype in (("", "float32"), ("_fp16", "float16"))
                                 if shipped_linear_config(batch, sparse[dtype], target)]
                    if batch > 1:
                        transposed = dataclasses.replace(heuristic, transposed_input=True)
                        variants += [("escoin_t", "float32", transposed),
                                     ("escoin_t_fp16", "float16", transposed)]
                    for key, dtype, config in variants:
                        kernel = build_sparse_linear(weight.astype(dtype), batch, bias=bias,
                                                     relu=relu, target="cuda", config=config)
                        xd = x.to(getattr(torch, dtype))
                        out = torch.empty(batch, n, device="cuda", dtype=xd.dtype)
                        row[f"{key}_s"] = graph_time(lambda: kernel.run_torch(xd, out))
                        row[f"{key}_max_rel_err"] = float(
                            (out.float() - ref).abs().max() / ref.abs().max())
                        row[f"{key}_config"] = dict(vars(kernel.config))
                        values = np.dtype(dtype).itemsize
                        index = 2 if kernel.weight.index_dtype == "int16" else 4
                        csr = row["nnz"] * (values + index) + 8 * (n + 1)
                        row[f"{key}_roofline_s"] = (csr + values * batch * (k + n)) / bandwidth
                    if args.vectors:
                        kernel = build_vector_sparse_linear(weight.astype("float16"), batch,
                                                            bias=bias, relu=relu, target="cuda")
                        xd = x.half()
                        out = torch.empty(batch, n, device="cuda", dtype=xd.dtype)
                        row["vector_fp16_s"] = graph_time(lambda: kernel.run_torch(xd, out))
                        row["vector_fp16_max_rel_err"] = float(
                            (out.float() - ref).abs().max() / ref.abs().max())
                        row["vector_fp16_config"] = dict(vars(kernel.config))
                    row.update((f"{label}_s", seconds)
                               for label, seconds in cublas_times(x, w, b).items())
                    rows.append(row)
                    log.write(json.dumps(row) + "\n")
                    log.flush()
                    print(f"{name:12s} {sparsity:>4s} b{batch:<3d} " + "  ".join(
                        f"{k_[:-2]} {v * 1e6:8.1f} us" for k_, v in row.items()
                        if k_.endswith("_s") and not k_.endswith("roofline_s")), flush=True)
    for batch in sorted({r["batch"] for r in rows}):
        sel = [r for r in rows if r["batch"] == batch]
        print(f"batch {batch}: escoin vs cublas fp32 "
              f"{geomean(r['cublas_fp32_s'] / r['escoin_s'] for r in sel):.2f}x, fp16 vs fp16 "
              f"{geomean(r['cublas_fp16_s'] / r['escoin_fp16_s'] for r in sel):.2f}x")
        if args.vectors:
            print(f"batch {batch}: vector fp16 vs cublas fp16 "
                  f"{geomean(r['cublas_fp16_s'] / r['vector_fp16_s'] for r in sel):.2f}x, vs "
                  f"escoin fp16 {geomean(r['escoin_fp16_s'] / r['vector_fp16_s'] for r in sel):.2f}x")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
