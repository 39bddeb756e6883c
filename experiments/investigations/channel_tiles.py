"""Are the batch-16 kernels bound by re-reading the input from L2? A structured sweep of the
output channels one thread block covers (channel_threads x channels_per_thread), which is how
many channels share each input line a block pulls into L1.

input_layouts.py showed that aligning the gathered rows does not help and that tripling the
input's footprint (one shifted copy per filter column) makes the large layers up to 2.9x slower:
the time follows the lines fetched into L1, not the L1 wavefronts. The shipped configs give a
block 4-16 channels; this tries up to 128.

Usage (GPU): python -m experiments.investigations.channel_tiles [--layers a,b] [--batch 16]
"""
from __future__ import annotations

import argparse
import itertools
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np


from experiments.benchmarks.layers import pruned_weight
from experiments.benchmarks.layers import LAYERS
from experiments.tuning.sweep_configs import build
from experiments.common import load_kernel


def configs(spec):
    from escoin_tvm.kernels.conv2d.knobs import untuned_config
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig, pow2_at_least
    import tvm

    shipped = untuned_config(spec, tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    tx = pow2_at_least(spec.out_w, 32)
    out = [shipped]
    for ct, ch, rows, img in itertools.product((4, 8, 16, 32), (1, 2, 4, 8), (2, 4), (1, 2)):
        if tx * ct > 1024 or ct * ch > spec.out_channels // spec.groups or img > spec.batch:
            continue
        out.append(GpuConfig(threads_x=tx, threads_y=1, channel_threads=ct,
                             channels_per_thread=ch, rows_per_thread=rows,
                             images_per_thread=img, chunk=32))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", default="vgg16_conv3_2,vgg16_conv4_2,resnet50_layer1_3x3,"
                        "alexnet_conv2,googlenet_3a_3x3")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sparsity", type=float, default=0.9)
    args = parser.parse_args()

    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    workdir = "/tmp/escoin_channel_tiles"
    os.makedirs(workdir, exist_ok=True)
    jobs = []
    for seed, (name, chw, wshape, stride, pad, groups) in enumerate(LAYERS):
        if name not in args.layers.split(","):
            continue
        spec = Conv2dSpec.create((args.batch, *chw), wshape, stride=stride, padding=pad,
                                 groups=groups)
        for index, config in enumerate(configs(spec)):
            jobs.append((name, args.batch, args.sparsity, chw, wshape, stride, pad, groups, seed,
                         workdir, index, dict(vars(config))))
    t0 = time.time()
    with ProcessPoolExecutor(os.cpu_count(), mp_context=get_context("spawn")) as pool:
        built = list(pool.map(build, jobs, chunksize=2))
    print(f"built {len(jobs)} kernels in {time.time() - t0:.0f} s", flush=True)

    import torch
    import torch.nn.functional as F
    import tvm

    torch.backends.cudnn.allow_tf32 = False
    dev = tvm.cuda(0)
    refs = {}
    for job, (path, error) in zip(jobs, built):
        name, batch, chw, wshape, stride, pad, groups, seed, cfg = (
            job[0], job[1], job[3], job[4], job[5], job[6], job[7], job[8], job[-1])
        tag = "shipped" if job[-2] == 0 else ""
        knobs = "ct={channel_threads:2d} ch={channels_per_thread} rows={rows_per_thread} " \
                "img={images_per_thread} ty={threads_y}".format(**cfg)
        if path is None:
            print(f"{name:22s} {knobs}  not built: {error[:80]}", flush=True)
            continue
        if name not in refs:
            x = torch.randn(batch, *chw, device="cuda")
            w = torch.from_numpy(pruned_weight(wshape, args.sparsity, seed)).cuda()
            refs[name] = (x, F.conv2d(x, w, None, stride, pad, 1, groups))
        x, ref = refs[name]
        mod, consts = load_kernel(path, dev)
        xt = tvm.runtime.from_dlpack(x)
        yt = tvm.runtime.empty(tuple(ref.shape), "float32", dev)
        try:
            mod["main"](xt, *consts, yt)
            err = float((torch.from_dlpack(yt) - ref).abs().max() / ref.abs().max())
            t = float(np.median(mod.time_evaluator("main", dev, number=10, repeat=5,
                                                   min_repeat_ms=10)(xt, *consts, yt).results))
        except Exception as failure:
            print(f"{name:22s} {knobs}  failed: {str(failure)[-80:]}", flush=True)
            continue
        print(f"{name:22s} {knobs}  {t*1e6:9.1f} us  channels/block {cfg['channel_threads'] * cfg['channels_per_thread']:3d}"
              f"  err {err:.1e} {tag}", flush=True)


if __name__ == "__main__":
    main()
