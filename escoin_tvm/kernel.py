"""``build_sparse_conv2d``: one pruned convolution compiled into a callable Escoin kernel."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import tvm
from tvm import s_tir

from .errors import ArgumentError, ShapeError
from .operator import Epilogue, ell_arrays, kernel_input_shape, sparse_conv2d_primfunc
from .schedule import (CpuConfig, GpuConfig, default_cpu_config, default_gpu_config, pretuned,
                       schedule_cpu, schedule_gpu)
from .spec import Conv2dSpec, IntOrPair
from .target import TargetLike, device_for, is_gpu, require_device, resolve_target
from .tensors import from_tvm, to_tvm
from .weight_format import EscoinWeight, as_numpy_weight

ScheduleConfig = Union[CpuConfig, GpuConfig]


def untuned_config(spec: Conv2dSpec, target) -> ScheduleConfig:
    """The knobs a kernel gets without a tuning log: the shipped table's, else the heuristic."""
    if is_gpu(target):
        return pretuned.lookup(spec, str(target.attrs.get("arch", ""))) or default_gpu_config(spec)
    return default_cpu_config(spec)


def extents(spec: Conv2dSpec, config: ScheduleConfig) -> Tuple[Tuple[int, int], int]:
    """((images, rows), row multiple) of the work a kernel with ``config`` does: a GPU kernel
    sums over images and output rows rounded up to its register tile (``sparse_conv2d_te``'s
    ``domain``) and pads its ELL rows to a multiple of its chunk; a CPU kernel does neither."""
    if isinstance(config, GpuConfig):
        return ((_round_up(spec.batch, config.images_per_thread),
                 _round_up(spec.out_h, config.rows_per_thread)), config.chunk)
    return (spec.batch, spec.out_h), 1


def tuned_extents(spec: Conv2dSpec, target) -> Tuple[Tuple[int, int], int]:
    """The ``extents`` a tuned kernel runs on: the untuned kernel's. Tuning then searches the
    configs that fit that work (``tuning.space``: tiles and chunks that divide it), the untuned
    knobs are one of them, measured first, and a tuned kernel never does more work than the
    untuned one (a fixed, larger rounding made tuned kernels slower than the untuned ones whose
    knobs they had found: docs/findings.md, "Tuned work")."""
    return extents(spec, untuned_config(spec, target))


def schedule_source(spec: Conv2dSpec, target) -> str:
    """Where an untuned kernel's knobs come from: the shipped table or the heuristic."""
    if is_gpu(target) and pretuned.lookup(spec, str(target.attrs.get("arch", ""))):
        return "pre-tuned"
    return "default"


def schedule_choice(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                    config: Optional[ScheduleConfig] = None, tuning_log=None):
    """The knobs of a kernel: ``config`` if given, else the best record of ``tuning_log``
    (a ``tuning.TuningLog``) for this kernel, else the untuned ones (``scheduled_module``
    picks those when the config is None). Returns (config or None, tuned, where from)."""
    if config is not None:
        return config, False, "given"
    if tuning_log is not None:
        found = tuning_log.lookup(spec, weight, epilogue, target)
        if found is not None:
            config, seconds = found
            return config, True, f"tuned ({seconds * 1e6:.1f} us)"
    return None, False, schedule_source(spec, target)


def scheduled_module(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                     config: Optional[ScheduleConfig] = None, tuned: bool = False,
                     split_k: int = 1):
    """The scheduled IRModule for ``target`` and the ELL arrays it expects. A ``tuned`` config
    (``TuningLog.lookup``'s) runs on the work it was tuned on (``tuned_extents``), any other on
    its own ``extents``. ``split_k`` > 1 (GPU only, opt-in: ``schedule_gpu``) pads the rows to
    ``split_k`` times the multiple and splits each over that many blocks.

    Returns (mod, offsets, values, config)."""
    config = config or untuned_config(spec, target)
    wanted = GpuConfig if is_gpu(target) else CpuConfig
    if not isinstance(config, wanted):
        raise ArgumentError(f"a {target.kind.name} target needs a {wanted.__name__}, got "
                        f"{type(config).__name__}")
    config = config.validate() if wanted is GpuConfig else config
    domain, multiple = tuned_extents(spec, target) if tuned else extents(spec, config)
    if isinstance(config, GpuConfig) and (multiple % config.chunk or
                                          domain[0] % config.images_per_thread or
                                          domain[1] % config.rows_per_thread):
        raise ArgumentError(f"{config} does not fit the tuned work (images, rows) {domain}, rows "
                         f"padded to a multiple of {multiple}")
    if split_k > 1 and not isinstance(config, GpuConfig):
        raise ArgumentError(f"split_k={split_k} needs a GPU target, got {target.kind.name}")
    offsets, values = ell_arrays(spec, weight, multiple * split_k)
    func = sparse_conv2d_primfunc(spec, offsets.shape[1], epilogue, domain)
    sch = s_tir.Schedule(func)
    sch = schedule_gpu(sch, config, split_k) if isinstance(config, GpuConfig) else \
        schedule_cpu(sch, config)
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
                 epilogue: Epilogue, target, config: ScheduleConfig, tuned: bool = False,
                 device=None):
        self.spec, self.weight, self.epilogue, self.target = spec, weight, epilogue, target
        mod, offsets, values, self.config = scheduled_module(spec, weight, epilogue, target, config,
                                                             tuned)
        self.device = device_for(target, device)
        self.executable = tvm.compile(mod, target=target)
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
                        tuned: bool = False, device=None) -> SparseConv2dKernel:
    """Compiles a sparse direct convolution of ``weight`` (dense OIHW float32, numpy or torch)
    for inputs of ``input_shape`` (NCHW). ``padding`` may be asymmetric:
    (top, left, bottom, right). ``config`` overrides the default schedule knobs; ``tuned``
    says it comes from a tuning log (``TuningLog.lookup``): the kernel then does the work it was
    tuned on (``tuned_extents``). ``device`` is where it runs ("cuda:1", a torch.device, ...;
    the target's first device by default)."""
    target = resolve_target(target)
    weight = as_numpy_weight(weight)
    spec = Conv2dSpec.create(input_shape, weight.shape, stride=stride, padding=padding,
                             dilation=dilation, groups=groups)
    if bias is not None:
        bias = as_numpy_weight(bias, "bias")
        if bias.shape != (spec.out_channels,):
            raise ShapeError(f"bias must have shape ({spec.out_channels},), got {bias.shape}")
    epilogue = Epilogue(bias=bias is not None, relu=bool(relu))
    return SparseConv2dKernel(spec, EscoinWeight.from_dense(weight, spec), bias, epilogue, target,
                              config, tuned, device)
