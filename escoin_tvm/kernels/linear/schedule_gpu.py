"""The sparse linear layer's GPU schedule (CUDA), a template whose knobs tuning searches.

Mapping: a thread block owns ``rows`` output features (threadIdx.y); the non-zeros of a
feature's row are split over ``lanes`` threads of a warp (threadIdx.x), each walking ``chunk``
consecutive ones per step (the loads of values and column indices coalesce and can be
vectorised); each thread keeps ``batch_tile`` accumulators, one per input row, so that every
weight it loads serves the whole tile from registers; the lanes' partial sums are combined with
warp shuffles (an ``rfactor`` and TVM's cross-thread reduction), then the epilogue (bias, ReLU,
the cast of a half-precision output) runs in the same kernel. Batch 1 is a matrix-vector
product streaming the weight; batch 2-64 reuses each weight ``batch_tile`` times.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from ...errors import ArgumentError
from ..template import optional_block
from .operator import EPILOGUE_BLOCK, SUM_BLOCK, TRANSPOSE_BLOCK

MAX_THREADS = 1024


@dataclass(frozen=True)
class LinearGpuConfig:
    lanes: int = 32  # threads over a row's non-zeros (a power of two up to 32)
    rows: int = 4  # output features per thread block (threadIdx.y)
    batch_tile: int = 1  # input rows per thread (register tile)
    chunk: int = 4  # consecutive non-zeros per lane per step; rows padded to lanes * chunk
    # read a transposed (in_features, batch) copy of x, written by a first kernel: a non-zero's
    # batch_tile inputs become adjacent instead of one row of x apart
    transposed_input: bool = False

    def validate(self) -> "LinearGpuConfig":
        for name in ("lanes", "rows", "batch_tile", "chunk"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArgumentError(f"LinearGpuConfig.{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.transposed_input, bool):
            raise ArgumentError(f"LinearGpuConfig.transposed_input must be a bool, got "
                                f"{self.transposed_input!r}")
        if self.lanes > 32 or self.lanes & (self.lanes - 1):
            raise ArgumentError(f"LinearGpuConfig.lanes must be a power of two up to 32, got "
                                f"{self.lanes}")
        if self.lanes * self.rows > MAX_THREADS:
            raise ArgumentError(f"LinearGpuConfig asks for {self.lanes * self.rows} threads per "
                                f"block (max {MAX_THREADS})")
        return self

    @property
    def row_multiple(self) -> int:
        return self.lanes * self.chunk


def schedule_linear_gpu(sch: s_tir.Schedule, config: LinearGpuConfig) -> s_tir.Schedule:
    """The GPU mapping of the module docstring, on a PrimFunc whose rows are padded to
    ``config.row_multiple``."""
    total = sch.get_sblock(SUM_BLOCK)
    epilogue = optional_block(sch, EPILOGUE_BLOCK)
    transpose = optional_block(sch, TRANSPOSE_BLOCK)
    if transpose is not None:  # its own kernel, a thread per element, writes coalesced
        block, thread = sch.split(sch.fuse(*sch.get_loops(transpose)), [None, 256])
        sch.bind(block, "blockIdx.x")
        sch.bind(thread, "threadIdx.x")
    m, n, j = sch.get_loops(total)
    j_step, j_lane, j_chunk = sch.split(j, [None, config.lanes, config.chunk])
    n_block, n_row = sch.split(n, [None, config.rows])
    m_tile, m_reg = sch.split(m, [None, config.batch_tile])
    sch.reorder(n_block, n_row, j_lane, m_tile, j_step, j_chunk, m_reg)
    partial = sch.rfactor(j_lane, 0)
    n_block, n_row, j_lane, m_tile, j_step, j_chunk, m_reg = sch.get_loops(partial)
    sch.bind(n_block, "blockIdx.x")
    sch.bind(n_row, "threadIdx.y")
    sch.bind(j_lane, "threadIdx.x")
    sch.set_scope(partial, 0, "local")
    sch.decompose_reduction(partial, j_step)
    for loop in sch.get_loops(partial)[-2:]:
        sch.unroll(loop)
    # the lanes' partial sums, combined across the warp
    sch.reverse_compute_at(total, n_row, preserve_unit_loops=True)
    lane, batch, feature = sch.get_loops(total)[2:]
    sch.reorder(batch, feature, lane)
    sch.bind(lane, "threadIdx.x")
    if epilogue is not None:
        sch.set_scope(total, 0, "local")
        sch.reverse_compute_at(epilogue, n_row, preserve_unit_loops=True)
        batch_loop = sch.get_loops(epilogue)[-2]
        _, lane_loop = sch.split(batch_loop, [None, config.lanes])
        sch.bind(lane_loop, "threadIdx.x")
    return sch
