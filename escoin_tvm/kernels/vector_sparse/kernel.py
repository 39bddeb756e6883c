"""The vector-sparse convolution built: ``build_vector_sparse_conv2d``, one pruned convolution
compiled into a callable kernel (``compiled_kernel.py``). Only the CPU schedule exists yet (for
correctness: the family's GPU schedule, a gathered GEMM on tensor cores, is the next step)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from tvm import s_tir

from ...errors import ShapeError, TargetError
from ...support.target import TargetLike, is_gpu, resolve_target
from ..compiled_kernel import CompiledKernel
from ..conv_spec import Conv2dSpec, IntOrPair
from ..csr import as_float32_bias, as_numpy_weight
from ..epilogue import Epilogue
from .operator import vector_sparse_conv2d_primfunc
from .schedule_cpu import schedule_cpu
from .weight_format import VectorSparseWeight


class VectorSparseConv2dKernel(CompiledKernel):
    """A compiled vector-sparse convolution: ``kernel(x)`` for a numpy array or torch tensor of
    ``kernel.spec.input_shape``. Zero weights at a block's taps are multiplied (they are part of
    the block); taps outside a block's union are skipped, as the Escoin kernels skip zeros."""

    def __init__(self, spec: Conv2dSpec, weight: VectorSparseWeight, bias: Optional[np.ndarray],
                 epilogue: Epilogue, target, device=None):
        if is_gpu(target):
            raise TargetError("the vector-sparse kernels have a CPU schedule only, for now (their "
                              "tensor-core GPU schedule is the next step); use target='llvm'")
        self.spec, self.weight, self.epilogue = spec, weight, epilogue
        func = vector_sparse_conv2d_primfunc(spec, weight.blocks, weight.offsets.shape[1],
                                             weight.group, epilogue, weight.dtype)
        mod = schedule_cpu(s_tir.Schedule(func)).mod
        constants = [weight.offsets, weight.values, weight.slots]
        super().__init__(mod, target, device, spec.input_shape, spec.input_shape,
                         spec.output_shape, weight.dtype,
                         constants + ([] if bias is None else [bias]))


def build_vector_sparse_conv2d(weight, input_shape: Sequence[int], *, bias=None,
                               stride: IntOrPair = 1, padding: IntOrPair = 0,
                               dilation: IntOrPair = 1, groups: int = 1, relu: bool = False,
                               group: int = 16, reorder: bool = False,
                               target: TargetLike = "llvm",
                               device=None) -> VectorSparseConv2dKernel:
    """Compiles the convolution of ``weight`` (dense OIHW; float32, float16 or bfloat16) in the
    vector-sparse format (``VectorSparseWeight``: blocks of ``group`` output channels, reordered
    by similarity with ``reorder``) for inputs of ``input_shape`` (NCHW)."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    spec = Conv2dSpec.create(input_shape, weight.shape, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if bias is not None:
        bias = as_float32_bias(bias)
        if bias.shape != (spec.out_channels,):
            raise ShapeError(f"bias must have shape ({spec.out_channels},), got {bias.shape}")
    return VectorSparseConv2dKernel(
        spec, VectorSparseWeight.from_dense(weight, spec, group, reorder=reorder), bias,
        Epilogue(bias=bias is not None, relu=bool(relu)), target, device)
