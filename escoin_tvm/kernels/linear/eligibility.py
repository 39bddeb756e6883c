"""Which fully-connected layers the sparse linear kernels implement: a (batch, features) input
of at most ``MAX_LINEAR_BATCH`` rows and one supported dtype (a half product computed to
float32 counts as half: the kernel sums in float32 anyway); a pure check
(``kernels/eligibility.py``)."""
from __future__ import annotations

from typing import Optional

from ..eligibility import MAX_LINEAR_BATCH, LayerFacts, dtype_problem


def problem(facts: LayerFacts) -> Optional[str]:
    """Why the family's kernels cannot compute this layer, or None."""
    if facts.input_shape is None:
        return "input shape is not static"
    if len(facts.input_shape) != 2 or len(facts.weight_shape) != 2:
        return "input is not a (batch, features) matrix"
    reason = dtype_problem(facts, wider=("float32",))
    if reason is None and facts.input_shape[0] > MAX_LINEAR_BATCH:
        reason = (f"batch {facts.input_shape[0]} > {MAX_LINEAR_BATCH}: a dense GEMM reuses the "
                  "weight more")
    return reason
