"""A GPU schedule for skinny matrix products: a few rows (the batch) times a large weight, as in
the fully-connected layers of a CNN at batch 2-64. A dlight rule, tried before dlight's own.

dlight's Matmul rule tiles ``x[M, K] @ W[K, N]`` like a square GEMM: at batch 16 AlexNet's first
FC layer gets 64 thread blocks on 132 SMs, with M padded to 32 and the weight read across its rows,
so the layers that should stream their weight at memory bandwidth run at a few percent of it
(dlight's GEMV rule takes only M = 1). Here it is streamed once, coalesced: each thread owns
``VEC`` adjacent output columns for all ``M`` rows (M x VEC accumulators in registers, every
weight value reused M times), a warp reads 32 x VEC contiguous weights per k, and K is split over
thread blocks (``rfactor``) until there are enough of them to keep the memory system busy; a
second small kernel sums the partial products and applies the fused epilogue (bias, ReLU).
"""
from __future__ import annotations

from typing import Optional

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.gpu.base import GPUScheduleRule

MAX_ROWS = 64  # above this dlight's tiled GEMM reuses the weight better
ROW_TILE = 16  # rows per register tile (16 x VEC accumulators per thread)
THREADS = 64  # threads per block of the main kernel, over output columns
BLOCKS = 1024  # about 8 blocks per SM of an H100: enough loads in flight to reach bandwidth
K_UNROLL = 4


def _point(region, var) -> bool:
    return int(region.extent) == 1 and region.min.same_as(var)


def _operands(block: tirx.SBlock):
    """Read positions (x, w) of ``C[m, n] += x[m, k] * w[k, n]``, else None."""
    m, n, k = (iv.var for iv in block.iter_vars)
    if len(block.reads) != 2 or len(block.writes) != 1:
        return None
    write = block.writes[0].region
    if len(write) != 2 or not (_point(write[0], m) and _point(write[1], n)):
        return None
    x = w = None
    for i, read in enumerate(block.reads):
        r = read.region
        if len(r) == 2 and _point(r[0], m) and _point(r[1], k):
            x = i
        elif len(r) == 2 and _point(r[0], k) and _point(r[1], n):
            w = i
    store = block.body
    if x is None or w is None or not isinstance(store, tirx.BufferStore) or \
            not isinstance(store.value, tirx.Add) or not isinstance(store.value.b, tirx.Mul):
        return None
    return x, w


def _k_split(rows: int, k: int, column_blocks: int) -> int:
    """Thread blocks over K: a power of two dividing K, up to BLOCKS blocks in all, and small
    enough that the partial sums (2 x split x rows x N floats) stay under a quarter of the
    weight's traffic (K x N floats)."""
    split = 1
    while (k % (split * 2) == 0 and column_blocks * split * 2 <= BLOCKS
           and 8 * split * 2 * rows <= k):
        split *= 2
    return split


class SkinnyMatmul(GPUScheduleRule):
    """``x[M, K] @ W[K, N]`` (+ elementwise epilogue) with 2 <= M <= MAX_ROWS."""

    def apply(self, func: tirx.PrimFunc, target, _tunable: bool) -> Optional[s_tir.Schedule]:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [info for info in infos if info.is_reduction()]
        if len(reductions) != 1 or reductions[0].dom_kind() != "SSR":
            return None
        main = reductions[0]
        if not all(isinstance(d, (int, tirx.IntImm)) for d in main.dom()):
            return None
        rows, cols, depth = (int(d) for d in main.dom())
        if not (2 <= rows <= MAX_ROWS and cols >= 256 and depth >= 256):
            return None
        operands = _operands(sch.get(main.block_rv))
        if operands is None:
            return None
        # producers fused in front (reshape, ...) or a non-elementwise tail: leave it to dlight
        if infos[0] is not main or not all(info.is_injective() for info in infos[1:]):
            return None
        epilogues = [info.block_rv for info in infos[1:]]
        try:
            for block in epilogues[:-1]:
                sch.compute_inline(block)
            return _schedule(sch, main, (rows, cols, depth), operands[1],
                             epilogues[-1] if epilogues else None)
        except s_tir.ScheduleError:
            return None


def _schedule(sch: s_tir.Schedule, main, shape, weight_read: int, epilogue):
    rows, cols, depth = shape
    block = main.block_rv
    m, n, k = (it.loop_rv for it in main.iters)
    vec = 4 if cols % 4 == 0 else 2 if cols % 2 == 0 else 1
    row_tiles = -(-rows // ROW_TILE)
    row_tile = -(-rows // row_tiles)
    column_blocks = -(-cols // (THREADS * vec))
    split = _k_split(rows, depth, column_blocks * row_tiles)
    unroll = K_UNROLL if (depth // split) % K_UNROLL == 0 else 1

    m_o, m_i = sch.split(m, [row_tiles, row_tile])
    n_o, n_t, n_v = sch.split(n, [None, THREADS, vec])
    k_o, k_i, k_u = sch.split(k, [split, None, unroll])
    sch.reorder(k_o, m_o, n_o, n_t, k_i, k_u, m_i, n_v)
    partial = sch.rfactor(k_o, 0) if split > 1 else block

    # Main kernel: one thread = VEC columns x row_tile rows, streaming its slice of K.
    sch.bind(sch.fuse(*sch.get_loops(partial)[:3]), "blockIdx.x")
    thread = sch.get_loops(partial)[1]
    sch.bind(thread, "threadIdx.x")
    k_i, k_u = sch.get_loops(partial)[2:4]
    local = sch.cache_write(partial, 0, "local")
    sch.reverse_compute_at(local, thread, preserve_unit_loops=True)
    # The weights of K_UNROLL steps are loaded together (float4 loads, all in flight at once).
    weights = sch.cache_read(partial, weight_read, "local")
    sch.compute_at(weights, k_i, preserve_unit_loops=True)
    sch.vectorize(sch.get_loops(weights)[-1])
    init = sch.decompose_reduction(partial, k_i)
    # Fully unrolled, or the accumulators live in local memory instead of registers.
    for loop in [k_u, *sch.get_loops(partial)[-2:], *sch.get_loops(init)[-2:],
                 *sch.get_loops(local)[-2:]]:
        sch.unroll(loop)

    # Second kernel (with a K split): sum the partials per output, then the epilogue.
    if split > 1:
        k2, m_o2, n_o2, n_t2, m_i2, n_v2 = sch.get_loops(block)
        sch.reorder(m_o2, m_i2, n_o2, n_t2, n_v2, k2)
        blocks_, threads = sch.split(sch.fuse(m_o2, m_i2, n_o2, n_t2, n_v2), [None, 128])
        sch.bind(blocks_, "blockIdx.x")
        sch.bind(threads, "threadIdx.x")
        total = sch.cache_write(block, 0, "local")
        sch.reverse_compute_at(total, threads, preserve_unit_loops=True)
        sch.decompose_reduction(block, k2)
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)
    return sch
