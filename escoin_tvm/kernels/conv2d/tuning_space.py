"""The convolution's schedule templates as MetaSchedule design spaces, and its tuning task.

Every integer knob of ``GpuConfig`` / ``CpuConfig`` becomes a ``sample_categorical`` decision
whose random variable feeds the template's splits directly (``template.py``), so MetaSchedule
can replay a trace with other decisions (evolutionary search) and the trace records the chosen
knobs. Knobs that
change the program's structure (weight staging, unrolling) cannot be replayed that way: each
value is its own design space, and is recorded as a one-candidate decision so that a trace
decodes back into a full config (``decode_config``).

A task's workload is the untuned kernel's (``knobs.tuned_extents``: its images and rows rounded
up to the untuned register tile, its rows padded to the untuned chunk), fixed whatever the knobs,
so that records key on it; the candidates are the tiles and chunks that divide that work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, List, Optional, Tuple, Union

import tvm
from tvm import s_tir

from ...support.target import is_gpu
from ..template import (KernelArguments, decode, dividing, generator, module, pow2_up_to,
                        sample, task_name)
from .knobs import tuned_extents, untuned_config
from .operator import CONV_BLOCK, Epilogue, sparse_conv2d_primfunc, weight_arrays
from .schedule_cpu import CpuConfig, schedule_cpu
from .schedule_gpu import GpuConfig, blocks_images, schedule_gpu
from ..conv_spec import Conv2dSpec
from .weight_format import EscoinWeight

TUNED_TILE = 4  # the largest images / rows register tile the space tries


def tuned_row_length(weight, spec: Conv2dSpec, target) -> int:
    """The ELL row length of a tuned kernel, without building the arrays."""
    return weight.ell_width(tuned_extents(spec, target, weight.dtype)[1])


def half_sums_point(spec: Conv2dSpec, target, dtype: str = "float32") -> Optional[GpuConfig]:
    """The untuned config where it sums in half precision (``GpuConfig.half_sums``), else None.
    Such a kernel's workload has the chunk-sum stages for the untuned chunk, and its space is
    that one point for now: the other knobs would have to keep the blocks tiling the output
    exactly (``schedule.gpu.tiles_divide``), which the space's candidates do not guarantee."""
    if not is_gpu(target):
        return None
    config = untuned_config(spec, target, dtype)
    return config if config.half_sums else None


def workload(spec: Conv2dSpec, row_length: int, epilogue: Epilogue, target,
             dtype: str = "float32") -> tvm.IRModule:
    """The unscheduled kernel a tuning record is keyed on (its structural hash)."""
    point = half_sums_point(spec, target, dtype)
    return module(sparse_conv2d_primfunc(spec, row_length, epilogue,
                                         tuned_extents(spec, target, dtype)[0], dtype,
                                         point.chunk if point else None))


def gpu_candidates(spec: Conv2dSpec, target, dtype: str = "float32") -> Dict[str, Tuple[int, ...]]:
    """Candidate values of each integer GpuConfig knob for this layer (in GpuConfig order)."""
    (images, rows), multiple = tuned_extents(spec, target, dtype)
    return {
        "threads_x": tuple(v for v in (8, 16, 32) if v <= max(8, pow2_up_to(spec.out_w, 32)[-1])),
        "threads_y": pow2_up_to(spec.out_h, 16),
        # up to 32 thread groups of output channels: a block's channels share each input line
        # it pulls into L1 (docs/findings.md, "More output channels per block")
        "channel_threads": pow2_up_to(spec.out_per_group, 32),
        "channel_steps": (1, 2, 4),
        "rows_per_thread": dividing(pow2_up_to(spec.out_h, TUNED_TILE), rows),
        "channels_per_thread": (1, 2, 4, 8),
        "images_per_thread": dividing(pow2_up_to(spec.batch, TUNED_TILE), images),
        "chunk": dividing((8, 16, 32), multiple),
    }


def cpu_candidates(spec: Conv2dSpec, target, dtype: str = "float32") -> Dict[str, Tuple[int, ...]]:
    (_, rows), _ = tuned_extents(spec, target, dtype)
    return {"vector": tuple(v for v in (4, 8, 16) if v <= max(4, pow2_up_to(spec.out_w, 16)[-1])),
            "rows": dividing(pow2_up_to(spec.out_h, TUNED_TILE), rows)}


GPU_STRUCTURES = ({"stage_weights": True, "unroll": True, "block_images": False},
                  {"stage_weights": False, "unroll": True, "block_images": False},
                  {"stage_weights": True, "unroll": False, "block_images": False})
# Images blocked in the input copy (one vector load per tap): a space per images-per-thread
# value above 1, because the copy's layout needs that value as a constant (the other integer
# knobs stay random variables); with one image it is the plain kernel.
BLOCKED_STRUCTURE = {"stage_weights": True, "unroll": True, "block_images": True}


