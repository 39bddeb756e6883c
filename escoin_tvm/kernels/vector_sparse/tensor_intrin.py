"""The tensor-core intrinsics the vector-sparse GPU schedule tensorizes with, for float16 and
bfloat16: a 16 x 16 tile from shared memory into a warp's fragment (``ldmatrix``) and a 16 x 16
x 16 product accumulated in float32 (two ``mma.sync`` m16n8k16), and the fill and store of the
float32 accumulator (``FILL``, ``STORE``). TVM 0.27 has them for float16 only
(``tvm.s_tir.tensor_intrin.cuda``), and importing that module parses every tensor intrinsic
TVM has (about a minute on a CPU); the fill and store here are plain loops over each lane's
registers, which the warp lowering turns into register moves (TVM's call a code generator that
needs that module).

The fragments live in ``warp`` memory, which ``support.tir_pipeline`` lowers to registers. Each
load first stores a zero into its fragment at ``lane * 8``: that store is what shows TVM's warp
lowering how the fragment is spread over the lanes (its ``ldmatrix`` form carries that in an
offset the lowering does not read), and the load overwrites it (nvcc drops it).
"""
from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T
from tvm.tirx import convert

WARP = 32
LOCAL = 8  # elements of a 16 x 16 fragment per lane
FILL = "escoin_mma_fill_16x16_f32"
STORE = "escoin_mma_store_16x16_f32_global"
DTYPES = {"float16": "fp16", "bfloat16": "bf16"}


def fragment_layout(i, j):
    """(lane, register) of element (i, j) of a 16 x 16 tile in a warp's fragment: the layout
    ``ldmatrix`` loads and ``mma.sync`` m16n8k16 reads and writes."""
    return 4 * (i % 8) + (j % 8) // 2, 4 * (j // 8) + (i // 8) * 2 + (j % 2)


def _element(lane, local):
    """The inverse of ``fragment_layout``: the (i, j) a lane's register holds."""
    return 8 * (local % 4 // 2) + lane // 4, 8 * (local // 4) + (lane % 4) * 2 + local % 2



def load_name(dtype: str, operand: str) -> str:
    """The intrinsic that loads a 16 x 16 ``dtype`` tile stored [k, m] (``operand`` "a": the
    gathered input, taps x pixels) or [k, n] ("b": the values, taps x channels) from shared
    memory into the fragment ``mma_name`` takes it in."""
    return f"escoin_ldmatrix_{dtype}_{operand}"


def mma_name(dtype: str) -> str:
    """The intrinsic ``C[i, j] += A[k, i] * B[k, j]`` over 16 x 16 x 16 with A, B in ``dtype``
    fragments (A's holding [k, i]) and C in float32."""
    return f"escoin_mma_{dtype}_f32_trans_a"


def _load(dtype: str, operand: str):
    # both tiles are stored [k, *] and ldmatrix transposes them (mma.sync takes A in [m, k]
    # and B in [n, k] 8 x 8 pieces); each lane names one row of the piece that fills its
    # operand's registers in order: A's pieces are (k, m) = (0-7, 0-7), (0-7, 8-15),
    # (8-15, 0-7), (8-15, 8-15); B's (k, n) = (0-7, 0-7), (8-15, 0-7), (0-7, 8-15),
    # (8-15, 8-15)
    if operand == "a":
        def offset(tx, stride):
            return stride * 8 * (tx // 16) + stride * (tx % 8) + 8 * ((tx % 16) // 8)
    else:
        def offset(tx, stride):
            return stride * (tx % 16) + 8 * (tx // 16)

    @T.prim_func(s_tir=True)
    def desc(warp_handle: T.handle, shared_handle: T.handle) -> None:
        shared = T.match_buffer(shared_handle, (16, 16), dtype, align=64, offset_factor=16,
                                scope="shared")
        warp = T.match_buffer(warp_handle, (WARP, LOCAL), dtype, align=64, offset_factor=16,
                              scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:16, 0:16])
            T.writes(warp[0:WARP, 0:LOCAL])
            for ax0, ax1 in T.grid(16, 16):
                with T.sblock("shared_warp"):
                    v0, v1 = T.axis.remap("SS", [ax0, ax1])
                    T.reads(shared[v0, v1])
                    lane, local = T.meta_var(fragment_layout(v0, v1))
                    T.writes(warp[lane, local])
                    warp[lane, local] = shared[v0, v1]

    @T.prim_func(s_tir=True)
    def impl(warp_handle: T.handle, shared_handle: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        shared = T.match_buffer(shared_handle, (16, 16), dtype, align=64, offset_factor=16,
                                scope="shared", strides=[s0, s1])
        warp = T.match_buffer(warp_handle, (WARP, LOCAL), dtype, align=64, offset_factor=16,
                              scope="warp")
        with T.sblock("root"):
            T.reads(shared[0:16, 0:16])
            T.writes(warp[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                warp[tx, 0] = T.Cast(dtype, 0)  # the lane layout, for the warp lowering
                T.evaluate(T.ptx_legacy.ldmatrix(
                    True, 4, ".b16", warp.data, warp.elem_offset + convert(LOCAL) * tx,
                    shared.access_ptr("r"), offset(tx, s0), dtype=dtype))

    return desc, impl


def _mma(dtype: str):
    ptx = DTYPES[dtype]

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, LOCAL), dtype, align=64, offset_factor=16, scope="warp")
        B = T.match_buffer(b, (WARP, LOCAL), dtype, align=64, offset_factor=16, scope="warp")
        C = T.match_buffer(c, (WARP, LOCAL), "float32", align=64, offset_factor=16,
                           scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:WARP, 0:LOCAL], B[0:WARP, 0:LOCAL])
            T.writes(C[0:WARP, 0:LOCAL])
            for i, j, k in T.grid(16, 16, 16):
                with T.sblock("C"):
                    vi, vj, vk = T.axis.remap("SSR", [i, j, k])
                    lane_c, local_c = T.meta_var(fragment_layout(vi, vj))
                    lane_a, local_a = T.meta_var(fragment_layout(vk, vi))
                    lane_b, local_b = T.meta_var(fragment_layout(vk, vj))
                    T.reads(C[lane_c, local_c], A[lane_a, local_a], B[lane_b, local_b])
                    T.writes(C[lane_c, local_c])
                    C[lane_c, local_c] += T.Cast("float32", A[lane_a, local_a]) * \
                        T.Cast("float32", B[lane_b, local_b])

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (WARP, LOCAL), dtype, align=64, offset_factor=16, scope="warp")
        B = T.match_buffer(b, (WARP, LOCAL), dtype, align=64, offset_factor=16, scope="warp")
        C = T.match_buffer(c, (WARP, LOCAL), "float32", align=64, offset_factor=16,
                           scope="warp")
        with T.sblock("root"):
            T.reads(C[0:WARP, 0:LOCAL], A[0:WARP, 0:LOCAL], B[0:WARP, 0:LOCAL])
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for half in T.unroll(2):  # the two 8-column halves of N
                    T.evaluate(T.ptx_legacy.mma(
                        "m16n8k16", "row", "col", ptx, ptx, "fp32",
                        A.data, A.elem_offset + tx * convert(LOCAL),
                        B.data, B.elem_offset + tx * convert(LOCAL) + half * (LOCAL // 2),
                        C.data, C.elem_offset + tx * convert(LOCAL) + half * (LOCAL // 2),
                        False, dtype="float32"))

    return desc, impl


def _fill():
    @T.prim_func(s_tir=True)
    def desc(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, LOCAL), "float32", scope="warp")
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:LOCAL])
            for i, j in T.grid(16, 16):
                with T.sblock("C_warp"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    lane, local = T.meta_var(fragment_layout(vi, vj))
                    T.reads()
                    T.writes(C[lane, local])
                    C[lane, local] = T.float32(0)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, (WARP, LOCAL), "float32", scope="warp", offset_factor=1)
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:WARP, 0:LOCAL])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for local in T.serial(LOCAL):
                    C[tx, local] = T.float32(0)

    return desc, impl


