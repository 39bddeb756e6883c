"""MetaSchedule TuneContexts, made without parsing TVM's tensor intrinsics."""
from __future__ import annotations

import sys
import types
from contextlib import contextmanager

from tvm.s_tir import meta_schedule as ms


@contextmanager
def without_tensor_intrinsics():
    """MetaSchedule's TuneContext imports tvm.s_tir.tensor_intrin, which parses every tensor
    intrinsic's TVMScript (about 55 s on this repository's CPU machine, the first task of every
    job); the Escoin design spaces tensorize nothing. An empty module stands in while the
    context is made, and is taken out again so that a later real import still happens."""
    name = "tvm.s_tir.tensor_intrin"
    stub = name not in sys.modules
    if stub:
        sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        if stub:
            del sys.modules[name]


def tune_context(mod, target, **options) -> ms.TuneContext:
    """``ms.TuneContext(mod=mod, target=target, num_threads="physical", **options)``."""
    with without_tensor_intrinsics():
        return ms.TuneContext(mod=mod, target=target, num_threads="physical", **options)
