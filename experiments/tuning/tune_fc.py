"""Tuning the sparse linear template on AlexNet's and VGG-16's FC layers: tuned vs untuned.

For each layer (bench_fc.py's, its random pruned weights, fp32, bias and ReLU as the network
has them) and batch, runs a MetaSchedule tuning job (``escoin_tvm.tuning.tune_tasks`` on a
``LinearTask``) into one log, then times the untuned and the tuned kernel from CUDA graphs
(``timing.graph_time``, as bench_fc.py times) and checks the tuned one against cuBLAS fp32
(TF32 off). Writes one JSON line per layer and batch.

Usage (GPU): python -m experiments.tuning.tune_fc --trials 32 --log tuning_logs/fc-H200
    [--batches 1,16] [--layers vgg16_fc6,vgg16_fc7] [--sparsity 0.9]
"""
from __future__ import annotations

import argparse
import json

import numpy as np

from experiments.benchmarks.bench_fc import FC_LAYERS, density
from experiments.common import RESULTS, environment, gpu_short_name, result_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--trials-per-iter", type=int, default=16)
    parser.add_argument("--sparsity", default="0.9", help="a number, or dc")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--layers", default="")
    parser.add_argument("--log", default="tuning_logs/fc")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.kernel import build_sparse_linear
    from escoin_tvm.prune import prune_array
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.support.timing import graph_time
    from escoin_tvm.tuning import TuningLog, tune_tasks
    from escoin_tvm.kernels.linear.tuning_space import LinearTask

    target = resolve_target("cuda")
    env = environment()
    path = result_path("tuning-fc", gpu=gpu_short_name(env["gpu"]), out=args.out)
    with open(path, "w") as out_file:
        out_file.write(json.dumps({"environment": env, "args": vars(args)}) + "\n")
        for seed, (name, k, n, relu) in enumerate(FC_LAYERS):
            if args.layers and name not in args.layers.split(","):
                continue
            rng = np.random.default_rng(seed)  # bench_fc.py's weights
            weight = prune_array(rng.standard_normal((n, k)).astype(np.float32) * 0.01,
                                 1.0 - density(name, args.sparsity))
            bias = rng.standard_normal(n).astype(np.float32)
            sparse = SparseLinearWeight.from_dense(weight)
            for batch in (int(v) for v in args.batches.split(",")):
                task = LinearTask(batch, sparse, True, relu, target, [f"{name}_b{batch}"])
                [result] = tune_tasks([task], log=args.log, target=target, trials=args.trials,
                                      trials_per_iter=args.trials_per_iter)
                found = TuningLog(args.log).best(task.workload, target, task.decode)
                x = torch.randn(batch, k, device="cuda")
                torch.backends.cuda.matmul.allow_tf32 = False
                ref = F.linear(x, torch.from_numpy(weight).cuda(), torch.from_numpy(bias).cuda())
                ref = torch.relu(ref) if relu else ref
                row = {"layer": name, "batch": batch, "sparsity": args.sparsity,
                       "trials": result.trials}
                for label, config in (("untuned", None), ("tuned", found[0] if found else None)):
                    kernel = build_sparse_linear(weight, batch, bias=bias, relu=relu,
                                                 target=target, config=config,
                                                 tuned=label == "tuned" and found is not None)
                    y = torch.empty(batch, n, device="cuda")
                    row[f"{label}_s"] = graph_time(lambda: kernel.run_torch(x, y))
                    row[f"{label}_max_rel_err"] = float((y - ref).abs().max() / ref.abs().max())
                    row[f"{label}_config"] = dict(vars(kernel.config))
                out_file.write(json.dumps(row) + "\n")
                out_file.flush()
                print(f"{name:12s} b{batch:<3d} untuned {row['untuned_s'] * 1e6:8.1f} us  tuned "
                      f"{row['tuned_s'] * 1e6:8.1f} us  err {row['tuned_max_rel_err']:.1e}",
                      flush=True)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
