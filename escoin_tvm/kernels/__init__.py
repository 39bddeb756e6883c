"""Kernel families and what they share.

Each family has its folder (``conv2d/``, ``linear/``) with the same files in pipeline order:
weight format, operator (the tensor expression), schedules (CPU, GPU), knobs (untuned defaults,
shipped records, extents), tuning space and task, kernel (the built, callable kernel and its
``build_sparse_*``) and eligibility (which layers it takes). Beside them, shared by all and
naming none: ``csr.py`` (the CSR base of the weight formats), ``knob_table.py`` (the shipped
tables' file format), ``template.py`` (knobs as MetaSchedule decisions), ``eligibility.py``
(the facts and the threshold the dispatch paths share), ``compiled_kernel.py`` (the callable
kernel), ``build_together.py`` and ``cuda_cache.py`` (compiling many kernels fast).
"""
