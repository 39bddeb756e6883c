"""The vector-sparse family: output channels in blocks of 8 or 16 that share their non-zero
taps, so that each block is a dense product of the gathered input and its values, the shape
tensor cores run. ``prune.vectors`` prunes weights into this shape.

Files in pipeline order, as in every family: ``weight_format.py``, ``operator.py`` (the tensor
expression), ``schedule_cpu.py``, ``schedule_gpu.py`` (the gathered GEMM on ``mma.sync``, its
knobs ``TensorCoreConfig``, with ``tensor_intrin.py`` and ``schedule_epilogue.py`` for the
padding and epilogue kernels) and ``kernel.py``. Its tuning space, eligibility and lowering
(and so its ``FAMILY`` and registration with the dispatch paths) come next.
"""
