"""The vector-sparse convolution's CPU (LLVM) schedule: correctness, not speed (the family is
for tensor cores). The gather is inlined into the sum; parallel over blocks and images, the
block's channels innermost."""
from __future__ import annotations

from tvm import s_tir

from .operator import FLAT_PAD_BLOCK, GATHER_BLOCK, PAD_BLOCK, SUM_BLOCK


def schedule_cpu(sch: s_tir.Schedule) -> s_tir.Schedule:
    sch.compute_inline(sch.get_sblock(FLAT_PAD_BLOCK))
    sch.compute_inline(sch.get_sblock(GATHER_BLOCK))
    block = sch.get_sblock(SUM_BLOCK)
    b, n, p, g, t = sch.get_loops(block)
    sch.reorder(b, n, p, t, g)
    sch.parallel(sch.fuse(b, n))
    sch.parallel(sch.get_loops(sch.get_sblock(PAD_BLOCK))[0])
    return sch