def _space(spec: Conv2dSpec, target, dtype: str = "float32"):
    """(candidate values per integer knob, structures) of the template on ``target``. A
    structure fixes knobs: its bools, and for blocked images the images per thread."""
    point = half_sums_point(spec, target, dtype)
    if point is not None:
        return ({name: (getattr(point, name),) for name in gpu_candidates(spec, target, dtype)},
                ({"stage_weights": point.stage_weights, "unroll": point.unroll,
                  "block_images": True, "images_per_thread": point.images_per_thread,
                  "half_sums": True},))
    if is_gpu(target):
        candidates = gpu_candidates(spec, target, dtype)
        blocked = tuple({**BLOCKED_STRUCTURE, "images_per_thread": v}
                        for v in candidates["images_per_thread"]
                        if blocks_images(spec, GpuConfig(images_per_thread=v, block_images=True)))
        return candidates, GPU_STRUCTURES + blocked
    return cpu_candidates(spec, target, dtype), ({},)


def _structure_candidates(candidates: Dict[str, Tuple[int, ...]],
                          structure: dict) -> Dict[str, Tuple[int, ...]]:
    """The integer knobs' candidates within one structure."""
    return {name: (structure[name],) if name in structure else values
            for name, values in candidates.items()}


def _has_structure(config, structure: dict) -> bool:
    return all(getattr(config, name) == value for name, value in structure.items())


def design_spaces(spec: Conv2dSpec, target, fixed: Optional[Union[GpuConfig, CpuConfig]] = None,
                  dtype: str = "float32"):
    """``fn(sch) -> [Schedule]`` for ms.space_generator.ScheduleFn. With ``fixed`` (a config
    whose knobs are all candidates: ``representable``), one schedule whose decisions are that
    config's (a tuning job's starting point)."""
    candidates, structures = _space(spec, target, dtype)
    if fixed is not None:
        structures = [st for st in structures if _has_structure(fixed, st)]

    def spaces(sch: s_tir.Schedule) -> List[s_tir.Schedule]:
        result = []
        for structure in structures:
            space = sch.copy()
            conv = space.get_sblock(CONV_BLOCK)
            knobs = {}
            for name, values in _structure_candidates(candidates, structure).items():
                knobs[name] = sample(space, values, getattr(fixed, name) if fixed else None)
                if name in structure:  # a constant for the template, the decision recorded
                    space.annotate(conv, f"escoin.{name}", knobs[name])
                    knobs[name] = structure[name]
            for name, value in structure.items():
                if name in candidates:
                    continue
                # Recorded for decode_config; the annotation keeps the decision alive when
                # MetaSchedule drops unused instructions from the traces it stores.
                space.annotate(conv, f"escoin.{name}", sample(space, [int(value)]))
            if is_gpu(target):
                schedule_gpu(space, GpuConfig(**{**knobs, **structure}))
            else:
                schedule_cpu(space, CpuConfig(**knobs))
            result.append(space)
        return result

    return spaces


def representable(spec: Conv2dSpec, target, config, dtype: str = "float32") -> bool:
    """Whether ``config`` is a point of the tuning space of ``spec`` on ``target``."""
    candidates, structures = _space(spec, target, dtype)
    return any(_has_structure(config, st) and
               all(getattr(config, name) in values
                   for name, values in _structure_candidates(candidates, st).items())
               for st in structures)


def decode_config(trace: s_tir.Trace, target) -> Union[GpuConfig, CpuConfig]:
    """The config a trace of ``design_spaces`` chose (its categorical decisions, in order)."""
    return decode(trace, GpuConfig if is_gpu(target) else CpuConfig)


def space_generator(spec: Conv2dSpec, target, seed: int = 0, dtype: str = "float32"):
    return generator(design_spaces(spec, target, dtype=dtype), target, seed)


@dataclass
class Task:
    """One kernel to tune for ``target``: a convolution geometry, its epilogue and its padded row
    length. Layers that share all three share the task (and its tuning records)."""

    spec: Conv2dSpec
    epilogue: Epilogue
    weight: EscoinWeight  # the first layer's: its ELL arrays are the measurement's arguments
    target: tvm.target.Target
    layers: List[str] = field(default_factory=list)

    @property
    def row_length(self) -> int:
        return tuned_row_length(self.weight, self.spec, self.target)

    @property
    def name(self) -> str:
        return task_name(self.layers)

    @cached_property
    def workload(self) -> tvm.IRModule:
        return workload(self.spec, self.row_length, self.epilogue, self.target, self.dtype)

    @property
    def dtype(self) -> str:
        return self.weight.dtype

    def arguments(self, seed: int = 0) -> "KernelArguments":
        multiple = tuned_extents(self.spec, self.target, self.dtype)[1]
        point = half_sums_point(self.spec, self.target, self.dtype)
        arrays = weight_arrays(self.spec, self.weight, multiple, point.chunk if point else None)
        return KernelArguments(dict(enumerate(arrays, 1)), seed)

    # the template's space for this task (every family's task has these methods)
    def untuned_config(self):
        return untuned_config(self.spec, self.target, self.dtype)

    def representable(self, config) -> bool:
        return representable(self.spec, self.target, config, self.dtype)

    def design_spaces(self, fixed=None):
        return design_spaces(self.spec, self.target, fixed=fixed, dtype=self.dtype)

    def decode(self, trace):
        return decode_config(trace, self.target)

    def space_generator(self, seed: int = 0):
        return space_generator(self.spec, self.target, seed, self.dtype)
