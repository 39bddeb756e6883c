"""The sparse linear template as a MetaSchedule design space, and its tuning task.

Every integer knob of ``LinearGpuConfig`` / ``LinearCpuConfig`` is a ``sample_categorical``
decision feeding the template's splits. ``transposed_input`` changes the PrimFunc (a transpose
stage), not only its schedule, so the workload fixes it to the untuned value and the trace
records it as a one-candidate decision (``decode`` then gives a full config).

A task's workload is the untuned kernel's: its rows padded to the untuned ``lanes * chunk``;
the candidates are the lane and chunk counts whose product divides that row length, so a tuned
kernel does the untuned kernel's work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, List, Optional, Tuple

import tvm
from tvm import s_tir

from ...support.target import is_gpu
from ..template import (KernelArguments, decode, generator, module, pow2_up_to, sample,
                        task_name)
from .knobs import LinearConfig, heuristic_linear_config, tuned_row_multiple, untuned_linear_config
from .operator import SUM_BLOCK, sparse_linear_primfunc
from .schedule_cpu import LinearCpuConfig, schedule_linear_cpu
from .schedule_gpu import LinearGpuConfig, schedule_linear_gpu
from .weight_format import SparseLinearWeight


def tuned_row_length(batch: int, weight: SparseLinearWeight, target) -> int:
    """The padded row length of the layer's workload (the untuned kernel's)."""
    return weight.ell_width(tuned_row_multiple(batch, weight, target))


def linear_workload(batch: int, weight: SparseLinearWeight, bias: bool, relu: bool,
                    target) -> tvm.IRModule:
    """The unscheduled kernel a tuning record of this layer is keyed on."""
    gpu = is_gpu(target)
    return module(sparse_linear_primfunc(
        batch, weight, tuned_row_length(batch, weight, target), bias, relu, output_block=gpu,
        transposed_input=gpu and heuristic_linear_config(batch, weight, target).transposed_input))


def linear_candidates(batch: int, weight: SparseLinearWeight, target) -> Dict[str, Tuple[int, ...]]:
    """Candidate values of each integer knob (in the config's field order)."""
    out_features = weight.shape[0]
    if not is_gpu(target):
        return {"features": tuple(v for v in (4, 8, 16, 32, 64) if v <= max(4, out_features))}
    length = tuned_row_length(batch, weight, target)
    return {"lanes": tuple(v for v in (1, 2, 4, 8, 16, 32) if length % v == 0),
            "rows": pow2_up_to(out_features, 32),
            "batch_tile": pow2_up_to(batch, 16),
            "chunk": tuple(v for v in (1, 2, 4, 8) if length % v == 0)}


def _fits(batch: int, weight: SparseLinearWeight, target, config: LinearConfig) -> bool:
    """Whether a config's rows split the workload's padded row length."""
    if not is_gpu(target):
        return True
    return tuned_row_length(batch, weight, target) % config.row_multiple == 0


def linear_design_spaces(batch: int, weight: SparseLinearWeight, target,
                         fixed: Optional[LinearConfig] = None):
    """``fn(sch) -> [Schedule]``: one design space, or with ``fixed`` (a ``representable``
    config) one schedule whose decisions are that config's."""
    candidates = linear_candidates(batch, weight, target)
    transposed = heuristic_linear_config(batch, weight, target).transposed_input \
        if is_gpu(target) else None

    def spaces(sch: s_tir.Schedule) -> List[s_tir.Schedule]:
        space = sch.copy()
        knobs = {name: sample(space, values, getattr(fixed, name) if fixed else None)
                 for name, values in candidates.items()}
        if transposed is None:
            schedule_linear_cpu(space, LinearCpuConfig(**knobs))
        else:
            space.annotate(space.get_sblock(SUM_BLOCK), "escoin.transposed_input",
                           sample(space, [int(transposed)]))
            schedule_linear_gpu(space, LinearGpuConfig(**knobs, transposed_input=transposed))
        return [space]

    return spaces


def linear_representable(batch: int, weight: SparseLinearWeight, target,
                         config: LinearConfig) -> bool:
    """Whether ``config`` is a point of the layer's tuning space."""
    candidates = linear_candidates(batch, weight, target)
    if is_gpu(target) and config.transposed_input != \
            heuristic_linear_config(batch, weight, target).transposed_input:
        return False
    return all(getattr(config, n) in v for n, v in candidates.items()) and \
        _fits(batch, weight, target, config)


def decode_linear_config(trace: s_tir.Trace, target) -> LinearConfig:
    """The config a trace of ``linear_design_spaces`` chose."""
    return decode(trace, LinearGpuConfig if is_gpu(target) else LinearCpuConfig)


@dataclass
class LinearTask:
    """One sparse linear kernel to tune: a layer's batch, weight and epilogue. Layers with the
    same workload share the task. The interface every family's task has (the convolution's ``Task``), which the jobs use."""

    batch: int
    weight: SparseLinearWeight
    bias: bool
    relu: bool
    target: tvm.target.Target
    layers: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return task_name(self.layers)

    @property
    def dtype(self) -> str:
        return self.weight.dtype

    @cached_property
    def workload(self) -> tvm.IRModule:
        return linear_workload(self.batch, self.weight, self.bias, self.relu, self.target)

    def arguments(self, seed: int = 0):
        columns, values = self.weight.to_ell(tuned_row_multiple(self.batch, self.weight,
                                                                self.target))
        return KernelArguments({1: columns, 2: values}, seed)

    def untuned_config(self) -> LinearConfig:
        return untuned_linear_config(self.batch, self.weight, self.target)

    def representable(self, config: LinearConfig) -> bool:
        return linear_representable(self.batch, self.weight, self.target, config)

    def design_spaces(self, fixed: Optional[LinearConfig] = None):
        return linear_design_spaces(self.batch, self.weight, self.target, fixed)

    def decode(self, trace: s_tir.Trace) -> LinearConfig:
        return decode_linear_config(trace, self.target)

    def space_generator(self, seed: int = 0):
        return generator(self.design_spaces(), self.target, seed)
