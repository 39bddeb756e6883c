"""Compiling many Escoin kernels together: a few CUDA compiles instead of one per kernel.

Each kernel's CUDA compile (nvrtc or nvcc, through TVM's ``tvm_callback_cuda_compile``) pays
a fixed cost (starting the compiler, parsing the CUDA headers TVM's source includes) that is
most of a kernel's build; kernels compiled as one module pay it once. So a caller that knows
several kernels ahead, such as the torch.compile backend with a graph's candidate layers,
creates them inside

    with compile_together():
        kernels = [build_sparse_conv2d(...), ...]

and they are compiled when the block ends, in modules of up to ``PART_KERNELS`` kernels per
target compiled in parallel threads, each kernel then calling its own function of its part's
module. A single module for many kernels compiles slower than the same kernels in a few parts:
53 ResNet-50 kernels took 29.5 s as one module and 13.4 s as 7 parts in 7 threads on the
H200's host (docs/findings.md, "The torch.compile backend in a graph"). A kernel used before
that compiles alone on first use (``CompiledKernel``), and if a part's compile fails each of
its kernels is compiled alone, so that the one at fault raises its own error: deferring
changes when kernels compile, never what they compute. Outside the block nothing is deferred.
"""
from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Callable, Dict, List, Optional

import tvm

from ..support import tir_pipeline
from .cuda_cache import cached_cuda_compiles

_PENDING = threading.local()  # this thread's kernels waiting for their joint compile
PART_KERNELS = 8  # kernels per module of a joint compile; the parts compile in parallel threads


def compile_module(mod: tvm.IRModule, target):
    """``tvm.compile(mod)`` for ``target`` with the target in scope (it names the architecture
    of the CUDA binaries, which the disk cache of ``cuda_cache`` keys by)."""
    with target, cached_cuda_compiles():
        return tvm.compile(mod, target=target, tir_pipeline=tir_pipeline.NAME)


def defer(kernel) -> bool:
    """Queues ``kernel`` (a ``CompiledKernel`` not yet compiled) for the enclosing
    ``compile_together``; False, and nothing queued, outside one."""
    pending = getattr(_PENDING, "kernels", None)
    if pending is None:
        return False
    pending.append(kernel)
    return True


@contextlib.contextmanager
def compile_together(on_compiled: Optional[Callable[[int, int], None]] = None):
    """Kernels created in this thread inside the block are compiled together when it ends
    (a nested block joins the outer one, and its ``on_compiled`` is not called). If the block
    raises, its kernels are left to compile alone on first use. ``on_compiled(count, total)``
    is called in this thread each time a part of ``count`` of the ``total`` kernels to compile
    has compiled (a progress bar's ticks)."""
    if getattr(_PENDING, "kernels", None) is not None:
        yield
        return
    _PENDING.kernels = []
    try:
        yield
        kernels = _PENDING.kernels
    finally:
        _PENDING.kernels = None
    compile_kernels(kernels, on_compiled)


def joint_module(kernels: List):
    """(one IRModule holding every kernel's function, each function's name in it): kernel i's
    ``main`` as ``escoin_kernel_<i>``."""
    names = [f"escoin_kernel_{i}" for i in range(len(kernels))]
    mod = tvm.IRModule({name: kernel.module["main"].with_attr("global_symbol", name)
                        for name, kernel in zip(names, kernels)})
    return mod, names


def parts(kernels: List, size: Optional[int] = None) -> List[List]:
    """``kernels`` in the fewest consecutive runs of at most ``size`` (``PART_KERNELS``), of
    nearly equal length."""
    count = -(-len(kernels) // (size or PART_KERNELS))
    step, extra = divmod(len(kernels), max(count, 1))
    out, start = [], 0
    for i in range(count):
        end = start + step + (i < extra)
        out.append(kernels[start:end])
        start = end
    return out


def compile_kernels(kernels: List, on_compiled: Optional[Callable[[int, int], None]] = None
                    ) -> None:
    """Compiles the kernels not yet compiled: per target, in parts of up to ``PART_KERNELS``
    (``parts``), one module per part, the parts in parallel threads (``compile_part``), calling
    ``on_compiled(count, total)`` in this thread as each part finishes. An error of a kernel
    is raised once every part has finished."""
    groups: Dict[str, List] = {}
    for kernel in kernels:
        if not kernel.compiled:
            groups.setdefault(str(kernel.target), []).append(kernel)
    work = [part for group in groups.values() for part in parts(group)]
    total = sum(len(part) for part in work)
    done = on_compiled or (lambda count, total: None)
    if len(work) <= 1:
        for part in work:
            compile_part(part)
            done(len(part), total)
        return
    with ThreadPoolExecutor(min(len(work), os.cpu_count() or 1)) as pool:
        futures = {pool.submit(compile_part, part): len(part) for part in work}
        for future in as_completed(futures):
            future.result()
            done(futures[future], total)


def compile_part(kernels: List) -> None:
    """Compiles kernels of one target as one module: each kernel's function gets a name of its
    own (``escoin_kernel_<i>``) and the kernel binds to it. When the joint compile fails, each
    kernel is compiled alone (the one at fault raises)."""
    if len(kernels) == 1:
        kernels[0].compile()
        return
    mod, names = joint_module(kernels)
    try:
        executable = compile_module(mod, kernels[0].target)
    except Exception:  # noqa: BLE001 - the kernel at fault raises its own error below
        for kernel in kernels:
            kernel.compile()
        return
    for name, kernel in zip(names, kernels):
        kernel.bind(executable, name)