def _store():
    @T.prim_func(s_tir=True)
    def desc(a: T.handle, c: T.handle) -> None:
        C_warp = T.match_buffer(a, (WARP, LOCAL), "float32", scope="warp")
        C = T.match_buffer(c, (16, 16), "float32", scope="global")
        with T.sblock("root"):
            T.reads(C_warp[0:WARP, 0:LOCAL])
            T.writes(C[0:16, 0:16])
            for i, j in T.grid(16, 16):
                with T.sblock("C_warp"):
                    vi, vj = T.axis.remap("SS", [i, j])
                    lane, local = T.meta_var(fragment_layout(vi, vj))
                    T.reads(C_warp[lane, local])
                    T.writes(C[vi, vj])
                    C[vi, vj] = C_warp[lane, local]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, c: T.handle) -> None:
        s0 = T.int32()
        s1 = T.int32()
        C_warp = T.match_buffer(a, (WARP, LOCAL), "float32", scope="warp", offset_factor=1)
        C = T.match_buffer(c, (16, 16), "float32", scope="global", offset_factor=1,
                           strides=[s0, s1])
        with T.sblock("root"):
            T.reads(C_warp[0:WARP, 0:LOCAL])
            T.writes(C[0:16, 0:16])
            for tx in T.thread_binding(0, WARP, "threadIdx.x"):
                for pair in T.serial(LOCAL // 2):  # a pair: adjacent columns, one store
                    for half in T.vectorized(2):
                        row, col = T.meta_var(_element(tx, pair * 2 + half))
                        C[row, col] = C_warp[tx, pair * 2 + half]

    return desc, impl


_registered = False


def register() -> None:
    """Registers the intrinsics with TVM, once per process (parsing their TVMScript takes
    seconds: done when a schedule first needs them, not on import)."""
    global _registered
    if _registered:
        return
    _registered = True
    TensorIntrin.register(FILL, *_fill(), override=True)
    TensorIntrin.register(STORE, *_store(), override=True)
    for dtype in DTYPES:
        for operand in ("a", "b"):
            TensorIntrin.register(load_name(dtype, operand), *_load(dtype, operand),
                                  override=True)
        TensorIntrin.register(mma_name(dtype), *_mma(dtype), override=True)
