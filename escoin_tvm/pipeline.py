"""The Relax pipeline a compiled model goes through after the Escoin pass.

For CUDA it is TVM's default pipeline (relax/backend/cuda/pipeline.py) with one change: the
skinny-matmul rule is tried before dlight's default GPU rules, so that fully-connected layers at
batch 2-64 stream their weights instead of running as badly tiled GEMMs. Other targets get TVM's
default pipeline unchanged.
"""
from __future__ import annotations

import tvm
from tvm.relax.backend.cuda import pipeline as cuda_pipeline
from tvm.s_tir import dlight as dl

from .rules import SkinnyMatmul
from .support.target import is_gpu


def _cuda_legalize_passes(target):
    """cuda_pipeline.legalize_passes with the SkinnyMatmul rule applied just before dlight's
    defaults (which leave the functions it scheduled alone: they are marked scheduled)."""
    passes = cuda_pipeline.legalize_passes(target)
    defaults = next(i for i, p in enumerate(passes) if isinstance(p, dl.ApplyDefaultSchedule))
    return passes[:defaults] + [dl.ApplyDefaultSchedule(SkinnyMatmul())] + passes[defaults:]


def relax_pipeline(target: tvm.target.Target, stock: bool = False):
    """What ``tvm.compile(..., relax_pipeline=)`` gets; ``stock`` asks for TVM's own."""
    if stock or not is_gpu(target):
        return "default"

    @tvm.transform.module_pass(opt_level=0, name="escoin_cuda_pipeline")
    def _pipeline(mod: tvm.ir.IRModule, _ctx: tvm.transform.PassContext) -> tvm.ir.IRModule:
        with target:
            passes = (cuda_pipeline.library_dispatch_passes(target) + _cuda_legalize_passes(target)
                      + cuda_pipeline.dataflow_lower_passes(target)
                      + cuda_pipeline.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline
