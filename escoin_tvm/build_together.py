"""Compiling many Escoin kernels as one module: one CUDA compile instead of one per kernel.

Each kernel's CUDA compile (nvrtc or nvcc, through TVM's ``tvm_callback_cuda_compile``) pays
a fixed cost (starting the compiler, parsing the CUDA headers TVM's source includes) that is
most of a kernel's build; a model's kernels compiled as one module pay it once
(docs/findings.md, "Compile time"). So a caller that knows several kernels ahead, such as the
torch.compile backend with a graph's candidate layers, creates them inside

    with compile_together():
        kernels = [build_sparse_conv2d(...), ...]

and they are compiled when the block ends, one ``tvm.compile`` per target, each kernel then
calling its own function of the shared module. A kernel used before that compiles alone on
first use (``CompiledKernel``), and if the joint compile fails each kernel is compiled alone,
so that the one at fault raises its own error: deferring changes when kernels compile, never
what they compute. Outside the block nothing is deferred.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, List

import tvm

from .cuda_cache import cached_cuda_compiles

_PENDING = threading.local()  # this thread's kernels waiting for their joint compile


def compile_module(mod: tvm.IRModule, target):
    """``tvm.compile(mod)`` for ``target`` with the target in scope (it names the architecture
    of the CUDA binaries, which the disk cache of ``cuda_cache`` keys by)."""
    with target, cached_cuda_compiles():
        return tvm.compile(mod, target=target)


def defer(kernel) -> bool:
    """Queues ``kernel`` (a ``CompiledKernel`` not yet compiled) for the enclosing
    ``compile_together``; False, and nothing queued, outside one."""
    pending = getattr(_PENDING, "kernels", None)
    if pending is None:
        return False
    pending.append(kernel)
    return True


@contextlib.contextmanager
def compile_together():
    """Kernels created in this thread inside the block are compiled together when it ends
    (a nested block joins the outer one). If the block raises, its kernels are left to compile
    alone on first use."""
    if getattr(_PENDING, "kernels", None) is not None:
        yield
        return
    _PENDING.kernels = []
    try:
        yield
        kernels = _PENDING.kernels
    finally:
        _PENDING.kernels = None
    compile_kernels(kernels)


def joint_module(kernels: List):
    """(one IRModule holding every kernel's function, each function's name in it): kernel i's
    ``main`` as ``escoin_kernel_<i>``."""
    names = [f"escoin_kernel_{i}" for i in range(len(kernels))]
    mod = tvm.IRModule({name: kernel.module["main"].with_attr("global_symbol", name)
                        for name, kernel in zip(names, kernels)})
    return mod, names


def compile_kernels(kernels: List) -> None:
    """Compiles the kernels not yet compiled, one module per target: each kernel's function
    gets a name of its own (``escoin_kernel_<i>``) and the kernel binds to it. When a joint
    compile fails, each of its kernels is compiled alone (the one at fault raises)."""
    groups: Dict[str, List] = {}
    for kernel in kernels:
        if not kernel.compiled:
            groups.setdefault(str(kernel.target), []).append(kernel)
    for group in groups.values():
        if len(group) == 1:
            group[0].compile()
            continue
        mod, names = joint_module(group)
        try:
            executable = compile_module(mod, group[0].target)
        except Exception:  # noqa: BLE001 - the kernel at fault raises its own error below
            for kernel in group:
                kernel.compile()
            continue
        for name, kernel in zip(names, group):
            kernel.bind(executable, name)
