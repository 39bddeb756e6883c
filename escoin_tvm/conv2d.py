"""``build_sparse_conv2d``: one pruned convolution compiled into a callable Escoin kernel.

Called with torch tensors, a kernel runs on the caller's current CUDA stream and allocates its
output with PyTorch's allocator: the input and output are passed to the compiled function
directly (no copy, the function looked up once), which is what keeps the call within a few
microseconds of the kernel's own time and lets it run inside CUDA graphs.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tvm

from . import dtypes
from .errors import ArgumentError, DTypeError, ShapeError
from .kernel import ScheduleConfig, scheduled_module
from .operator import Epilogue, kernel_input_shape
from .spec import Conv2dSpec, IntOrPair
from .target import TargetLike, device_for, is_gpu, require_device, resolve_target
from .tensors import ALIGNMENT, from_tvm, is_torch, to_tvm
from .weight_format import EscoinWeight, as_numpy_weight


class SparseConv2dKernel:
    """A compiled sparse convolution: ``kernel(x)`` for a numpy array or torch tensor of
    ``kernel.spec.input_shape`` returns the output as the same kind.

    Semantics differ from dense convolution in one way: zero weights are skipped, so an Inf or
    NaN input that meets only zero weights does not produce NaN (dense gives 0 * Inf = NaN), with
    the exceptions of ``EscoinWeight.to_ell(in_place=True)`` for convolutions without padding."""

    def __init__(self, spec: Conv2dSpec, weight: EscoinWeight, bias: Optional[np.ndarray],
                 epilogue: Epilogue, target, config: ScheduleConfig, tuned: bool = False,
                 device=None):
        self.spec, self.weight, self.epilogue, self.target = spec, weight, epilogue, target
        self.dtype = weight.dtype  # of the input, the weights and the output
        mod, offsets, values, self.config = scheduled_module(spec, weight, epilogue, target, config,
                                                             tuned)
        self.device = device_for(target, device)
        self.executable = tvm.compile(mod, target=target)
        self.function = self.executable.mod["main"]
        # the kernel's constant arguments (ELL offsets, values[, bias]), kept on the host
        self.host_constants = [a for a in (offsets, values, bias) if a is not None]
        self._constants = None  # uploaded on first use: a CUDA kernel also builds without a GPU
        self._torch_constants = None

    def _device_constants(self):
        if self._constants is None:
            require_device(self.device)
            self._constants = [tvm.runtime.tensor(a, self.device) for a in self.host_constants]
        return self._constants

    def __call__(self, x):
        if is_torch(x):
            return self.run_torch(x)
        constants = self._device_constants()
        data = to_tvm(x, self.device, self.spec.input_shape, name="input", dtype=self.dtype)
        # a kernel that reads in place takes the input as (N, C*H*W): a view, no copy
        data = data._create_view(kernel_input_shape(self.spec))
        out = tvm.runtime.empty(self.spec.output_shape, self.dtype, self.device)
        self.function(data, *constants, out)
        return from_tvm(out, x)

    def run_torch(self, x, out=None):
        """The kernel on a torch tensor on the kernel's device, on the current stream; the
        output (``out``, or a new tensor from PyTorch's allocator) is returned."""
        import torch

        if dtypes.name_of(x.dtype) != self.dtype:
            raise DTypeError(f"input must be {self.dtype}, got {dtypes.name_of(x.dtype)}")
        if tuple(x.shape) != self.spec.input_shape:
            raise ShapeError(f"input must have shape {self.spec.input_shape}, got "
                             f"{tuple(x.shape)}")
        constants = self._torch_constants_on(x.device)
        if not x.is_contiguous() or x.data_ptr() % ALIGNMENT:
            x = x.clone(memory_format=torch.contiguous_format)  # TVM's kernels assume both
        if x.requires_grad:
            x = x.detach()
        if out is None:
            out = torch.empty(self.spec.output_shape, dtype=x.dtype, device=x.device)
        data = x.view(kernel_input_shape(self.spec))
        if x.device.type == "cuda":
            import tvm_ffi

            with tvm_ffi.use_torch_stream():
                self.function(data, *constants, out)
        else:
            self.function(data, *constants, out)
        return out

    def _torch_constants_on(self, device):
        """The constants as torch tensors on ``device``, which must be the kernel's."""

        wanted = "cuda" if is_gpu(self.target) else "cpu"
        if device.type != wanted or (wanted == "cuda" and (device.index or 0) != self.device.index):
            raise ArgumentError(f"input is on {device} but the module runs on {self.device}; "
                                f"move it with .to('{wanted}')")
        if self._torch_constants is None:
            require_device(self.device)
            self._torch_constants = [dtypes.to_torch(a).to(device) for a in self.host_constants]
        return self._torch_constants

    @property
    def source(self) -> str:
        """Generated device code (CUDA C for a GPU target, LLVM IR otherwise)."""
        mod = self.executable.mod
        return (mod.imports[0] if is_gpu(self.target) else mod).inspect_source()

    def time(self, number: int = 100, repeat: int = 5) -> float:
        """Median kernel time in seconds on random input (TVM's time_evaluator, device timers)."""
        constants = self._device_constants()
        rng = np.random.default_rng(0)
        data = tvm.runtime.tensor(rng.standard_normal(kernel_input_shape(self.spec)).astype(
            dtypes.numpy_dtype(self.dtype)), self.device)
        out = tvm.runtime.empty(self.spec.output_shape, self.dtype, self.device)
        timer = self.executable.mod.time_evaluator("main", self.device, number=number, repeat=repeat)
        return float(np.median(timer(data, *constants, out).results))


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
