"""Kernel families and what they share.

Each family has its folder (``conv2d/``, ``linear/``, ``vector_sparse/``) with the same files
in pipeline order: weight format, operator (the tensor expression), schedules (CPU, GPU), knobs
(untuned defaults, shipped records, extents), tuning space and task, kernel (the built, callable
kernel and its ``build_*``), eligibility (which layers it takes) and lowering (the kernel in a
Relax module and in a torch.compile graph). Beside them, shared by all and naming none:
``csr.py`` (the CSR base of the weight formats), ``conv_spec.py`` (a convolution's geometry),
``padded_input.py`` and ``epilogue.py`` (what the direct convolutions' operators share),
``knob_table.py`` (the shipped tables' file format), ``template.py`` (knobs as MetaSchedule
decisions), ``eligibility.py`` and ``family.py`` (the facts and the threshold the dispatch paths
share, and what a family is to them), ``compiled_kernel.py`` (the callable kernel),
``build_together.py`` and ``cuda_cache.py`` (compiling many kernels fast).
"""
