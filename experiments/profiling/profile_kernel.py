"""Runs one Escoin kernel a few times, for Nsight Compute to profile:

    ncu --kernel-name regex:main_kernel_1 --launch-skip 2 --launch-count 1 \\
        --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \\
        --section LaunchStats python -m experiments.profiling.profile_kernel vgg16_conv3_2 16 0.9
"""
import sys

import numpy as np


import escoin_tvm
from experiments.benchmarks.layers import pruned_weight
from experiments.benchmarks.layers import LAYERS, UNSEEN_LAYERS

name, batch, sparsity = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
seed, (_, chw, wshape, stride, pad, groups) = next((i, l) for layers in (LAYERS, UNSEEN_LAYERS)
                                             for i, l in enumerate(layers) if l[0] == name)
kernel = escoin_tvm.build_sparse_conv2d(pruned_weight(wshape, sparsity, seed), (batch, *chw),
                                        stride=stride, padding=pad, groups=groups, target="cuda")
print(kernel.config)
x = np.random.default_rng(0).standard_normal((batch, *chw)).astype(np.float32)
for _ in range(4):
    kernel(x)
