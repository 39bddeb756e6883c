"""The scheduled sparse linear kernel of one fully-connected layer, and ``build_sparse_linear``.

Knobs come from ``config`` (given, or a tuning log's best record), else the shipped table's
record for the layer's shape, batch and dtype (``schedule.pretuned``), else the heuristic
(``schedule.linear``).
"""
from __future__ import annotations

from typing import Optional, Union

import numpy as np
from tvm import s_tir

from .compiled_kernel import CompiledKernel
from .errors import ArgumentError, ShapeError
from .linear import SparseLinearWeight, sparse_linear_primfunc
from .schedule import pretuned
from .schedule.linear import (LinearCpuConfig, LinearGpuConfig, default_linear_gpu_config,
                              schedule_linear_cpu, schedule_linear_gpu)
from .target import TargetLike, is_gpu, resolve_target
from .weight_format import as_numpy_weight

LinearConfig = Union[LinearGpuConfig, LinearCpuConfig]


def heuristic_linear_config(batch: int, weight: SparseLinearWeight, target) -> LinearConfig:
    """The heuristic knobs (``default_linear_gpu_config``; on the CPU the defaults). A tuning
    record is keyed on the work these knobs do, so that records keep matching whatever the
    shipped table holds."""
    if is_gpu(target):
        return default_linear_gpu_config(batch, weight.shape[0], weight.ell_width())
    return LinearCpuConfig()


def shipped_linear_config(batch: int, weight: SparseLinearWeight,
                          target) -> Optional[LinearGpuConfig]:
    """The shipped table's knobs for this layer's shape, batch and dtype on a GPU ``target``,
    or None. A record is kept only where it beat the heuristic on its shape; the heuristic is
    the one that generalises (docs/findings.md, "Sparse fully-connected layers")."""
    if not is_gpu(target):
        return None
    out_features, in_features = weight.shape
    return pretuned.lookup_linear(in_features, out_features, batch,
                                  str(target.attrs.get("arch", "")), weight.dtype)


def untuned_linear_config(batch: int, weight: SparseLinearWeight, target) -> LinearConfig:
    """The knobs a kernel gets without a tuning log: shipped, else the heuristic."""
    return shipped_linear_config(batch, weight, target) or \
        heuristic_linear_config(batch, weight, target)


def tuned_row_multiple(batch: int, weight: SparseLinearWeight, target) -> int:
    """The multiple a tuned kernel's rows are padded to: the heuristic kernel's, so that a
    tuned kernel does the work it was tuned on (``kernel.tuned_extents`` for the convolution)."""
    return heuristic_linear_config(batch, weight, target).row_multiple


def linear_schedule_choice(batch: int, weight: SparseLinearWeight, bias: bool, relu: bool,
                           target, tuning_log=None):
    """The knobs of a sparse linear kernel: the best record of ``tuning_log`` (a
    ``tuning.TuningLog``) for it, else the untuned ones (``scheduled_linear_module`` picks
    those when the config is None). Returns (config or None, tuned, where from)."""
    found = None if tuning_log is None else \
        tuning_log.lookup_linear(batch, weight, bias, relu, target)
    if found is None:
        shipped = shipped_linear_config(batch, weight, target)
        return shipped, False, "default" if shipped is None else "pre-tuned"
    config, seconds = found
    return config, True, f"tuned ({seconds * 1e6:.1f} us)"


def scheduled_linear_module(batch: int, weight: SparseLinearWeight, bias: bool, relu: bool,
                            target, config: Optional[LinearConfig] = None, tuned: bool = False):
    """(scheduled IRModule, columns, values, config) of the layer at ``batch`` rows. A
    ``tuned`` config (``TuningLog.lookup_linear``'s) runs on the work it was tuned on: rows
    padded as the untuned kernel's."""
    config = config or untuned_linear_config(batch, weight, target)
    wanted = LinearGpuConfig if is_gpu(target) else LinearCpuConfig
    if not isinstance(config, wanted):
        raise ArgumentError(f"a {target.kind.name} target needs a {wanted.__name__}, got "
                            f"{type(config).__name__}")
    config = config.validate()
    columns, values = weight.to_ell(tuned_row_multiple(batch, weight, target) if tuned
                                    else config.row_multiple)
    gpu = is_gpu(target)
    func = sparse_linear_primfunc(batch, weight, columns.shape[1], bias, relu, output_block=gpu,
                                  transposed_input=gpu and config.transposed_input)
    sch = s_tir.Schedule(func)
    sch = schedule_linear_gpu(sch, config) if is_gpu(target) else schedule_linear_cpu(sch, config)
    return sch.mod, columns, values, config


class SparseLinearKernel(CompiledKernel):
    """A compiled sparse linear layer: ``kernel(x)`` for x of shape (batch, in_features)."""

    def __init__(self, weight: SparseLinearWeight, batch: int, bias: Optional[np.ndarray],
                 relu: bool, target, config: Optional[LinearConfig] = None, device=None,
                 tuned: bool = False):
        self.weight = weight
        mod, columns, values, self.config = scheduled_linear_module(
            batch, weight, bias is not None, relu, target, config, tuned)
        shape = (batch, weight.shape[1])
        super().__init__(mod, target, device, shape, shape, (batch, weight.shape[0]),
                         weight.dtype, [a for a in (columns, values, bias) if a is not None])


def build_sparse_linear(weight, batch: int, *, bias=None, relu: bool = False,
                        target: TargetLike = "llvm", config: Optional[LinearConfig] = None,
                        device=None, tuned: bool = False) -> SparseLinearKernel:
    """Compiles ``y = relu?(x @ weight.T + bias)`` for x of shape (batch, in_features), with
    ``weight`` a pruned (out_features, in_features) matrix (numpy or torch; float32, float16 or
    bfloat16, which the kernel's input and output share; sums in float32). ``tuned``: the
    config is a tuning record's (``TuningLog.lookup_linear``), run on the work it was tuned on."""
    target = resolve_target(target)
    sparse = SparseLinearWeight.from_dense(weight)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ShapeError(f"batch must be an int >= 1, got {batch!r}")
    if bias is not None:
        bias = as_numpy_weight(bias, "bias").astype(np.float32)
        if bias.shape != (sparse.shape[0],):
            raise ShapeError(f"bias must have shape ({sparse.shape[0]},), got {bias.shape}")
    return SparseLinearKernel(sparse, batch, bias, bool(relu), target, config, device, tuned)
