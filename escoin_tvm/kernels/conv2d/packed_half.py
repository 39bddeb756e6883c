"""Packed two-lane half-precision FMAs for the GPU schedule, as TIR tensor intrinsics.

TVM's CUDA code generator writes the arithmetic of a vectorized half-precision loop lane by lane
(``r.x = a.x * b.x`` ...), and nvcc does not pair such scalar operations again. The intrinsic
here replaces a two-lane update ``acc[v] += w * x[v]`` by one ``__hfma2`` on ``half2`` (or
``nv_bfloat162``): one instruction for two FMAs, with no conversion to float32.

The inputs ``x`` are in registers (the schedule gathers them there first: a data-dependent
index would not match an intrinsic's description); the weight ``w`` comes from shared memory
(staged CSR rows) or global memory, so the intrinsic is registered once per dtype and weight
scope: ``intrinsic_name`` names the one to use.
"""
from __future__ import annotations

from tvm.backend.cuda.op import cuda_func_call
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

LANES = 2
DTYPES = ("float16", "bfloat16")
WEIGHT_SCOPES = ("shared", "global")


def intrinsic_name(dtype: str, weight_scope: str) -> str:
    return f"escoin_hfma2_{dtype}_{weight_scope}"


# CUDA's names of the scalar and the pair type, and of the scalar-to-pair broadcast
_CUDA_TYPES = {"float16": ("half", "half2", "__half2half2"),
               "bfloat16": ("nv_bfloat16", "nv_bfloat162", "__bfloat162bfloat162")}


def _intrinsic(dtype: str, weight_scope: str):
    scalar, pair, broadcast = _CUDA_TYPES[dtype]
    helper = f"escoin_hfma2_{dtype}"
    # a device function (TVM writes an extern call with a vector type lane by lane); inlined,
    # so the pointers into the register arrays stay registers
    source = (f"__forceinline__ __device__ void {helper}({scalar}* acc, {scalar} w, "
              f"{scalar}* x) {{\n"
              f"  *({pair}*)acc = __hfma2({broadcast}(w), *({pair}*)x, *({pair}*)acc);\n}}\n")

    @T.prim_func(s_tir=True)
    def desc(acc: T.Buffer((LANES,), dtype, offset_factor=1, scope="local"),
             w: T.Buffer((1,), dtype, offset_factor=1, scope=weight_scope),
             x: T.Buffer((LANES,), dtype, offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(acc[0:LANES], w[0], x[0:LANES])
            T.writes(acc[0:LANES])
            for v in range(LANES):
                with T.sblock("update"):
                    vv = T.axis.remap("S", [v])
                    acc[vv] = acc[vv] + w[0] * x[vv]

    @T.prim_func(s_tir=True)
    def impl(acc: T.Buffer((LANES,), dtype, offset_factor=1, scope="local"),
             w: T.Buffer((1,), dtype, offset_factor=1, scope=weight_scope),
             x: T.Buffer((LANES,), dtype, offset_factor=1, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(acc[0:LANES], w[0], x[0:LANES])
            T.writes(acc[0:LANES])
            T.evaluate(cuda_func_call(helper, acc.access_ptr("rw"), w[0], x.access_ptr("r"),
                                      source_code=source))

    return desc, impl


for _dtype in DTYPES:
    for _scope in WEIGHT_SCOPES:
        TensorIntrin.register(intrinsic_name(_dtype, _scope), *_intrinsic(_dtype, _scope),
                              override=True)
