"""The convolution kernel built: its knobs chosen (given, tuned, shipped or the heuristic), the
scheduled IRModule with its ELL arrays, and ``build_sparse_conv2d``: one pruned convolution
compiled into a callable kernel (``compiled_kernel.py``: numpy or torch in and out, cheap calls
on the current stream)."""
from __future__ import annotations

from functools import partial
from typing import Optional, Sequence

import numpy as np
from tvm import s_tir

from ...errors import ArgumentError, ShapeError
from ...support.target import TargetLike, is_gpu, resolve_target
from ..compiled_kernel import CompiledKernel
from ..csr import as_float32_bias, as_numpy_weight
from .knobs import ScheduleConfig, extents, schedule_source, tuned_extents, untuned_config
from .operator import Epilogue, kernel_input_shape, sparse_conv2d_primfunc, weight_arrays
from .schedule_cpu import CpuConfig, schedule_cpu
from .schedule_gpu import GpuConfig, half_sums_apply, schedule_gpu
from ..conv_spec import Conv2dSpec, IntOrPair
from .tuning_space import decode_config, tuned_row_length, workload
from .weight_format import EscoinWeight


def schedule_choice(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                    config: Optional[ScheduleConfig] = None, tuning_log=None):
    """The knobs of a kernel: ``config`` if given, else the best record of ``tuning_log``
    (a ``tuning.TuningLog``) for this kernel, else the untuned ones (``scheduled_module``
    picks those when the config is None). Returns (config or None, tuned, where from)."""
    if config is not None:
        return config, False, "given"
    if tuning_log is not None:
        found = tuning_log.best(workload(spec, tuned_row_length(weight, spec, target), epilogue,
                                         target, weight.dtype), target,
                                partial(decode_config, target=target))
        if found is not None:
            config, seconds = found
            return config, True, f"tuned ({seconds * 1e6:.1f} us)"
    return None, False, schedule_source(spec, target, weight.dtype)


def scheduled_module(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                     config: Optional[ScheduleConfig] = None, tuned: bool = False,
                     split_k: int = 1):
    """The scheduled IRModule for ``target`` and the weight's arrays it expects. A ``tuned`` config
    (a tuning record's) runs on the work it was tuned on (``tuned_extents``), any other on
    its own ``extents``. ``split_k`` > 1 (GPU only, opt-in: ``schedule_gpu``) pads the rows to
    ``split_k`` times the multiple and splits each over that many blocks.

    Returns (mod, arrays, config): ``arrays`` are the weight's (``operator.weight_arrays``:
    offsets, values and, for half sums, the chunks' factors), the kernel's parameters after
    its input."""
    config = config or untuned_config(spec, target, weight.dtype)
    wanted = GpuConfig if is_gpu(target) else CpuConfig
    if not isinstance(config, wanted):
        raise ArgumentError(f"a {target.kind.name} target needs a {wanted.__name__}, got "
                        f"{type(config).__name__}")
    config = config.validate() if wanted is GpuConfig else config
    domain, multiple = tuned_extents(spec, target, weight.dtype) if tuned else \
        extents(spec, config)
    if isinstance(config, GpuConfig) and (multiple % config.chunk or
                                          domain[0] % config.images_per_thread or
                                          domain[1] % config.rows_per_thread):
        raise ArgumentError(f"{config} does not fit the tuned work (images, rows) {domain}, rows "
                         f"padded to a multiple of {multiple}")
    if split_k > 1 and not isinstance(config, GpuConfig):
        raise ArgumentError(f"split_k={split_k} needs a GPU target, got {target.kind.name}")
    half_chunk = None
    if isinstance(config, GpuConfig) and config.half_sums:
        if not half_sums_apply(spec, config, weight.dtype) or split_k > 1:
            raise ArgumentError(
                f"GpuConfig.half_sums needs a half-precision kernel (got {weight.dtype}) with "
                f"blocked images in pairs (block_images=True, an even images_per_thread, and "
                f"for a kernel without padding a batch it divides) or one image per thread "
                f"(images_per_thread=1), and no split_k: {config} "
                "(schedule.gpu.with_half_sums makes such a config)")
        half_chunk = config.chunk
    arrays = weight_arrays(spec, weight, multiple * split_k, half_chunk)
    func = sparse_conv2d_primfunc(spec, arrays[0].shape[1], epilogue, domain, weight.dtype,
                                  half_chunk)
    sch = s_tir.Schedule(func)
    sch = schedule_gpu(sch, config, split_k) if isinstance(config, GpuConfig) else \
        schedule_cpu(sch, config)
    return sch.mod, arrays, config


class SparseConv2dKernel(CompiledKernel):
    """A compiled sparse convolution: ``kernel(x)`` for a numpy array or torch tensor of
    ``kernel.spec.input_shape`` returns the output as the same kind.

    Semantics differ from dense convolution in one way: zero weights are skipped, so an Inf or
    NaN input that meets only zero weights does not produce NaN (dense gives 0 * Inf = NaN), with
    the exceptions of ``EscoinWeight.to_ell(in_place=True)`` for convolutions without padding."""

    def __init__(self, spec: Conv2dSpec, weight: EscoinWeight, bias: Optional[np.ndarray],
                 epilogue: Epilogue, target, config: ScheduleConfig, tuned: bool = False,
                 device=None):
        self.spec, self.weight, self.epilogue = spec, weight, epilogue
        mod, arrays, self.config = scheduled_module(spec, weight, epilogue, target, config, tuned)
        # a kernel that reads in place takes the input as (N, C*H*W): a view, no copy
        super().__init__(mod, target, device, spec.input_shape, kernel_input_shape(spec),
                         spec.output_shape, weight.dtype,
                         arrays + ([] if bias is None else [bias]))


def build_sparse_conv2d(weight, input_shape: Sequence[int], *, bias=None, stride: IntOrPair = 1,
                        padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                        relu: bool = False, target: TargetLike = "llvm",
                        config: Optional[ScheduleConfig] = None,
                        tuned: bool = False, device=None) -> SparseConv2dKernel:
    """Compiles a sparse direct convolution of ``weight`` (dense OIHW, numpy or torch; float32,
    float16 or bfloat16: the kernel's inputs and outputs have its dtype, and it accumulates in
    float32) for inputs of ``input_shape`` (NCHW). ``padding`` may be asymmetric:
    (top, left, bottom, right). ``config`` overrides the default schedule knobs; ``tuned``
    says it comes from a tuning log (``schedule_choice``): the kernel then does the work it was
    tuned on (``tuned_extents``). ``device`` is where it runs ("cuda:1", a torch.device, ...;
    the target's first device by default)."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    spec = Conv2dSpec.create(input_shape, weight.shape, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if bias is not None:
        bias = as_float32_bias(bias)  # the epilogue is float32
        if bias.shape != (spec.out_channels,):
            raise ShapeError(f"bias must have shape ({spec.out_channels},), got {bias.shape}")
    epilogue = Epilogue(bias=bias is not None, relu=bool(relu))
    return SparseConv2dKernel(spec, EscoinWeight.from_dense(weight, spec), bias, epilogue, target,
                              config, tuned, device)
