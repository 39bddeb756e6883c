"""The sparse linear layer's CPU (LLVM) schedule: parallel over blocks of output features."""
from __future__ import annotations

from dataclasses import dataclass

from tvm import s_tir

from ...errors import ArgumentError
from ..template import optional_block
from .operator import EPILOGUE_BLOCK, SUM_BLOCK


@dataclass(frozen=True)
class LinearCpuConfig:
    features: int = 16  # output features per parallel task

    def validate(self) -> "LinearCpuConfig":
        if not isinstance(self.features, int) or self.features < 1:
            raise ArgumentError(f"LinearCpuConfig.features must be an int >= 1, got "
                                f"{self.features!r}")
        return self

    @property
    def row_multiple(self) -> int:
        return 1


def schedule_linear_cpu(sch: s_tir.Schedule, config: LinearCpuConfig) -> s_tir.Schedule:
    """Parallel over blocks of output features; each accumulates its input rows in registers
    while it walks its row's non-zeros."""
    total = sch.get_sblock(SUM_BLOCK)
    epilogue = optional_block(sch, EPILOGUE_BLOCK)
    m, n, j = sch.get_loops(total)
    n_task, n_in = sch.split(n, [None, config.features])
    sch.reorder(n_task, n_in, m, j)
    sch.parallel(n_task)
    if epilogue is not None:
        local = sch.cache_write(total, 0, "local")
        sch.reverse_compute_at(local, n_task, preserve_unit_loops=True)
        sch.reverse_compute_inline(epilogue)
    sch.decompose_reduction(total, j)
    return sch
