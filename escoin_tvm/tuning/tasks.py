"""What a tuning job needs of a task: the interface every kernel family's task has (each
family's ``tuning_space.py`` defines its own), so that the jobs name no family."""
from __future__ import annotations

from typing import List, Protocol

import tvm


class TuningTask(Protocol):
    """One kernel to tune: its workload (the unscheduled module its records are keyed on),
    the layers that share it, and its template's design space."""

    layers: List[str]
    target: tvm.target.Target

    @property
    def name(self) -> str: ...

    @property
    def workload(self) -> tvm.IRModule: ...

    def arguments(self, seed: int = 0):
        """MetaSchedule's ``f_alloc_argument`` for the measurements
        (``kernels.template.KernelArguments``)."""

    def untuned_config(self):
        """The knobs an untuned compile uses (the job's first trial)."""

    def representable(self, config) -> bool:
        """Whether ``config`` is a point of the task's space."""

    def design_spaces(self, fixed=None):
        """``fn(sch) -> [Schedule]``; with ``fixed``, the one schedule of those knobs."""

    def decode(self, trace):
        """The knobs a trace of the task's space chose."""

    def space_generator(self, seed: int = 0):
        """MetaSchedule's space generator of the task's template."""
