"""``build_sparse_conv2d``: one pruned convolution compiled into a callable Escoin kernel
(``compiled_kernel.py``: numpy or torch in and out, cheap calls on the current stream)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .compiled_kernel import CompiledKernel
from .errors import ShapeError
from .kernel import ScheduleConfig, scheduled_module
from .operator import Epilogue, kernel_input_shape
from .spec import Conv2dSpec, IntOrPair
from .target import TargetLike, resolve_target
from .weight_format import EscoinWeight, as_numpy_weight


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
        mod, offsets, values, self.config = scheduled_module(spec, weight, epilogue, target, config,
                                                             tuned)
        # a kernel that reads in place takes the input as (N, C*H*W): a view, no copy
        super().__init__(mod, target, device, spec.input_shape, kernel_input_shape(spec),
                         spec.output_shape, weight.dtype,
                         [a for a in (offsets, values, bias) if a is not None])


def build_sparse_conv2d(weight, input_shape: Sequence[int], *, bias=None, stride: IntOrPair = 1,
                        padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                        relu: bool = False, target: TargetLike = "llvm",
                        config: Optional[ScheduleConfig] = None,
                        tuned: bool = False, device=None) -> SparseConv2dKernel:
    """Compiles a sparse direct convolution of ``weight`` (dense OIHW, numpy or torch; float32,
    float16 or bfloat16: the kernel's inputs and outputs have its dtype, and it accumulates in
    float32) for inputs of ``input_shape`` (NCHW). ``padding`` may be asymmetric:
    (top, left, bottom, right). ``config`` overrides the default schedule knobs; ``tuned``
    says it comes from a tuning log (``TuningLog.lookup``): the kernel then does the work it was
    tuned on (``tuned_extents``). ``device`` is where it runs ("cuda:1", a torch.device, ...;
    the target's first device by default)."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    spec = Conv2dSpec.create(input_shape, weight.shape, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if bias is not None:
        bias = as_numpy_weight(bias, "bias").astype(np.float32)  # the epilogue is float32
        if bias.shape != (spec.out_channels,):
            raise ShapeError(f"bias must have shape ({spec.out_channels},), got {bias.shape}")
    epilogue = Epilogue(bias=bias is not None, relu=bool(relu))
    return SparseConv2dKernel(spec, EscoinWeight.from_dense(weight, spec), bias, epilogue, target,
                              config, tuned, device)
