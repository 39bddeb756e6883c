"""How many output features should a sparse linear kernel's thread block own? The heuristic
("untuned" in the results: ``heuristic_linear_config``, not the shipped table's records) gives a
block 4 features of 32 lanes (128 threads); every FC tuning record chose 32 (1,024 threads). This sweeps ``rows`` (and, at batch > 8, a register tile of the whole batch)
on FC shapes of the benchmark networks and of networks the benchmark does not use, fixed here
before any result: ResNet-50's and DenseNet-121's classifiers, EfficientNet-B0's, MobileNetV3's
first FC, a ViT-B and a BERT-large MLP pair; and a set of large weights (``--shapes large``: more
CSR bytes than the unseen set's, as many as the benchmark's fc6 and fc7 or more), also fixed
before any result: LLaMA-2-7B's, GPT-2 XL's, T5-3B's and ViT-H's MLP pairs.

Each kernel is timed from CUDA graphs (``timing.graph_time``) and checked against cuBLAS fp32
(TF32 off); cuBLAS TF32 and fp16 are timed in the same run for scale.

Usage (GPU): python -m experiments.investigations.linear_tiles [--batches 1,16]
    [--sparsity 0.9] [--dtypes float32,float16] [--shapes all|benchmark|unseen|large]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from experiments.benchmarks.bench_fc import FC_LAYERS, cublas_times
from experiments.common import RESULTS, environment, gpu_short_name, result_path

UNSEEN_FC = [  # (name, in_features, out_features, relu)
    ("resnet50_fc", 2048, 1000, False), ("densenet121_fc", 1024, 1000, False),
    ("efficientnet_b0_fc", 1280, 1000, False), ("mobilenet_v3_fc1", 960, 1280, False),
    ("vit_b_mlp1", 768, 3072, False), ("vit_b_mlp2", 3072, 768, False),
    ("bert_l_ffn1", 1024, 4096, False), ("bert_l_ffn2", 4096, 1024, False),
]
LARGE_FC = [
    ("llama2_7b_up", 4096, 11008, False), ("llama2_7b_down", 11008, 4096, False),
    ("gpt2_xl_fc", 1600, 6400, False), ("gpt2_xl_proj", 6400, 1600, False),
    ("t5_3b_wi", 1024, 16384, False), ("t5_3b_wo", 16384, 1024, False),
    ("vit_h_mlp1", 1280, 5120, False), ("vit_h_mlp2", 5120, 1280, False),
]
SETS = {"benchmark": FC_LAYERS, "unseen": UNSEEN_FC, "large": LARGE_FC}
ROWS = (4, 8, 16, 32)


def configs(batch: int, default):
    """The sweep's LinearGpuConfigs at ``batch``, the heuristic's ("untuned") first."""
    import dataclasses

    out = [("untuned", default)]
    tiles = sorted({min(batch, 8), min(batch, 16)})
    for rows in ROWS:
        for tile in tiles:
            config = dataclasses.replace(default, rows=rows, batch_tile=tile)
            if config != default:
                out.append((f"rows{rows}_tile{tile}", config))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--dtypes", default="float32,float16")
    parser.add_argument("--shapes", choices=("all", *SETS), default="all")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.kernel import SparseLinearKernel
    from escoin_tvm.kernels.linear.knobs import heuristic_linear_config
    from escoin_tvm.prune import prune_array
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.support.timing import graph_time

    target = resolve_target("cuda")
    dtype_names = args.dtypes.split(",")
    path = result_path("linear-tiles", gpu=gpu_short_name(), out=args.out)
    with open(path, "w") as log:
        log.write(json.dumps({"environment": environment(), "args": vars(args)}) + "\n")
        for seed, (name, k, n, relu) in enumerate(FC_LAYERS + UNSEEN_FC + LARGE_FC):
            if args.shapes != "all" and (name, k, n, relu) not in SETS[args.shapes]:
                continue  # skipped, each shape keeping its seed
            rng = np.random.default_rng(seed)
            weight = prune_array(rng.standard_normal((n, k)).astype(np.float32) * 0.01,
                                 args.sparsity)
            w = torch.from_numpy(weight).cuda()
            # converted once per dtype: finding a large weight's non-zeros costs more than a build
            sparse_weights = {dtype: SparseLinearWeight.from_dense(weight.astype(dtype))
                              for dtype in dtype_names}
            for batch in (int(b) for b in args.batches.split(",")):
                x = torch.randn(batch, k, device="cuda")
                torch.backends.cuda.matmul.allow_tf32 = False
                ref = F.linear(x, w)
                ref = torch.relu(ref) if relu else ref
                row = {"layer": name, "in": k, "out": n, "batch": batch,
                       "unseen": (name, k, n, relu) not in FC_LAYERS,
                       "set": next(s for s, layers in SETS.items()
                                   if (name, k, n, relu) in layers)}
                row.update((f"{label}_us", seconds * 1e6)
                           for label, seconds in cublas_times(x, w).items())
                default = heuristic_linear_config(batch, sparse_weights[dtype_names[0]], target)
                for dtype, sparse in sparse_weights.items():
                    xd = x.to(getattr(torch, dtype))
                    out = torch.empty(batch, n, device="cuda", dtype=xd.dtype)
                    for label, config in configs(batch, default):
                        kernel = SparseLinearKernel(sparse, batch, None, relu, target, config)
                        seconds = graph_time(lambda: kernel.run_torch(xd, out))
                        err = float((out.float() - ref).abs().max() / ref.abs().max())
                        row[f"{dtype}_{label}"] = {"us": seconds * 1e6, "err": err,
                                                   "config": dict(vars(config))}
                log.write(json.dumps(row) + "\n")
                log.flush()
                best = {d: min((v["us"], key) for key, v in row.items()
                               if key.startswith(d + "_") and isinstance(v, dict))
                        for d in dtype_names}
                print(f"{name:20s} b{batch:<3d} tf32 {row['cublas_tf32_us']:7.1f} "
                      f"fp16 {row['cublas_fp16_us']:7.1f} " + "  ".join(
                          f"{d}: untuned {row[d + '_untuned']['us']:7.1f} best {b[0]:7.1f} "
                          f"({b[1][len(d) + 1:]})" for d, b in best.items()), flush=True)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
