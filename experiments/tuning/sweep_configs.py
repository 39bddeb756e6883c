"""Grid sweep of the Escoin GPU template's knobs on the benchmark layers.

For each layer and batch (sparsity 0.9 by default), builds the default config and a random
sample of the knob grid (in parallel on the CPUs), times each on the GPU as bench_layers.py does
(``timing.graph_time``; back-to-back launches from the host, time_evaluator's way, add a launch
latency that varies from run to run to a 5-20 us batch-1 kernel: one kernel of tune_layers.py's
measured 8.7 and 7.2 us that way), checks the best against cuDNN fp32, and writes:
  - raw times: <out>/sweep-<gpu>-<stamp>.jsonl
  - the best config per layer shape: <out>/pretuned-<arch>.json (the format of schedules/)

Usage: python -m experiments.tuning.sweep_configs [--samples 40] [--layers a,b | --networks vgg16,...]
    [--batches 1,16] [--merge schedules/pretuned-sm_90.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path



from experiments.benchmarks.layers import pruned_weight
from experiments.common import (RESULTS, environment, export_kernel, gpu_short_name, load_kernel,
                                result_path)
from escoin_tvm.support.timing import graph_time
from escoin_tvm.kernels.conv2d.operator import kernel_input_shape
from experiments.benchmarks.layers import LAYERS, network_layers


def candidate_configs(spec, samples, seed):
    from escoin_tvm.kernels.conv2d import knobs as conv_knobs
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig, pow2_at_least
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config

    tx = pow2_at_least(spec.out_w, 32)
    grid = []
    for ty, rows, ch, ct, steps, img, stage, chunk in itertools.product(
            (1, 2, 4, 8, 16), (1, 2, 4), (1, 2, 4, 8), (1, 2, 4, 8, 16, 32), (1, 4, 16), (1, 2, 4),
            (True, False), (8, 16, 32)):
        threads = tx * ty * ct
        acc = rows * ch * img
        if not 32 <= threads <= 1024 or acc > 32 or img > spec.batch or ty * rows > 2 * spec.out_h \
                or ct * ch * steps > spec.out_per_group:
            continue
        grid.append(GpuConfig(threads_x=tx, threads_y=ty, channel_threads=ct, channel_steps=steps,
                              rows_per_thread=rows, channels_per_thread=ch, images_per_thread=img,
                              chunk=chunk, stage_weights=stage))
    random.Random(seed).shuffle(grid)
    # the heuristic default, and the shipped config re-measured (kernels change between sweeps)
    known = [default_gpu_config(spec)] + [c for c in [conv_knobs.lookup(spec, "sm_90")] if c]
    return known + [c for c in grid[:samples] if c not in known]


def build(job):
    name, batch, sparsity, chw, wshape, stride, pad, groups, seed, workdir, index, config = job
    import escoin_tvm
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig

    weight = pruned_weight(wshape, sparsity, seed)
    try:
        kernel = escoin_tvm.build_sparse_conv2d(weight, (batch, *chw), stride=stride, padding=pad,
                                                groups=groups, target="cuda",
                                                config=GpuConfig(**config))
    except Exception as err:  # a knob combination the template cannot take
        return None, f"{type(err).__name__}: {str(err)[:200]}"
    path = os.path.join(workdir, f"{name}_b{batch}_{index}.so")
    export_kernel(kernel, path)
    return path, None


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="", help="only these layers (names as listed)")
    parser.add_argument("--networks", default="", help="sweep these networks' distinct "
                        "convolutions (escoin_tvm.models, 224x224) instead of the benchmark layers")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--samples", type=int, default=40)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--merge", default="", help="an existing pretuned table: keep its records "
                        "of the layers this sweep did not measure (for those it did, its best "
                        "config wins: the table's own config is one of its candidates)")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    args = parser.parse_args(argv)

    from escoin_tvm.kernels import knob_table
    from escoin_tvm.kernels.conv2d import knobs as conv_knobs
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    layers = LAYERS
    if args.networks:
        layers = [l for n in args.networks.split(",") for l in network_layers(n)]
    layers = [l for l in layers if not args.layers or l[0] in args.layers.split(",")]
    workdir = "/tmp/escoin_sweep"
    os.makedirs(workdir, exist_ok=True)
    jobs, keys = [], []
    for seed, (name, chw, wshape, stride, pad, groups) in enumerate(layers):
        for batch in (int(b) for b in args.batches.split(",")):
            spec = Conv2dSpec.create((batch, *chw), wshape, stride=stride, padding=pad, groups=groups)
            for index, config in enumerate(candidate_configs(spec, args.samples, seed)):
                jobs.append((name, batch, args.sparsity, chw, wshape, stride, pad, groups, seed,
                             workdir, index, dict(vars(config))))
                keys.append(spec)
    t0 = time.time()
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        built = list(pool.map(build, jobs, chunksize=4))
    print(f"built {len(jobs)} kernels in {time.time() - t0:.0f} s", flush=True)

    import torch
    import torch.nn.functional as F
    import tvm

    env = environment()
    dev = tvm.cuda(0)
    raw = open(result_path("sweep", gpu=gpu_short_name(env["gpu"]), out=args.out), "w")
    raw.write(json.dumps({"environment": env, "sparsity": args.sparsity}) + "\n")
    best, defaults, inputs = {}, {}, {}
    for job, spec, (path, error) in zip(jobs, keys, built):
        name, batch = job[0], job[1]
        row = {"layer": name, "batch": batch, "config": job[-1]}
        if path is None:
            row["error"] = error
            raw.write(json.dumps(row) + "\n")
            continue
        if (name, batch) not in inputs:
            x = torch.randn(batch, *job[3], device="cuda")
            torch.backends.cudnn.allow_tf32 = False
            ref = F.conv2d(x, torch.from_numpy(pruned_weight(job[4], args.sparsity, job[8])).cuda(),
                           None, job[5], job[6], 1, job[7])
            inputs[(name, batch)] = (x, ref)
        x, ref = inputs[(name, batch)]
        mod, consts = load_kernel(path, dev)
        xt = tvm.runtime.from_dlpack(x.reshape(kernel_input_shape(spec)))
        yt = tvm.runtime.empty(tuple(ref.shape), "float32", dev)
        try:
            mod["main"](xt, *consts, yt)
            err = float((torch.from_dlpack(yt) - ref).abs().max() / ref.abs().max())
            t = graph_time(lambda: mod["main"](xt, *consts, yt), replays=20, tvm_stream=True)
        except Exception as failure:  # a config the GPU cannot launch: record it, go on
            row["error"] = f"{type(failure).__name__}: {str(failure).strip()[-200:]}"
            raw.write(json.dumps(row) + "\n")
            continue
        row.update(time_s=t, max_rel_err=err, default=job[-2] == 0)
        raw.write(json.dumps(row) + "\n")
        if err >= 1e-4:
            print(f"WRONG RESULT: {name} b{batch} {job[-1]} max rel err {err:.2e}", flush=True)
        elif (name, batch) not in best or t < best[(name, batch)]["time_s"]:
            best[(name, batch)] = {"spec": spec, "time_s": t, "config": job[-1]}
        if job[-2] == 0:
            defaults[(name, batch)] = t
    raw.close()

    records = []
    print(f"{'layer':24s} {'batch':>5s} {'default us':>11s} {'best us':>9s}  best config")
    for (name, batch), rec in sorted(best.items(), key=lambda kv: kv[0]):
        spec = rec["spec"]
        default_t = defaults.get((name, batch), float("nan"))
        print(f"{name:24s} {batch:5d} {default_t*1e6:11.1f} {rec['time_s']*1e6:9.1f}  {rec['config']}")
        records.append(conv_knobs.record(name, spec, GpuConfig(**rec["config"]),
                                       rec["time_s"] * 1e6, default_time_us=default_t * 1e6))
    arch = "sm_%d%d" % torch.cuda.get_device_capability()
    knob_table.write_table(Path(args.out) / f"pretuned-{arch}.json", {conv_knobs.SECTION: conv_knobs.merge(records, args.merge or None, replace=True)}, arch=arch,
                         gpu=env["gpu"], sparsity=args.sparsity, source="experiments/tuning/sweep_configs.py",
                         date=env["date"])


if __name__ == "__main__":
    main()
