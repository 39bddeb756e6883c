"""The tensor-core template as a MetaSchedule design space, and its tuning task.

The knobs are ``TensorCoreConfig``'s, each a ``sample_categorical`` decision in field order
(``template.py``): ``warps`` and ``fragments`` (the M tile) and ``k_fragments`` (taps per
shared-memory stage) feed the schedule's splits as random variables, so evolutionary search
replays a trace with other values; ``image_block`` and ``stages`` change the program's
structure (the input's layout, the software pipeline), so ``image_block`` is fixed to the
workload's and each ``stages`` value is a design space of its own, both recorded as
one-candidate decisions so that a trace decodes into a full config.

A task's workload is the untuned kernel's work (``work_config``: its pixels rounded up to the
untuned M tile and image block, its tap lists padded to the untuned taps per stage), fixed
whatever the knobs, so that records key on it and a tuned kernel never does more work than the
untuned one. The candidates are the tiles that divide that work, chosen so that every
combination of them does: the M tiles are powers of two whose largest product divides the
rows of an image block, and the taps per stage divide the padded lists. A tensorized tile must
not be cut by a predicate, so a combination that did not divide would not be a schedule at
all; what does not fit the GPU (shared memory, threads) is dropped by ``VerifyGPUCode``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Dict, List, Optional, Tuple

import tvm
from tvm import s_tir

from ...support import tir_pipeline
from ...support.target import is_gpu
from ..conv_spec import Conv2dSpec
from ..epilogue import Epilogue
from ..template import (KernelArguments, decode, dividing, generator, module, sample,
                        task_name)
from .operator import (EPILOGUE_BLOCK, padded_pixels, vector_sparse_conv2d_primfunc,
                       vector_sparse_linear_primfunc)
from .schedule_gpu import MMA, TensorCoreConfig, default_config, schedule_gpu
from .weight_format import VectorSparseWeight

TILE_FACTORS = (1, 2, 4)  # warps per block, and 16-row tiles per warp
K_FRAGMENTS = (1, 2, 4)  # 16-tap steps per stage
STAGES = (1, 2)
STRUCTURAL = ("image_block", "stages")  # constants of a design space, not random variables


def work_config(spec: Conv2dSpec, width: int) -> TensorCoreConfig:
    """The config whose work a task's workload is: the untuned one for tap lists of ``width``
    (padded or not: padding them to its taps per stage leaves it the same)."""
    return default_config(spec, width)


def workload(spec: Conv2dSpec, weight: VectorSparseWeight, epilogue: Epilogue,
             linear: bool = False) -> tvm.IRModule:
    """The unscheduled kernel a tuning record is keyed on: ``weight``'s geometry (blocks, tap
    lists already padded to the work's taps per stage, channels in place or not) on the work
    of ``work_config``, marked for the warp-fragment pipeline (``support.tir_pipeline``).
    ``linear``: a linear layer's kernel, ``spec`` its ``operator.linear_spec``."""
    work = work_config(spec, weight.offsets.shape[1])
    width = weight.offsets.shape[1]
    if linear:
        func = vector_sparse_linear_primfunc(spec.height, spec.in_channels, spec.out_channels,
                                             weight.blocks, width, weight.group, epilogue,
                                             weight.dtype, work.m_tile, weight.in_place)
    else:
        func = vector_sparse_conv2d_primfunc(spec, weight.blocks, width, weight.group,
                                             epilogue, weight.dtype, work.m_tile,
                                             work.image_block, weight.in_place)
    return tir_pipeline.with_warp_fragments(module(func))


def _largest_power_of_two_dividing(n: int, cap: int) -> int:
    p = 1
    while p < cap and n % (2 * p) == 0:
        p *= 2
    return p


