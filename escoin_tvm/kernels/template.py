"""What every kernel family's tuning template shares: knobs as MetaSchedule decisions.

A family's schedule is a template over a knobs dataclass (``GpuConfig`` ...). Each integer knob
becomes a ``sample_categorical`` decision whose random variable feeds the schedule directly,
so MetaSchedule can replay a trace with other decisions (evolutionary search) and the trace
records the chosen knobs; ``decode`` reads them back into the dataclass. ``MutateKnob`` is the
search's mutation, ``generator`` the space generator of a family's design spaces, and
``KernelArguments`` the measurement's arguments (the kernel's real index arrays, random data).
"""
from __future__ import annotations

import random
from dataclasses import fields
from typing import Sequence, Tuple

import numpy as np
import tvm
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..support.target import is_gpu

SAMPLE = "SampleCategorical"


def optional_block(sch: s_tir.Schedule, name: str):
    """The block ``name`` of a schedule, or None where the PrimFunc has none (a stage that
    only some of a template's kernels have: a padded copy, an epilogue)."""
    try:
        return sch.get_sblock(name)
    except s_tir.ScheduleError:
        return None


def pow2_up_to(limit: int, cap: int) -> Tuple[int, ...]:
    """1, 2, 4, ... up to the first power of two >= limit (at most cap)."""
    values, p = [1], 1
    while p < limit and p < cap:
        p *= 2
        values.append(p)
    return tuple(values)


def dividing(values: Sequence[int], extent: int) -> Tuple[int, ...]:
    """The ``values`` that divide ``extent``."""
    return tuple(v for v in values if extent % v == 0)


def sample(sch: s_tir.Schedule, values: Sequence[int], chosen=None):
    """A knob as a categorical decision over ``values`` (fixed to ``chosen`` if given)."""
    return sch.sample_categorical(list(values), [1.0 / len(values)] * len(values),
                                  None if chosen is None else list(values).index(chosen))


def decode(trace: s_tir.Trace, cls):
    """The ``cls`` config (a template's knobs dataclass) whose fields a trace's categorical
    decisions chose, in field order. A class may name, as ``OPTIONAL_TRAILING``, how many of
    its last fields traces of its earlier templates did not record (they are then off)."""
    values = [int(inst.attrs[0][int(trace.decisions[inst])])
              for inst in trace.insts if inst.kind.name == SAMPLE]
    names = [f.name for f in fields(cls)]
    optional = getattr(cls, "OPTIONAL_TRAILING", 0)
    if len(names) - optional <= len(values) < len(names):
        names = names[:len(values)]
    if len(values) != len(names):
        raise ValueError(f"the trace has {len(values)} knob decisions, {cls.__name__} has "
                         f"{len(names)}: it was not made by this version's template")
    types = {f.name: f.type for f in fields(cls)}
    return cls(**{n: bool(v) if types[n] in (bool, "bool") else v
                  for n, v in zip(names, values)}).validate()


@derived_object
class MutateKnob(ms.mutator.PyMutator):
    """Evolutionary search's mutation for a template: one knob to another candidate.
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


def generator(spaces, target, seed: int = 0) -> ms.space_generator.ScheduleFn:
    """MetaSchedule's space generator for a template's ``spaces`` function: no schedule
    rules, the knob mutator, and on CUDA the checks that drop configs the GPU cannot run."""
    postprocs = ([ms.postproc.DisallowDynamicLoop(), ms.postproc.VerifyGPUCode()]
                 if is_gpu(target) else [])
    return ms.space_generator.ScheduleFn(spaces, sch_rules=[], postprocs=postprocs,
                                         mutator_probs={MutateKnob(seed): 1.0})


def task_name(layers: Sequence[str]) -> str:
    """A tuning task's name: its first layer's, and how many more share it."""
    more = f" (+{len(layers) - 1})" if len(layers) > 1 else ""
    return layers[0] + more


def module(func) -> tvm.IRModule:
    """A task's workload: the unscheduled PrimFunc as the IRModule records are keyed on."""
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


class KernelArguments:
    """MetaSchedule's ``f_alloc_argument`` for a sparse kernel (local and RPC runners): the
    kernel's real index and value arrays at their argument positions (``fixed``), because
    random indices would read out of bounds; random data elsewhere. Pickled to the runner's
    worker process."""

    def __init__(self, fixed: dict, seed: int = 0):
        self.fixed, self.seed = fixed, seed

    def __call__(self, *args):  # (device, args_info, repeat) or (session, device, args_info, repeat)
        device, args_info, repeat = args[-3:]
        rng = np.random.default_rng(self.seed)
        result = []
        for _ in range(repeat):
            tensors = []
            for index, (_kind, dtype, shape) in enumerate(args_info):
                host = self.fixed.get(index)
                if host is None:
                    host = rng.standard_normal(shape).astype(dtype)
                tensor = tvm.runtime.empty(shape, dtype, device)
                tensor.copyfrom(host)
                tensors.append(tensor)
            result.append(tensors)
        return result
