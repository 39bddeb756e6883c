"""The Escoin convolution family: a pruned convolution computed directly from Escoin's CSR
weights, on CUDA cores (and on the CPU).

Files in pipeline order, as in every family (the convolution's geometry, ``Conv2dSpec``, is
shared: ``kernels/conv_spec.py``): ``weight_format.py``, ``operator.py`` (the tensor
expression), ``schedule_cpu.py`` and ``schedule_gpu.py`` (with ``schedule_common.py`` and the
``packed_half.py`` intrinsic),
``knobs.py`` (untuned defaults, shipped records, extents), ``tuning_space.py`` (the template's
MetaSchedule space and task), ``kernel.py`` (the built, callable kernel) and
``eligibility.py`` (which layers it takes) and ``lowering.py`` (the kernel in a Relax module
and in a torch.compile graph). ``FAMILY`` is what the dispatch paths register.
"""
from ..family import KernelFamily
from . import lowering
from .eligibility import problem

FAMILY = KernelFamily(name="escoin", op="conv2d", problem=problem,
                      relax_call=lowering.relax_call, torch_kernel=lowering.torch_kernel)

__all__ = ["FAMILY", "problem"]
