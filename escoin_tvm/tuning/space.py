"""The Escoin schedule templates as MetaSchedule design spaces.

Every integer knob of ``GpuConfig`` / ``CpuConfig`` becomes a ``sample_categorical`` decision
whose random variable feeds the template's splits directly, so MetaSchedule can replay a trace
with other decisions (evolutionary search) and the trace records the chosen knobs. Knobs that
change the program's structure (weight staging, unrolling) cannot be replayed that way: each
value is its own design space, and is recorded as a one-candidate decision so that a trace
decodes back into a full config (``decode_config``).

A task's workload is the untuned kernel's (``kernel.tuned_extents``: its images and rows rounded
up to the untuned register tile, its rows padded to the untuned chunk), fixed whatever the knobs,
so that records key on it; the candidates are the tiles and chunks that divide that work.
"""
from __future__ import annotations

import random
from dataclasses import fields
from typing import Dict, List, Optional, Sequence, Tuple, Union

import tvm
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms
from tvm.ir.utils import derived_object

from ..kernel import tuned_extents, untuned_config
from ..operator import CONV_BLOCK, Epilogue, sparse_conv2d_primfunc
from ..schedule import CpuConfig, GpuConfig, schedule_cpu, schedule_gpu
from ..schedule.gpu import blocks_images
from ..spec import Conv2dSpec
from ..target import is_gpu

SAMPLE = "SampleCategorical"
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
    func = sparse_conv2d_primfunc(spec, row_length, epilogue,
                                  tuned_extents(spec, target, dtype)[0], dtype,
                                  point.chunk if point else None)
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _pow2_up_to(limit: int, cap: int) -> Tuple[int, ...]:
    """1, 2, 4, ... up to the first power of two >= limit (at most cap)."""
    values, p = [1], 1
    while p < limit and p < cap:
        p *= 2
        values.append(p)
    return tuple(values)


def _dividing(values: Sequence[int], extent: int) -> Tuple[int, ...]:
    return tuple(v for v in values if extent % v == 0)


def gpu_candidates(spec: Conv2dSpec, target, dtype: str = "float32") -> Dict[str, Tuple[int, ...]]:
    """Candidate values of each integer GpuConfig knob for this layer (in GpuConfig order)."""
    (images, rows), multiple = tuned_extents(spec, target, dtype)
    return {
        "threads_x": tuple(v for v in (8, 16, 32) if v <= max(8, _pow2_up_to(spec.out_w, 32)[-1])),
        "threads_y": _pow2_up_to(spec.out_h, 16),
        # up to 32 thread groups of output channels: a block's channels share each input line
        # it pulls into L1 (docs/findings.md, "More output channels per block")
        "channel_threads": _pow2_up_to(spec.out_per_group, 32),
        "channel_steps": (1, 2, 4),
        "rows_per_thread": _dividing(_pow2_up_to(spec.out_h, TUNED_TILE), rows),
        "channels_per_thread": (1, 2, 4, 8),
        "images_per_thread": _dividing(_pow2_up_to(spec.batch, TUNED_TILE), images),
        "chunk": _dividing((8, 16, 32), multiple),
    }


def cpu_candidates(spec: Conv2dSpec, target, dtype: str = "float32") -> Dict[str, Tuple[int, ...]]:
    (_, rows), _ = tuned_extents(spec, target, dtype)
    return {"vector": tuple(v for v in (4, 8, 16) if v <= max(4, _pow2_up_to(spec.out_w, 16)[-1])),
            "rows": _dividing(_pow2_up_to(spec.out_h, TUNED_TILE), rows)}


GPU_STRUCTURES = ({"stage_weights": True, "unroll": True, "block_images": False},
                  {"stage_weights": False, "unroll": True, "block_images": False},
                  {"stage_weights": True, "unroll": False, "block_images": False})
# Images blocked in the input copy (one vector load per tap): a space per images-per-thread
# value above 1, because the copy's layout needs that value as a constant (the other integer
# knobs stay random variables); with one image it is the plain kernel.
BLOCKED_STRUCTURE = {"stage_weights": True, "unroll": True, "block_images": True}


def _sample(sch: s_tir.Schedule, values: Sequence[int], chosen: Optional[int] = None):
    return sch.sample_categorical(list(values), [1.0 / len(values)] * len(values),
                                  None if chosen is None else list(values).index(chosen))


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
                knobs[name] = _sample(space, values, getattr(fixed, name) if fixed else None)
                if name in structure:  # a constant for the template, the decision recorded
                    space.annotate(conv, f"escoin.{name}", knobs[name])
                    knobs[name] = structure[name]
            for name, value in structure.items():
                if name in candidates:
                    continue
                # Recorded for decode_config; the annotation keeps the decision alive when
                # MetaSchedule drops unused instructions from the traces it stores.
                space.annotate(conv, f"escoin.{name}", _sample(space, [int(value)]))
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


def decode(trace: s_tir.Trace, cls):
    """The ``cls`` config (a template's knobs dataclass) whose fields a trace's categorical
    decisions chose, in field order."""
    values = [int(inst.attrs[0][int(trace.decisions[inst])])
              for inst in trace.insts if inst.kind.name == SAMPLE]
    names = [f.name for f in fields(cls)]
    if cls is GpuConfig and len(names) - 2 <= len(values) < len(names):
        # the structures without half sums record no such decision, and records from before
        # block_images none of either: the knobs they leave out are off
        names = names[:len(values)]
    if len(values) != len(names):
        raise ValueError(f"the trace has {len(values)} knob decisions, {cls.__name__} has "
                         f"{len(names)}: it was not made by this version's template")
    types = {f.name: f.type for f in fields(cls)}
    return cls(**{n: bool(v) if types[n] in (bool, "bool") else v
                  for n, v in zip(names, values)}).validate()


@derived_object
class MutateKnob(ms.mutator.PyMutator):
    """Evolutionary search's mutation for the template: one knob to another candidate.
    (MetaSchedule's own mutators only know its tile-size and unroll decisions.)"""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace: s_tir.Trace, _rand_state) -> s_tir.Trace:
        knobs = [inst for inst in trace.insts
                 if inst.kind.name == SAMPLE and len(inst.attrs[0]) > 1]
        if not knobs:
            return None
        inst = self.rng.choice(knobs)
        current = int(trace.decisions[inst])
        choice = self.rng.choice([i for i in range(len(inst.attrs[0])) if i != current])
        return trace.with_decision(inst, choice, True)

    def clone(self) -> "MutateKnob":
        return MutateKnob(self.rng.randrange(2**31))


def space_generator(spec: Conv2dSpec, target, seed: int = 0,
                    dtype: str = "float32") -> ms.space_generator.ScheduleFn:
    return generator(design_spaces(spec, target, dtype=dtype), target, seed)


def generator(spaces, target, seed: int = 0) -> ms.space_generator.ScheduleFn:
    """MetaSchedule's space generator for a template's ``spaces`` function: no schedule
    rules, the knob mutator, and on CUDA the checks that drop configs the GPU cannot run."""
    postprocs = ([ms.postproc.DisallowDynamicLoop(), ms.postproc.VerifyGPUCode()]
                 if is_gpu(target) else [])
    return ms.space_generator.ScheduleFn(spaces, sch_rules=[], postprocs=postprocs,
                                         mutator_probs={MutateKnob(seed): 1.0})
