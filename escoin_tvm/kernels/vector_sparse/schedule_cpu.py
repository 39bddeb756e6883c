"""The vector-sparse convolution's CPU (LLVM) schedule: correctness, not speed (the family is
for tensor cores). Parallel over images and blocks, the block's channels in registers."""
from __future__ import annotations

from tvm import s_tir

from .operator import PAD_BLOCK, SUM_BLOCK


def schedule_cpu(sch: s_tir.Schedule) -> s_tir.Schedule:
    block = sch.get_sblock(SUM_BLOCK)
    n, b, g, y, x, t = sch.get_loops(block)
    sch.reorder(n, b, y, x, t, g)
    sch.parallel(sch.fuse(n, b))
    sch.parallel(sch.get_loops(sch.get_sblock(PAD_BLOCK))[0])
    return sch
