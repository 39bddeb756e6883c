"""Runs one Escoin kernel a few times, for Nsight Compute to profile:

    ncu --kernel-name regex:main_kernel_1 --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats python -m experiments.profiling.profile_kernel vgg16_conv3_2 16 0.9 \\
        ['{"block_images": true, "images_per_thread": 2}'] [float16]

The optional fourth argument overrides knobs of the untuned config (JSON), the fifth sets the
dtype (float32 by default).
"""
import dataclasses
import json
import sys

import torch

import escoin_tvm
from escoin_tvm.kernels.conv2d.knobs import untuned_config
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from escoin_tvm.support.target import resolve_target
from experiments.benchmarks.layers import LAYERS, UNSEEN_LAYERS, pruned_weight

name, batch, sparsity = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
overrides = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
dtype = sys.argv[5] if len(sys.argv) > 5 else "float32"
seed, (_, chw, wshape, stride, pad, groups) = next((i, l) for layers in (LAYERS, UNSEEN_LAYERS)
                                             for i, l in enumerate(layers) if l[0] == name)
spec = Conv2dSpec.create((batch, *chw), wshape, stride=stride, padding=pad, groups=groups)
config = dataclasses.replace(untuned_config(spec, resolve_target("cuda"), dtype), **overrides)
kernel = escoin_tvm.build_sparse_conv2d(pruned_weight(wshape, sparsity, seed).astype(dtype),
                                        (batch, *chw), stride=stride, padding=pad, groups=groups,
                                        target="cuda", config=config)
print(kernel.config)
x = torch.randn(batch, *chw, device="cuda").to(getattr(torch, dtype))
for _ in range(4):
    kernel(x)
torch.cuda.synchronize()
