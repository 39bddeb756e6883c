"""A compiled Escoin kernel as a Python callable: numpy arrays or torch tensors in, the same kind
out, with its constant arguments (the sparse weight's arrays, the bias) bound.

Called with torch tensors, a kernel runs on the caller's current CUDA stream and allocates its
output with PyTorch's allocator: the input and output are passed to the compiled function
directly (no copy, the function looked up once), which keeps the call within a few microseconds
of the kernel's own time and lets it run inside CUDA graphs.

A kernel created inside ``build_together.compile_together()`` is compiled with the others of
that block, in one module; any other compiles when it is created.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tvm

from ..errors import ArgumentError, DTypeError, ShapeError
from ..support import dtypes
from ..support.target import device_for, is_gpu, require_device
from ..support.tensors import ALIGNMENT, from_tvm, is_torch, to_tvm
from . import build_together


class CompiledKernel:
    """``kernel(x)``: the compiled function ``main(data, *constants, out)`` of ``mod``, for an
    input of ``input_shape`` that the function takes as ``data_shape`` (a view of it)."""

    def __init__(self, mod, target, device, input_shape: Sequence[int],
                 data_shape: Sequence[int], output_shape: Sequence[int], dtype: str,
                 constants: Sequence[np.ndarray]):
        self.target = target
        self.device = device_for(target, device)
        self._torch_device_type = "cuda" if is_gpu(target) else "cpu"  # what run_torch takes
        self.input_shape, self.data_shape = tuple(input_shape), tuple(data_shape)
        self.output_shape, self.dtype = tuple(output_shape), dtype
        self.module = mod  # the scheduled TIR, until compiled
        self.executable, self.function, self.symbol = None, None, None
        self.host_constants = list(constants)  # kept on the host
        self._constants = None  # uploaded on first use: a CUDA kernel also builds without a GPU
        self._torch_constants = None
        self._torch_call = None  # (device, dtype, constants) once called with torch tensors
        self._same_shape = self.data_shape == self.input_shape
        if not build_together.defer(self):
            self.compile()

    @property
    def compiled(self) -> bool:
        return self.function is not None

    def compile(self) -> None:
        """Compiles the kernel alone (a no-op once compiled)."""
        if not self.compiled:
            self.bind(build_together.compile_module(self.module, self.target), "main")

    def bind(self, executable, symbol: str) -> None:
        """The kernel calls ``symbol`` of the compiled ``executable`` (its own module, or one
        it shares with the kernels compiled together with it)."""
        self.executable, self.symbol = executable, symbol
        self.function = executable.mod[symbol]
        self.module = None

    def _device_constants(self):
        if self._constants is None:
            require_device(self.device)
            self._constants = [tvm.runtime.tensor(a, self.device) for a in self.host_constants]
        return self._constants

    def __call__(self, x):
        if is_torch(x):
            return self.run_torch(x)
        self.compile()
        constants = self._device_constants()
        data = to_tvm(x, self.device, self.input_shape, name="input", dtype=self.dtype)
        data = data._create_view(self.data_shape)  # a view, no copy
        out = tvm.runtime.empty(self.output_shape, self.dtype, self.device)
        self.function(data, *constants, out)
        return from_tvm(out, x)

    def run_torch(self, x, out=None):
        """The kernel on a torch tensor on the kernel's device, on the current stream; the
        output (``out``, or a new tensor from PyTorch's allocator) is returned.

        The stream needs no setting here: a CUDA torch tensor among a call's arguments makes
        tvm_ffi run the call on PyTorch's current stream of its device (the DLPack exchange
        API's ``current_work_stream``). The checks are kept cheap (compared against values
        made once per kernel), as this is every call's host time."""
        prepared = self._torch_call
        if prepared is None or x.device != prepared[0]:
            prepared = self._prepare_torch_call(x)
        _, dtype, constants = prepared
        if x.dtype != dtype:
            raise DTypeError(f"input must be {self.dtype}, got {dtypes.name_of(x.dtype)}")
        if x.shape != self.input_shape:
            raise ShapeError(f"input must have shape {self.input_shape}, got {tuple(x.shape)}")
        if not x.is_contiguous() or x.data_ptr() % ALIGNMENT:
            import torch

            x = x.clone(memory_format=torch.contiguous_format)  # TVM's kernels assume both
        if x.requires_grad:
            x = x.detach()
        if out is None:
            out = x.new_empty(self.output_shape)
        self.function(x if self._same_shape else x.view(self.data_shape), *constants, out)
        return out

    def _prepare_torch_call(self, x):
        """(device, dtype, constants) of calls on ``x``'s device, checked and made once."""
        constants = self._torch_constants_on(x.device)
        if self.function is None:
            self.compile()
        self._torch_call = (x.device, dtypes.torch_dtype(self.dtype), constants)
        return self._torch_call

    def _torch_constants_on(self, device):
        """The constants as torch tensors on ``device``, which must be the kernel's."""
        wanted = self._torch_device_type
        if device.type != wanted or (wanted == "cuda" and (device.index or 0) != self.device.index):
            raise ArgumentError(f"input is on {device} but the module runs on {self.device}; "
                                f"move it with .to('{wanted}')")
        if self._torch_constants is None:
            require_device(self.device)
            self._torch_constants = [dtypes.to_torch(a).to(device) for a in self.host_constants]
        return self._torch_constants

    @property
    def source(self) -> str:
        """Generated device code (CUDA C for a GPU target, LLVM IR otherwise); a kernel compiled
        together with others shares its module's code."""
        self.compile()
        mod = self.executable.mod
        return (mod.imports[0] if is_gpu(self.target) else mod).inspect_source()

    def time(self, number: int = 100, repeat: int = 5) -> float:
        """Median kernel time in seconds on random input (TVM's time_evaluator, device timers)."""
        self.compile()
        constants = self._device_constants()
        rng = np.random.default_rng(0)
        data = tvm.runtime.tensor(rng.standard_normal(self.data_shape).astype(
            dtypes.numpy_dtype(self.dtype)), self.device)
        out = tvm.runtime.empty(self.output_shape, self.dtype, self.device)
        timer = self.executable.mod.time_evaluator(self.symbol, self.device, number=number, repeat=repeat)
        return float(np.median(timer(data, *constants, out).results))
