"""The vector-sparse convolution built: ``build_vector_sparse_conv2d``, one pruned convolution
compiled into a callable kernel (``compiled_kernel.py``): on a GPU the tensor-core schedule
(float16 or bfloat16, blocks of 16 channels), elsewhere the CPU one (for correctness)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from tvm import s_tir

from ...errors import ArgumentError, ShapeError
from ...support import dtypes, tir_pipeline
from ...support.target import TargetLike, is_gpu, resolve_target
from ..compiled_kernel import CompiledKernel
from ..conv_spec import Conv2dSpec, IntOrPair
from ..csr import as_float32_bias, as_numpy_weight
from ..epilogue import Epilogue
from .operator import padded_pixels, vector_sparse_conv2d_primfunc
from .schedule_cpu import schedule_cpu
from .schedule_gpu import MMA, TensorCoreConfig, check_gpu, default_config, schedule_gpu
from .tuning_space import decode_config, work_config, workload
from .weight_format import VectorSparseWeight


def schedule_choice(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue,
                    target, tuning_log=None):
    """The knobs of a GPU kernel of ``weight`` (its tap lists not yet padded): the best record
    of ``tuning_log`` (a ``tuning.TuningLog``) for its workload, else the untuned ones.
    Returns (config, tuned, where from)."""
    width = weight.offsets.shape[1]
    if tuning_log is not None:
        padded = weight.padded_to(work_config(spec, width).k_tile)
        found = tuning_log.best(workload(spec, padded, epilogue), target, decode_config)
        if found is not None:
            config, seconds = found
            return config, True, f"tuned ({seconds * 1e6:.1f} us)"
    return default_config(spec, width), False, "default"


def scheduled_module(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue,
                     config: TensorCoreConfig, tuned: bool = False):
    """The GPU kernel's scheduled IRModule and the weight it takes (its tap lists padded).
    A ``tuned`` config (a tuning record's) runs on the work it was tuned on
    (``tuning_space.work_config``), any other on its own tiles."""
    config = config.validate()
    work = work_config(spec, weight.offsets.shape[1]) if tuned else config
    weight = weight.padded_to(work.k_tile)
    width = weight.offsets.shape[1]
    rows = padded_pixels(spec, work.m_tile, work.image_block) * work.image_block
    if config.image_block != work.image_block or rows % config.m_tile or width % config.k_tile:
        raise ArgumentError(f"{config} does not fit the tuned work: {work.image_block} images "
                            f"per block, {rows} rows per image block, {width} taps")
    func = vector_sparse_conv2d_primfunc(spec, weight.blocks, width, weight.group, epilogue,
                                         weight.dtype, work.m_tile, work.image_block,
                                         weight.in_place)
    mod = tir_pipeline.with_warp_fragments(schedule_gpu(
        s_tir.Schedule(func), spec, config, weight.dtype, weight.in_place).mod)
    return mod, weight


class VectorSparseConv2dKernel(CompiledKernel):
    """A compiled vector-sparse convolution: ``kernel(x)`` for a numpy array or torch tensor of
    ``kernel.spec.input_shape``. Zero weights at a block's taps are multiplied (they are part of
    the block); taps outside a block's union are skipped, as the Escoin kernels skip zeros."""

    def __init__(self, spec: Conv2dSpec, weight: VectorSparseWeight, bias: Optional[np.ndarray],
                 epilogue: Epilogue, target, device=None,
                 config: Optional[TensorCoreConfig] = None, tuned: bool = False):
        self.spec, self.epilogue, self.config = spec, epilogue, config
        if is_gpu(target):
            self.config = config = config or default_config(spec, weight.offsets.shape[1])
            mod, weight = scheduled_module(spec, weight, epilogue, config, tuned)
        else:  # a config sets only the GPU's layout of M here (tests check it on a CPU)
            if config is not None:
                weight = weight.padded_to(config.validate().k_tile)
            func = vector_sparse_conv2d_primfunc(
                spec, weight.blocks, weight.offsets.shape[1], weight.group, epilogue,
                weight.dtype, config.m_tile if config else 1,
                config.image_block if config else 1, weight.in_place)
            mod = schedule_cpu(s_tir.Schedule(func)).mod
        self.weight = weight
        constants = [weight.offsets, weight.values, weight.slots]
        super().__init__(mod, target, device, spec.input_shape, spec.input_shape,
                         spec.output_shape, weight.dtype,
                         constants + ([] if bias is None else [bias]))


def build_vector_sparse_conv2d(weight, input_shape: Sequence[int], *, bias=None,
                               stride: IntOrPair = 1, padding: IntOrPair = 0,
                               dilation: IntOrPair = 1, groups: int = 1, relu: bool = False,
                               group: int = 16, reorder: bool = False,
                               target: TargetLike = "llvm", device=None,
                               config: Optional[TensorCoreConfig] = None, tuned: bool = False
                               ) -> VectorSparseConv2dKernel:
    """Compiles the convolution of ``weight`` (dense OIHW; float32, float16 or bfloat16; on a
    GPU float16 or bfloat16) in the vector-sparse format (``VectorSparseWeight``: blocks of
    ``group`` output channels, 16 on a GPU, reordered by similarity with ``reorder``) for
    inputs of ``input_shape`` (NCHW). ``config`` sets the GPU schedule's tiles
    (``TensorCoreConfig``; by default ``default_config``); a ``tuned`` one (a tuning record's:
    ``schedule_choice``) runs on the work it was tuned on."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    spec = Conv2dSpec.create(input_shape, weight.shape, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if bias is not None:
        bias = as_float32_bias(bias)
        if bias.shape != (spec.out_channels,):
            raise ShapeError(f"bias must have shape ({spec.out_channels},), got {bias.shape}")
    if is_gpu(target):
        check_gpu(dtypes.name_of(weight.dtype), group)
    encoded = VectorSparseWeight.from_dense(weight, spec, group, MMA, reorder)
    return VectorSparseConv2dKernel(
        spec, encoded, bias, Epilogue(bias=bias is not None, relu=bool(relu)), target, device,
        config, tuned)
