"""The sparse linear family: a pruned fully-connected layer as CSR rows walked by a warp each,
on CUDA cores (and on the CPU).

Files in pipeline order, as in every family: ``weight_format.py``, ``operator.py`` (the tensor
expression), ``schedule_cpu.py`` and ``schedule_gpu.py``, ``knobs.py`` (untuned defaults,
shipped records, the tuned work), ``tuning_space.py`` (the template's MetaSchedule space and
task), ``kernel.py`` (the built, callable kernel), ``eligibility.py`` (which layers it takes)
and ``lowering.py`` (the kernel in a Relax module and in a torch.compile graph). ``FAMILY`` is
what the dispatch paths register.
"""
from ..family import KernelFamily
from . import lowering
from .eligibility import MAX_LINEAR_BATCH, problem

FAMILY = KernelFamily(name="escoin", op="linear", problem=problem,
                      relax_call=lowering.relax_call, torch_kernel=lowering.torch_kernel)

__all__ = ["FAMILY", "MAX_LINEAR_BATCH", "problem"]
