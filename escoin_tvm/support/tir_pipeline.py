"""TVM's TIR pipeline (``s_tir``), with two fixes for kernels that keep tensor-core fragments
in ``warp`` memory; every build of escoin-tvm asks for it by ``NAME``.

TVM 0.27's ``LowerWarpMemory`` lowers only the first ``warp`` allocation of a statement
sequence (it stops at it), and a kernel with an A, a B and a C fragment has three; the others
stay whole-warp arrays in every thread (spilled, wrong in size, slow). The pass is repeated
here until none is left. It also reads how a fragment is spread over the lanes from the index
of a store, which TVM's common-subexpression elimination, run before it, turns into an opaque
variable: for a module with ``warp`` fragments (its PrimFuncs marked by ``with_warp_fragments``)
that elimination is left to nvcc, and copies into shared memory in a software pipeline's
asynchronous stage become ``cp.async`` (plain loads in a kernel where TVM 0.27 cannot make
them so: ``_lower_with_async_copies``). Other PrimFuncs (a model's other kernels, in the same
module) build as with ``s_tir``.
"""
from __future__ import annotations

import tvm
import tvm_ffi
from tvm import tirx
from tvm.tirx import compilation_pipeline

NAME = "escoin_s_tir"
ATTR = "escoin.warp_fragments"
_MAX_ROUNDS = 64


def with_warp_fragments(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` with each PrimFunc marked as keeping fragments in ``warp`` memory (what the
    pipeline looks for: TVM has no cheap walk over TIR from Python)."""
    return tvm.IRModule({gv: (f.with_attr(ATTR, True) if isinstance(f, tirx.PrimFunc) else f)
                         for gv, f in mod.functions.items()})


def _marked(func) -> bool:
    return isinstance(func, tirx.PrimFunc) and func.attrs is not None and ATTR in func.attrs


@tvm.transform.module_pass(opt_level=0, name="escoin.LowerAllWarpMemory")
def _lower_all_warp_memory(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    for _ in range(_MAX_ROUNDS):
        lowered = tirx.transform.LowerWarpMemory()(mod)
        if tvm_ffi.structural_equal(lowered, mod):
            break
        mod = lowered
    return mod


# TVM 0.27's InjectPTXAsyncCopy fails on a copy whose source StorageRewrite retyped into
# vector elements (a padded input only ever read in 16-byte vectors): docs/findings.md
_ASYNC_COPY_LANES = "load->indices[0].ty().lanes() == store->indices[0].ty().lanes()"


def _lower_with_async_copies(main, mod: tvm.IRModule, opt_level: int, config: dict):
    """``main(mod)`` with copies into shared memory made ``cp.async``; a PrimFunc whose copies
    TVM cannot make so is lowered alone with plain loads (its software pipeline kept), the
    others still with ``cp.async``."""
    def lower(module, use_async):
        with tvm.transform.PassContext(opt_level=opt_level,
                                       config={**config, "tirx.use_async_copy": use_async}):
            return main(module)

    try:
        return lower(mod, True)
    except tvm.error.InternalError as err:
        if _ASYNC_COPY_LANES not in str(err):
            raise
    merged = None
    for gv, func in mod.functions.items():
        alone = tvm.IRModule({gv: func}, attrs=mod.attrs)
        try:
            lowered = lower(alone, True)
        except tvm.error.InternalError as err:
            if _ASYNC_COPY_LANES not in str(err):
                raise
            lowered = lower(alone, False)
        if merged is None:
            merged = lowered
        else:
            merged.update(lowered)
    return merged


def _pipeline():
    main, finalize_host, finalize_device = compilation_pipeline.get_tir_pipeline("s_tir")

    @tvm.transform.module_pass(opt_level=0, name="escoin.STirPipeline")
    def lower(mod: tvm.IRModule, ctx) -> tvm.IRModule:
        marked = [gv for gv, f in mod.functions.items() if _marked(f)]
        if not marked:
            return main(mod)
        # the marked PrimFuncs alone without CSE; a model's other kernels keep it
        fragments = tvm.IRModule({gv: mod[gv] for gv in marked}, attrs=mod.attrs)
        rest = tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in marked},
                            attrs=mod.attrs)
        config = {**dict(ctx.config), "tirx.disable_cse_tir": True,
                  "tirx.use_async_copy": True}
        lowered = _lower_with_async_copies(main, fragments, ctx.opt_level, config)
        if not rest.functions:
            return lowered
        merged = main(rest)
        merged.update(lowered)
        return merged

    def device_passes():
        return tvm.transform.Sequential([_lower_all_warp_memory, finalize_device()])

    return lower, finalize_host, device_passes


compilation_pipeline.PIPELINE_MAP[NAME] = _pipeline
