"""``build_sparse_conv2d``: one pruned convolution compiled into a callable Escoin kernel."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tvm
from tvm import s_tir

from .errors import ShapeError
from .operator import Epilogue, ell_arrays, kernel_input_shape, sparse_conv2d_primfunc
from .schedule import (CpuConfig, GpuConfig, default_cpu_config, default_gpu_config, pretuned,
                       schedule_cpu, schedule_gpu)
from .schedule.gpu import pow2_at_least
from .spec import Conv2dSpec, IntOrPair
from .target import TargetLike, device_for, is_gpu, require_device, resolve_target
from .tensors import from_tvm, to_tvm
from .weight_format import EscoinWeight, as_numpy_weight

ScheduleConfig = Union[CpuConfig, GpuConfig]


TUNED_TILE = 4  # the largest images / rows register tile the tuning space tries


def tuned_domain(spec: Conv2dSpec) -> Tuple[int, int]:
    """The (images, rows) a tuned kernel sums over: rounded up to the largest register tile the
    tuning space tries for this layer, so that no candidate needs bounds checks on its
    accumulators (``sparse_conv2d_te``'s ``domain``) while the workload, and hence the tuning
    record, stays independent of the knobs. Costs up to 3 extra rows (+23% on a 13x13 output)."""
    return (_round_up(spec.batch, pow2_at_least(spec.batch, TUNED_TILE)),
            _round_up(spec.out_h, pow2_at_least(spec.out_h, TUNED_TILE)))


def untuned_config(spec: Conv2dSpec, target) -> ScheduleConfig:
    """The knobs a kernel gets without a tuning log: the shipped table's, else the heuristic."""
    if is_gpu(target):
        return pretuned.lookup(spec, str(target.attrs.get("arch", ""))) or default_gpu_config(spec)
    return default_cpu_config(spec)


def schedule_source(spec: Conv2dSpec, target) -> str:
    """Where an untuned kernel's knobs come from: the shipped table or the heuristic."""
    if is_gpu(target) and pretuned.lookup(spec, str(target.attrs.get("arch", ""))):
        return "pre-tuned"
    return "default"


def scheduled_module(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                     config: Optional[ScheduleConfig] = None, row_multiple: Optional[int] = None):
    """The scheduled IRModule for ``target`` and the ELL arrays it expects. The rows are padded
    to a multiple of ``row_multiple`` (default: the GPU config's chunk); a tuned config asks for
    the multiple it was tuned with, and gets the operator it was tuned on (``tuned_domain``), so
    that the kernel is the one that was measured. Untuned GPU kernels round the images and rows
    they compute up to their own register tile (``sparse_conv2d_te``'s ``domain``).

    Returns (mod, offsets, values, config)."""
    domain = tuned_domain(spec) if row_multiple is not None else None
    if is_gpu(target):
        config = (config or untuned_config(spec, target)).validate()
        if not isinstance(config, GpuConfig):
            raise TypeError(f"a CUDA target needs a GpuConfig, got {type(config).__name__}")
        if (row_multiple or config.chunk) % config.chunk:
            raise ValueError(f"row multiple {row_multiple} is not a multiple of the chunk {config.chunk}")
        offsets, values = ell_arrays(spec, weight, row_multiple or config.chunk)
        schedule = schedule_gpu
        if row_multiple is None:
            domain = (_round_up(spec.batch, config.images_per_thread),
                      _round_up(spec.out_h, config.rows_per_thread))
    else:
        config = config or untuned_config(spec, target)
        if not isinstance(config, CpuConfig):
            raise TypeError(f"an LLVM target needs a CpuConfig, got {type(config).__name__}")
        offsets, values = ell_arrays(spec, weight, row_multiple or 1)
        schedule = schedule_cpu
    func = sparse_conv2d_primfunc(spec, offsets.shape[1], epilogue, domain)
    sch = schedule(s_tir.Schedule(func), config)
    return sch.mod, offsets, values, config


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class SparseConv2dKernel:
    """A compiled sparse convolution: ``kernel(x)`` for a numpy array or torch tensor of
    ``kernel.spec.input_shape`` returns the output as the same kind.

    Semantics differ from dense convolution in one way: zero weights are skipped, so an Inf or
    NaN input that meets only zero weights does not produce NaN (dense gives 0 * Inf = NaN), with
    the exceptions of ``EscoinWeight.to_ell(in_place=True)`` for convolutions without padding."""

    def __init__(self, spec: Conv2dSpec, weight: EscoinWeight, bias: Optional[np.ndarray],
                 epilogue: Epilogue, target, config: ScheduleConfig,
                 row_multiple: Optional[int] = None):
        self.spec, self.weight, self.epilogue, self.target = spec, weight, epilogue, target
        mod, offsets, values, self.config = scheduled_module(spec, weight, epilogue, target, config,
                                                             row_multiple)
        self.executable = tvm.compile(mod, target=target)
        self.device = device_for(target)
        # the kernel's constant arguments (ELL offsets, values[, bias]), kept on the host
        self.host_constants = [a for a in (offsets, values, bias) if a is not None]
        self._constants = None  # uploaded on first use: a CUDA kernel also builds without a GPU

    def _device_constants(self):
        if self._constants is None:
            require_device(self.device)
            self._constants = [tvm.runtime.tensor(a, self.device) for a in self.host_constants]
        return self._constants

    def __call__(self, x):
        constants = self._device_constants()
        data = to_tvm(x, self.device, self.spec.input_shape, name="input")
        # a kernel that reads in place takes the input as (N, C*H*W): a view, no copy
        data = data._create_view(kernel_input_shape(self.spec))
        out = tvm.runtime.empty(self.spec.output_shape, "float32", self.device)
        self.executable.mod["main"](data, *constants, out)
        return from_tvm(out, x)

    @property
    def source(self) -> str:
        """Generated device code (CUDA C for a GPU target, LLVM IR otherwise)."""
        mod = self.executable.mod
        return (mod.imports[0] if is_gpu(self.target) else mod).inspect_source()

    def time(self, number: int = 100, repeat: int = 5) -> float:
        """Median kernel time in seconds on random input (TVM's time_evaluator, device timers)."""
        constants = self._device_constants()
        rng = np.random.default_rng(0)
        data = tvm.runtime.tensor(rng.standard_normal(kernel_input_shape(self.spec), np.float32),
                                  self.device)
        out = tvm.runtime.empty(self.spec.output_shape, "float32", self.device)
        timer = self.executable.mod.time_evaluator("main", self.device, number=number, repeat=repeat)
        return float(np.median(timer(data, *constants, out).results))


def build_sparse_conv2d(weight, input_shape: Sequence[int], *, bias=None, stride: IntOrPair = 1,
                        padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                        relu: bool = False, target: TargetLike = "llvm",
                        config: Optional[ScheduleConfig] = None,
                        row_multiple: Optional[int] = None) -> SparseConv2dKernel:
    """Compiles a sparse direct convolution of ``weight`` (dense OIHW float32, numpy or torch)
    for inputs of ``input_shape`` (NCHW). ``padding`` may be asymmetric:
    (top, left, bottom, right). ``config`` overrides the default schedule knobs;
    ``row_multiple`` the padding of the ELL rows (a tuned config's, see ``tuning``)."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    spec = Conv2dSpec.create(input_shape, weight.shape, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if bias is not None:
        bias = as_numpy_weight(bias)
        if bias.shape != (spec.out_channels,):
            raise ShapeError(f"bias must have shape ({spec.out_channels},), got {bias.shape}")
    epilogue = Epilogue(bias=bias is not None, relu=bool(relu))
    return SparseConv2dKernel(spec, EscoinWeight.from_dense(weight, spec), bias, epilogue, target,
                              config, row_multiple)
