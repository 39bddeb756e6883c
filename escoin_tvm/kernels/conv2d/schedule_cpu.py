"""CPU (LLVM) schedule: parallel over (image, output channel), vectorised over output columns.

For each tile of output rows the non-zeros of the channel are walked once, and each (offset, value)
pair updates ``rows`` vectors of output columns held in registers: with stride 1 the inputs it
reads are contiguous, so the inner loop is a vector load and a vector FMA.

Knob values are ints, or MetaSchedule random variables when the tuner drives the template.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from ...errors import ArgumentError
from .schedule_common import blocks, write_back


@dataclass(frozen=True)
class CpuConfig:
    vector: int = 8  # output columns per vector register tile
    rows: int = 1  # output rows per register tile (each non-zero is loaded once for all of them)

    def validate(self) -> "CpuConfig":
        for name in ("vector", "rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArgumentError(f"CpuConfig.{name} must be an int >= 1, got {value!r}")
        return self


def schedule_cpu(sch: s_tir.Schedule, config: CpuConfig) -> s_tir.Schedule:
    pad, conv, epilogue = blocks(sch)
    n, k, y, x, j = sch.get_loops(conv)
    yo, yi = sch.split(y, [None, config.rows])
    xo, xi = sch.split(x, [None, config.vector])
    sch.reorder(n, k, yo, xo, j, yi, xi)
    write_back(sch, conv, xo, epilogue)
    sch.unroll(yi)
    sch.parallel(sch.fuse(n, k))
    sch.vectorize(xi)
    sch.decompose_reduction(conv, j)
    if pad is not None:
        sch.parallel(sch.get_loops(pad)[0])
    return sch
