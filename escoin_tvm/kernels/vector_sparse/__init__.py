"""The vector-sparse family: output channels in blocks of 8 or 16 that share their non-zero
taps, so that each block is a dense product of the gathered input and its values, the shape
tensor cores run. ``prune.vectors`` prunes weights into this shape.

Files in pipeline order, as in every family: ``weight_format.py``, ``operator.py`` (the tensor
expression), ``schedule_cpu.py``, ``schedule_gpu.py`` (the gathered GEMM on ``mma.sync``, its
knobs ``TensorCoreConfig``, with ``tensor_intrin.py`` and ``schedule_epilogue.py`` for the
padding and epilogue kernels), ``kernel.py``, ``eligibility.py`` (which layers it takes) and
``lowering.py`` (the kernel in a Relax module and in a torch.compile graph), with
``tuning_space.py`` (the schedule's knobs as a MetaSchedule design space, and the tuning task).
``FAMILY`` is what the Relax pass and the backend register, ahead of the Escoin convolution
family.
"""
from ...tuning.log import before_reading
from ..family import KernelFamily
from . import lowering, tensor_intrin
from .eligibility import linear_problem, note, problem

before_reading(tensor_intrin.register)  # the tuning records' traces tensorize with them

FAMILY = KernelFamily(name="vector-sparse", op="conv2d", problem=problem,
                      relax_call=lowering.relax_call, torch_kernel=lowering.torch_kernel,
                      note=note, specialized=True)
# linear layers, as the 1 x 1 case whose pixels are the batch
LINEAR_FAMILY = KernelFamily(name="vector-sparse", op="linear", problem=linear_problem,
                             relax_call=lowering.linear_relax_call,
                             torch_kernel=lowering.linear_torch_kernel, note=note,
                             specialized=True)

__all__ = ["FAMILY", "LINEAR_FAMILY", "problem", "linear_problem"]
