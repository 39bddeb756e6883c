"""Tuning the tensor-core family on the layer benchmark: tuned against default configs, and
both against cuDNN.

For each layer and batch (the weights of ``bench_vector_sparse``: the benchmark's random
weights pruned in vectors of 16 output channels, fp16 or bf16), runs a MetaSchedule tuning job
on the layer's kernel (``kernels/vector_sparse/tuning_space.py``; trials timed from CUDA graphs)
into one log, then times, as ``bench_vector_sparse`` does (a CUDA graph of 20 calls, median of
50 replays):
  default  the default config (``schedule_gpu.default_config``: what an untuned compile runs)
  tuned    the log's best record, built on the work it was tuned on
  cudnn    torch conv2d of the same weights, channels-last, in the same dtype
Each kernel's output is checked against torch's conv2d in float64 on the same values. One JSON
line per layer and batch, with the best-so-far curve over the trials.

Usage: python -m experiments.tuning.tune_vector_layers --trials 32 \
           --log tuning_logs/vector-layers-H200 [--batches 1,16] [--sparsity 0.9] \
           [--layer-set benchmark|unseen] [--layers a,b] [--dtype float16] [--deadline 480]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from experiments.benchmarks.bench_vector_sparse import vector_weight
from experiments.benchmarks.layers import LAYER_SETS
from experiments.common import RESULTS, environment, gpu_short_name, result_path
from experiments.tuning.tune_layers import tune_one


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--trials-per-iter", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--layers", default="")
    parser.add_argument("--layer-set", default="benchmark", choices=("benchmark", "unseen"))
    parser.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    parser.add_argument("--log", default="tuning_logs/vector-layers")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--deadline", type=float, default=0, help="stop starting tasks after "
                        "this many seconds (0: no limit)")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from escoin_tvm.kernels.conv_spec import Conv2dSpec
    from escoin_tvm.kernels.epilogue import Epilogue
    from escoin_tvm.kernels.vector_sparse.kernel import build_vector_sparse_conv2d
    from escoin_tvm.kernels.vector_sparse.schedule_gpu import GPU_GROUP, MMA
    from escoin_tvm.kernels.vector_sparse.tuning_space import VectorSparseTask, work_config
    from escoin_tvm.kernels.vector_sparse.weight_format import VectorSparseWeight
    from escoin_tvm.support import dtypes
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.support.timing import graph_time
    from escoin_tvm.tuning import TuningLog

    torch.backends.cudnn.allow_tf32 = False
    target = resolve_target("cuda")
    env = environment()
    log = TuningLog(args.log, create=True)
    out = result_path(f"tuning-vector-{args.dtype}", gpu=gpu_short_name(env["gpu"]),
                      out=args.out)
    wanted = set(filter(None, args.layers.split(",")))
    tdtype = getattr(torch, args.dtype)
    started = time.time()
    with out.open("w") as sink:
        sink.write(json.dumps({"environment": env, "args": vars(args)}) + "\n")
        offset = 0 if args.layer_set == "benchmark" else 100  # bench_vector_sparse's seeds
        cases = [(batch, offset + index, layer)
                 for batch in map(int, args.batches.split(","))
                 for index, layer in enumerate(LAYER_SETS[args.layer_set])
                 if not wanted or layer[0] in wanted]
        for batch, seed, (name, chw, wshape, stride, pad, groups) in cases:
            if args.deadline and time.time() - started > args.deadline:
                print(f"deadline reached, skipping {name} b{batch}", flush=True)
                continue
            weight = vector_weight(wshape, groups, args.sparsity, seed).astype(
                dtypes.numpy_dtype(args.dtype))
            spec = Conv2dSpec.create((batch, *chw), weight.shape, stride=stride, padding=pad,
                                     groups=groups)
            encoded = VectorSparseWeight.from_dense(weight, spec, GPU_GROUP, MMA)
            encoded = encoded.padded_to(work_config(spec, encoded.offsets.shape[1]).k_tile)
            task = VectorSparseTask(spec, Epilogue(), encoded, target, [f"{name}_b{batch}"])
            result, tuning_s, curve, tuned = tune_one(task, log, target, args.trials,
                                                      args.trials_per_iter)
            gen = torch.Generator(device="cpu").manual_seed(seed)
            x = torch.randn((batch, *chw), generator=gen).to("cuda", tdtype)
            w = torch.from_numpy(weight.astype(np.float32)).to("cuda", tdtype)
            reference = F.conv2d(x.double(), w.double(), None, stride, pad, 1, groups)
            xc, wc = (t.to(memory_format=torch.channels_last) for t in (x, w))
            row = {"layer": name, "batch": batch, "sparsity": args.sparsity,
                   "dtype": args.dtype, "trials": result.trials, "new_trials": result.new_trials,
                   "tuning_s": tuning_s, "curve_s": curve, "configs": {},
                   "cudnn_us": graph_time(lambda: F.conv2d(xc, wc, None, stride, pad, 1,
                                                           groups)) * 1e6}
            for label, (config, is_tuned) in {"default": (None, False),
                                               "tuned": (tuned[0] if tuned else None, True)
                                               }.items():
                if is_tuned and config is None:
                    continue
                kernel = build_vector_sparse_conv2d(weight, (batch, *chw), stride=stride,
                                                    padding=pad, groups=groups, target=target,
                                                    config=config, tuned=is_tuned)
                y = torch.empty(kernel.output_shape, device="cuda", dtype=tdtype)
                row[f"{label}_us"] = graph_time(lambda: kernel.run_torch(x, y)) * 1e6
                row["configs"][label] = dict(vars(kernel.config))
                kernel.run_torch(x, y)
                torch.cuda.synchronize()
                row[f"{label}_rel_err"] = float((y.double() - reference).abs().max()
                                                / reference.abs().max().clamp_min(1e-30))
            sink.write(json.dumps(row) + "\n")
            sink.flush()
            print(f"{name} b{batch}: cuDNN {row['cudnn_us']:.1f} us, default "
                  f"{row.get('default_us', float('nan')):.1f} us, tuned "
                  f"{row.get('tuned_us', float('nan')):.1f} us ({result.trials} trials, "
                  f"{tuning_s:.0f} s), err {row.get('tuned_rel_err', float('nan')):.1e}",
                  flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
