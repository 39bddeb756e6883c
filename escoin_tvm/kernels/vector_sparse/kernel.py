"""The vector-sparse kernels built: ``build_vector_sparse_conv2d``, one pruned convolution
compiled into a callable kernel (``compiled_kernel.py``), and ``build_vector_sparse_linear``,
a pruned linear layer as its 1 x 1 case: on a GPU the tensor-core schedule (float16 or
bfloat16, blocks of 16 channels), elsewhere the CPU one (for correctness)."""
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
from .operator import (linear_spec, padded_pixels, vector_sparse_conv2d_primfunc,
                       vector_sparse_linear_primfunc)
from .schedule_cpu import schedule_cpu
from .schedule_gpu import MMA, TensorCoreConfig, check_gpu, default_config, schedule_gpu
from .tuning_space import decode_config, work_config, workload
from .weight_format import VectorSparseWeight


def schedule_choice(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue,
                    target, tuning_log=None, linear: bool = False):
    """The knobs of a GPU kernel of ``weight`` (its tap lists not yet padded): the best record
    of ``tuning_log`` (a ``tuning.TuningLog``) for its workload, else the untuned ones.
    Returns (config, tuned, where from). ``linear``: a linear layer's kernel."""
    width = weight.offsets.shape[1]
    if tuning_log is not None:
        padded = weight.padded_to(work_config(spec, width).k_tile)
        found = tuning_log.best(workload(spec, padded, epilogue, linear), target,
                                decode_config)
        if found is not None:
            config, seconds = found
            return config, True, f"tuned ({seconds * 1e6:.1f} us)"
    return default_config(spec, width), False, "default"


def scheduled_module(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue,
                     config: TensorCoreConfig, tuned: bool = False, linear: bool = False):
    """The GPU kernel's scheduled IRModule and the weight it takes (its tap lists padded).
    A ``tuned`` config (a tuning record's) runs on the work it was tuned on
    (``tuning_space.work_config``), any other on its own tiles. ``linear``: the kernel of a
    linear layer whose ``linear_spec`` is ``spec``."""
    config = config.validate()
    if linear and config.image_block != 1:
        raise ArgumentError(f"a linear layer is one image: image_block must be 1, got "
                            f"{config.image_block}")
    work = work_config(spec, weight.offsets.shape[1]) if tuned else config
    weight = weight.padded_to(work.k_tile)
    width = weight.offsets.shape[1]
    rows = padded_pixels(spec, work.m_tile, work.image_block) * work.image_block
    if config.image_block != work.image_block or rows % config.m_tile or width % config.k_tile:
        raise ArgumentError(f"{config} does not fit the tuned work: {work.image_block} images "
                            f"per block, {rows} rows per image block, {width} taps")
    mod = tir_pipeline.with_warp_fragments(schedule_gpu(
        s_tir.Schedule(_primfunc(spec, weight, epilogue, work.m_tile, work.image_block, linear)),
        spec, config, weight.dtype, weight.in_place, linear).mod)
    return mod, weight


def _primfunc(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue, m_tile: int,
              image_block: int, linear: bool):
    """The unscheduled PrimFunc of ``weight``'s kernel: a convolution's, or a linear layer's
    (``spec`` its ``linear_spec``)."""
    width = weight.offsets.shape[1]
    if linear:
        return vector_sparse_linear_primfunc(spec.height, spec.in_channels, spec.out_channels,
                                             weight.blocks, width, weight.group, epilogue,
                                             weight.dtype, m_tile, weight.in_place)
    return vector_sparse_conv2d_primfunc(spec, weight.blocks, width, weight.group, epilogue,
                                         weight.dtype, m_tile, image_block, weight.in_place)


def cpu_module(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue,
               config: Optional[TensorCoreConfig] = None, linear: bool = False):
    """The CPU kernel's scheduled IRModule and the weight it takes: with ``config``, the GPU
    kernel's layout of M and padding of the taps (so that a CPU test checks them)."""
    if config is not None:
        weight = weight.padded_to(config.validate().k_tile)
    func = _primfunc(spec, weight, epilogue, config.m_tile if config else 1,
                     config.image_block if config else 1, linear)
    return schedule_cpu(s_tir.Schedule(func)).mod, weight


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
            mod, weight = cpu_module(spec, weight, epilogue, config)
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


class VectorSparseLinearKernel(CompiledKernel):
    """A compiled vector-sparse linear layer: ``kernel(x)`` for x of (batch, in_features), the
    1 x 1 case of the convolution (``operator.vector_sparse_linear_te``)."""

    def __init__(self, batch: int, weight: VectorSparseWeight, bias: Optional[np.ndarray],
                 relu: bool, target, device=None, config: Optional[TensorCoreConfig] = None,
                 tuned: bool = False):
        out_features, in_features = weight.weight_shape[:2]
        self.spec = spec = linear_spec(batch, in_features, out_features)
        self.epilogue = epilogue = Epilogue(bias=bias is not None, relu=bool(relu))
        if is_gpu(target):
            self.config = config or default_config(spec, weight.offsets.shape[1])
            mod, weight = scheduled_module(spec, weight, epilogue, self.config, tuned, True)
        else:
            self.config = config
            mod, weight = cpu_module(spec, weight, epilogue, config, linear=True)
        self.weight = weight
        constants = [weight.offsets, weight.values, weight.slots]
        super().__init__(mod, target, device, (batch, in_features), (batch, in_features),
                         (batch, out_features), weight.dtype,
                         constants + ([] if bias is None else [bias]))


def build_vector_sparse_linear(weight, batch: int, *, bias=None, relu: bool = False,
                               group: int = 16, target: TargetLike = "llvm", device=None,
                               config: Optional[TensorCoreConfig] = None, tuned: bool = False
                               ) -> VectorSparseLinearKernel:
    """Compiles the linear layer ``x @ weight.T (+ bias) (ReLU)`` for x of (``batch``,
    in_features), ``weight`` dense (out_features, in_features) in the vector-sparse format
    (blocks of ``group`` output features sharing their non-zero input features; 16 on a GPU),
    as the 1 x 1 convolution whose pixels are the batch. ``config`` and ``tuned`` as for
    ``build_vector_sparse_conv2d``."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    if weight.ndim != 2:
        raise ShapeError(f"a linear weight is (out_features, in_features), got shape "
                         f"{weight.shape}")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ArgumentError(f"batch must be an int >= 1, got {batch!r}")
    out_features, in_features = weight.shape
    if bias is not None:
        bias = as_float32_bias(bias)
        if bias.shape != (out_features,):
            raise ShapeError(f"bias must have shape ({out_features},), got {bias.shape}")
    if is_gpu(target):
        check_gpu(dtypes.name_of(weight.dtype), group)
    spec = linear_spec(int(batch), in_features, out_features)
    encoded = VectorSparseWeight.from_dense(weight.reshape(out_features, in_features, 1, 1),
                                            spec, group, MMA)
    return VectorSparseLinearKernel(int(batch), encoded, bias, relu, target, device, config,
                                    tuned)