def candidates(spec: Conv2dSpec, width: int) -> Dict[str, Tuple[int, ...]]:
    """Candidate values of each knob, in ``TensorCoreConfig`` order, for tap lists of
    ``width`` (padded to the work's taps per stage). Warps and fragments grow from the work's
    own (the untuned point is always a candidate) while their largest product divides the
    16-row tiles of an image block."""
    work = work_config(spec, width)
    tiles = padded_pixels(spec, work.m_tile, work.image_block) * work.image_block // MMA
    room = _largest_power_of_two_dividing(tiles, max(TILE_FACTORS) ** 2) // (
        work.warps * work.fragments)
    warps = min(max(TILE_FACTORS), work.warps * room)
    fragments = min(max(TILE_FACTORS), work.fragments * room * work.warps // warps)
    return {"warps": tuple(v for v in TILE_FACTORS if v <= warps),
            "fragments": tuple(v for v in TILE_FACTORS if v <= fragments),
            "k_fragments": dividing(K_FRAGMENTS, width // MMA),
            "image_block": (work.image_block,),
            "stages": STAGES}


def design_spaces(spec: Conv2dSpec, width: int, dtype: str, in_place: bool,
                  fixed: Optional[TensorCoreConfig] = None, linear: bool = False):
    """``fn(sch) -> [Schedule]`` for ms.space_generator.ScheduleFn: a design space per
    ``stages`` value. With ``fixed`` (a ``representable`` config), the one schedule whose
    decisions are that config's. ``linear``: a linear layer's kernel."""
    options = candidates(spec, width)
    stages = options["stages"] if fixed is None else (fixed.stages,)

    def spaces(sch: s_tir.Schedule) -> List[s_tir.Schedule]:
        result = []
        for stage_count in stages:
            space = sch.copy()
            epilogue = space.get_sblock(EPILOGUE_BLOCK)
            knobs = {}
            for name in (f.name for f in fields(TensorCoreConfig)):
                values = (stage_count,) if name == "stages" else options[name]
                knobs[name] = sample(space, values, getattr(fixed, name) if fixed else None)
                if name in STRUCTURAL:
                    # a constant for the schedule; the annotation keeps the decision in the
                    # traces MetaSchedule stores (it drops unused instructions)
                    space.annotate(epilogue, f"escoin.{name}", knobs[name])
                    knobs[name] = values[0]
            schedule_gpu(space, spec, TensorCoreConfig(**knobs), dtype, in_place, linear)
            result.append(space)
        return result

    return spaces


def representable(spec: Conv2dSpec, width: int, config: TensorCoreConfig) -> bool:
    """Whether ``config`` is a point of the tuning space of ``spec`` with tap lists of
    ``width`` (padded to the work's taps per stage)."""
    return all(getattr(config, name) in values
               for name, values in candidates(spec, width).items())


def decode_config(trace: s_tir.Trace) -> TensorCoreConfig:
    """The config a trace of ``design_spaces`` chose."""
    return decode(trace, TensorCoreConfig)


@dataclass
class VectorSparseTask:
    """One tensor-core kernel to tune: a convolution geometry (a linear layer's
    ``linear_spec``, with ``linear``), its epilogue and its weight's geometry (blocks, padded
    tap lists, channel order). Layers that share all of them share the task (and its records).
    The interface every family's task has (``tuning.tasks``)."""

    spec: Conv2dSpec
    epilogue: Epilogue
    weight: VectorSparseWeight  # the first layer's, padded to the work's taps per stage
    target: tvm.target.Target
    layers: List[str] = field(default_factory=list)
    linear: bool = False

    def __post_init__(self):
        if not is_gpu(self.target):
            raise ValueError("the vector-sparse kernels are tuned on a GPU target only")

    @property
    def name(self) -> str:
        return task_name(self.layers)

    @property
    def dtype(self) -> str:
        return self.weight.dtype

    @property
    def width(self) -> int:
        return self.weight.offsets.shape[1]

    @cached_property
    def workload(self) -> tvm.IRModule:
        return workload(self.spec, self.weight, self.epilogue, self.linear)

    def arguments(self, seed: int = 0):
        """The weight's offsets, values and slots at their places (the input and the
        epilogue's bias and residual are random)."""
        return KernelArguments({1: self.weight.offsets, 2: self.weight.values,
                                3: self.weight.slots}, seed)

    def untuned_config(self) -> TensorCoreConfig:
        return work_config(self.spec, self.width)

    def representable(self, config: TensorCoreConfig) -> bool:
        return representable(self.spec, self.width, config)

    def design_spaces(self, fixed: Optional[TensorCoreConfig] = None):
        return design_spaces(self.spec, self.width, self.dtype, self.weight.in_place, fixed,
                             self.linear)

    def decode(self, trace: s_tir.Trace) -> TensorCoreConfig:
        return decode_config(trace)

    def space_generator(self, seed: int = 0):
        return generator(self.design_spaces(), self.target, seed)
