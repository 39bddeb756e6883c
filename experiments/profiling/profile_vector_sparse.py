"""Runs one vector-sparse (tensor-core) kernel a few times, for Nsight Compute to profile:

    ncu --kernel-name regex:main_kernel_1 --launch-skip 2 --launch-count 1 --set detailed \\
        python -m experiments.profiling.profile_vector_sparse vgg16_conv4_2 16 0.9 \\
        ['{"warps": 4, "fragments": 2, "k_fragments": 2}'] [float16]

The launches of one call are the pad (main_kernel), the gathered GEMM (main_kernel_1) and the
epilogue (main_kernel_2). The optional fourth argument is a config (JSON; the default config
otherwise), the fifth the dtype (float16 by default). The weight is the benchmark's, pruned in
vectors of 16 channels (``bench_vector_sparse.vector_weight``).
"""
import json
import sys

import torch

from escoin_tvm.kernels.vector_sparse.kernel import build_vector_sparse_conv2d
from escoin_tvm.kernels.vector_sparse.schedule_gpu import TensorCoreConfig
from escoin_tvm.support import dtypes
from experiments.benchmarks.bench_vector_sparse import vector_weight
from experiments.benchmarks.layers import LAYERS, UNSEEN_LAYERS

name, batch, sparsity = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
config = TensorCoreConfig(**json.loads(sys.argv[4])) if len(sys.argv) > 4 else None
dtype = sys.argv[5] if len(sys.argv) > 5 else "float16"
seed, (_, chw, wshape, stride, pad, groups) = next(
    (i if layers is LAYERS else 100 + i, layer) for layers in (LAYERS, UNSEEN_LAYERS)
    for i, layer in enumerate(layers) if layer[0] == name)
weight = vector_weight(wshape, groups, sparsity, seed).astype(dtypes.numpy_dtype(dtype))
kernel = build_vector_sparse_conv2d(weight, (batch, *chw), stride=stride, padding=pad,
                                    groups=groups, target="cuda", config=config)
x = torch.randn((batch, *chw), device="cuda").to(getattr(torch, dtype))
for _ in range(5):
    kernel(x)
torch.cuda.synchronize()
print(name, batch, sparsity, kernel.config)
