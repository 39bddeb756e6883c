"""The sparse linear kernel built: its knobs chosen (given, tuned, shipped or the heuristic),
the scheduled IRModule with its ELL arrays, and ``build_sparse_linear``."""
from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np
from tvm import s_tir

from ...errors import ArgumentError, ShapeError
from ...support.target import TargetLike, is_gpu, resolve_target
from ..compiled_kernel import CompiledKernel
from ..csr import as_float32_bias
from .knobs import LinearConfig, shipped_linear_config, tuned_row_multiple, untuned_linear_config
from .operator import sparse_linear_primfunc
from .schedule_cpu import LinearCpuConfig, schedule_linear_cpu
from .schedule_gpu import LinearGpuConfig, schedule_linear_gpu
from .tuning_space import decode_linear_config, linear_workload
from .weight_format import SparseLinearWeight


def linear_schedule_choice(batch: int, weight: SparseLinearWeight, bias: bool, relu: bool,
                           target, tuning_log=None):
    """The knobs of a sparse linear kernel: the best record of ``tuning_log`` (a
    ``tuning.TuningLog``) for it, else the untuned ones (``scheduled_linear_module`` picks
    those when the config is None). Returns (config or None, tuned, where from)."""
    found = None if tuning_log is None else tuning_log.best(
        linear_workload(batch, weight, bias, relu, target), target,
        partial(decode_linear_config, target=target))
    if found is None:
        shipped = shipped_linear_config(batch, weight, target)
        return shipped, False, "default" if shipped is None else "pre-tuned"
    config, seconds = found
    return config, True, f"tuned ({seconds * 1e6:.1f} us)"


def scheduled_linear_module(batch: int, weight: SparseLinearWeight, bias: bool, relu: bool,
                            target, config: Optional[LinearConfig] = None, tuned: bool = False):
    """(scheduled IRModule, columns, values, config) of the layer at ``batch`` rows. A
    ``tuned`` config (a tuning record's) runs on the work it was tuned on: rows
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
    config is a tuning record's (``linear_schedule_choice``), run on the work it was tuned on."""
    target = resolve_target(target)
    sparse = SparseLinearWeight.from_dense(weight)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ShapeError(f"batch must be an int >= 1, got {batch!r}")
    if bias is not None:
        bias = as_float32_bias(bias)
        if bias.shape != (sparse.shape[0],):
            raise ShapeError(f"bias must have shape ({sparse.shape[0]},), got {bias.shape}")
    return SparseLinearKernel(sparse, batch, bias, bool(relu), target, config, device, tuned)
