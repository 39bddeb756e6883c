"""TVM 0.27 bug: a cross-thread reduction (rfactor + warp shuffle) whose block carries a bounds
predicate loses that predicate on its final store. A sparse linear layer with 3 output
features, 2 features per thread block, shows it: the reduction's sblock has
``T.where(n_0 * 2 + n_1 < 3)``, but the CUDA code writes the reduced value guarded only by
``threadIdx.x == 0``, so the fourth row's threads store into the next batch row's first feature
(and past the buffer):

    if (((int)threadIdx.x) == 0) {
      sparse_linear_ptr[(((ax1 * 3) + (((int)blockIdx.x) * 2)) + ((int)threadIdx.y))] = ...;

The blocks race on that element, so the result is wrong only on some runs. The sparse linear
GPU schedule works around it by reducing into a local buffer and storing through an epilogue
block, whose predicate survives (``escoin_tvm/linear.py``, ``output_block``). No GPU is needed
to see the source. Run: python -m experiments.tvm_bugs.cross_thread_reduction_store_bug
"""
import numpy as np
import tvm
from tvm import s_tir

from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
from escoin_tvm.kernels.linear.operator import sparse_linear_primfunc
from escoin_tvm.kernels.linear.schedule_gpu import LinearGpuConfig, schedule_linear_gpu

config = LinearGpuConfig(lanes=8, rows=2, batch_tile=3, chunk=4)
weight = SparseLinearWeight.from_dense(np.ones((3, 1), np.float32))
func = sparse_linear_primfunc(2, weight, weight.ell_width(config.row_multiple))
mod = schedule_linear_gpu(s_tir.Schedule(func), config).mod
print(mod.script())
source = tvm.compile(mod, target={"kind": "cuda", "arch": "sm_90"}).mod.imports[0].inspect_source()
print(source[source.index('extern "C" __global__ void __launch_bounds__'):])
