"""Why untuned kernels were 4-5x slow on 13x13 and 27x27 layers, and the fix, measured.

A register tile of ``rows_per_thread`` rows (or images) that does not divide the output gets a
bounds check around every accumulator; the checks differ per row, so nvcc emits a branch per FMA
(138 branches and 256 shared loads in the hot loop of AlexNet conv3's default kernel, against 4 and
16 for a 14x14 layer: PTX counts from this machine's nvcc) and cannot batch the loads. The fix
sums over a domain rounded up to the tile and crops at the store (operator.py ``domain``).

This times, for each layer and config, the kernel on the exact domain and on the rounded domain
(what every kernel uses now), and checks both against cuDNN fp32.
Usage: python -m experiments.investigations.odd_output_rows [--out DIR]
"""
import argparse
import json

import numpy as np


from experiments.benchmarks.layers import pruned_weight
from experiments.common import RESULTS, result_path


def build(spec, weight, config, domain):
    """The kernel of ``config`` summing over ``domain`` (None: the exact output)."""
    import tvm
    from tvm import s_tir

    from escoin_tvm.kernels.conv2d.operator import Epilogue, ell_arrays, sparse_conv2d_primfunc
    from escoin_tvm.kernels.conv2d.schedule_gpu import schedule_gpu
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    offsets, values = ell_arrays(spec, EscoinWeight.from_dense(weight, spec), config.chunk)
    func = sparse_conv2d_primfunc(spec, offsets.shape[1], Epilogue(), domain)
    exe = tvm.compile(schedule_gpu(s_tir.Schedule(func), config).mod,
                      target=tvm.target.Target({"kind": "cuda", "arch": "sm_90"}))
    return exe, offsets, values

# (name, input CHW, weight OIHW, padding, batch): torchvision AlexNet's layers (odd outputs) and
# a 14x14 control
LAYERS = [("tv_alexnet_conv2", (64, 27, 27), (192, 64, 5, 5), 2, 16),
          ("tv_alexnet_conv3", (192, 13, 13), (384, 192, 3, 3), 1, 16),
          ("tv_alexnet_conv4", (384, 13, 13), (256, 384, 3, 3), 1, 16),
          ("tv_alexnet_conv5", (256, 13, 13), (256, 256, 3, 3), 1, 16),
          ("resnet50_layer4_3x3", (512, 7, 7), (512, 512, 3, 3), 1, 16),
          ("googlenet_4a_3x3_control", (96, 14, 14), (208, 96, 3, 3), 1, 16),
          ("tv_alexnet_conv3_b3", (192, 13, 13), (384, 192, 3, 3), 1, 3)]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    import torch
    import torch.nn.functional as F

    import tvm

    from escoin_tvm.kernels.conv2d.knobs import extents
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    torch.backends.cudnn.allow_tf32 = False
    path = result_path("odd-rows", out=args.out)
    for seed, (name, chw, wshape, pad, batch) in enumerate(LAYERS):
        weight = pruned_weight(wshape, 0.9, seed)
        spec = Conv2dSpec.create((batch, *chw), wshape, padding=pad)
        config = default_gpu_config(spec)
        x = torch.randn(batch, *chw, device="cuda")
        ref = F.conv2d(x, torch.from_numpy(weight).cuda(), padding=pad)
        row = {"layer": name, "batch": batch, "config": dict(vars(config))}
        dev = tvm.cuda(0)
        for label, domain in (("exact", None), ("rounded", extents(spec, config)[0])):
            exe, offsets, values = build(spec, weight, config, domain)
            args_ = [tvm.runtime.from_dlpack(x), tvm.runtime.tensor(offsets, dev),
                     tvm.runtime.tensor(values, dev),
                     tvm.runtime.empty(spec.output_shape, "float32", dev)]
            exe["main"](*args_)
            err = float((torch.from_dlpack(args_[-1]) - ref).abs().max() / ref.abs().max())
            timer = exe.mod.time_evaluator("main", dev, number=50, repeat=5)
            row[label] = {"time_us": float(np.median(timer(*args_).results)) * 1e6,
                          "max_rel_err": err}
        row["speedup"] = row["exact"]["time_us"] / row["rounded"]["time_us"]
        print(json.dumps(row), flush=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
