"""Which convolutions the Escoin convolution kernels implement: batched NCHW input and OIHW
weight of one supported dtype, of known sizes (a pure check; ``kernels/eligibility.py``)."""
from __future__ import annotations

from typing import Optional

from ..eligibility import LayerFacts, dtype_problem

LAYOUTS = ("NCHW", "OIHW", "NCHW")


def problem(facts: LayerFacts) -> Optional[str]:
    """Why the family's kernels cannot compute this convolution, or None."""
    if facts.layouts != LAYOUTS:
        return f"layout {'/'.join(facts.layouts)} (Escoin kernels are NCHW/OIHW)"
    if facts.input_shape is not None and len(facts.input_shape) != 4:
        return "input is not a batched NCHW tensor"
    reason = dtype_problem(facts)
    if reason is None and facts.input_shape is None:
        reason = "input shape is not static"
    return reason
