"""Helpers shared by the CPU and GPU schedules."""
from tvm import s_tir

from ..template import optional_block
from .operator import CONV_BLOCK, EPILOGUE_BLOCK, PAD_BLOCK, PARTIAL_BLOCK, TAP_BLOCK


def blocks(sch: s_tir.Schedule):
    """(pad or None, conv, epilogue or None) block handles of a sparse_conv2d PrimFunc: a kernel
    that reads its input in place has no pad block, one with no epilogue no epilogue block."""
    return (optional_block(sch, PAD_BLOCK), sch.get_sblock(CONV_BLOCK),
            optional_block(sch, EPILOGUE_BLOCK))


def chunk_sum_blocks(sch: s_tir.Schedule):
    """(tap, partial_sum) block handles of a PrimFunc that sums chunks in half precision first
    (``half_chunk``), else None."""
    partial = optional_block(sch, PARTIAL_BLOCK)
    return None if partial is None else (sch.get_sblock(TAP_BLOCK), partial)


def read_index(sch: s_tir.Schedule, block, buffer_name: str) -> int:
    """Position of ``buffer_name`` among the block's reads (what cache_read asks for)."""
    names = [region.source.name for region in sch.get(block).reads]
    return names.index(buffer_name)


def write_back(sch: s_tir.Schedule, conv, loop, epilogue):
    """Accumulate in registers and write once under ``loop``, with the epilogue fused in.
    Returns the block that writes the output."""
    if epilogue is not None and \
            list(sch.get(conv).writes[0].source.shape) != list(sch.get(epilogue).writes[0].source.shape):
        # The sum runs over a larger domain than the output (operator.py, ``domain``): the
        # accumulators become the sum's own buffer, and the epilogue stores the part in bounds.
        sch.set_scope(conv, 0, "local")
        sch.reverse_compute_at(epilogue, loop, preserve_unit_loops=True)
        return epilogue
    local = sch.cache_write(conv, 0, "local")
    sch.reverse_compute_at(local, loop, preserve_unit_loops=True)
    if epilogue is not None:
        sch.reverse_compute_inline(epilogue)
    return local


def loops_below(sch: s_tir.Schedule, block, loop):
    """The loops of ``block`` nested inside ``loop`` (compute_at drops unit loops, so the count
    varies)."""
    loops = sch.get_loops(block)
    anchor = sch.get(loop)
    index = next(i for i, candidate in enumerate(loops) if sch.get(candidate).same_as(anchor))
    return loops[index + 1:]
