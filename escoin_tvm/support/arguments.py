"""Checks of the plain arguments users pass (numbers), with errors that name the argument."""
from __future__ import annotations

import math
import numbers

from ..errors import ArgumentError


def fraction(value, name: str) -> float:
    """``value`` as a float in [0, 1] (a Python, numpy or torch real scalar), else an
    ArgumentError naming ``name``: a sparsity or a threshold."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or \
            math.isnan(float(value)) or not 0.0 <= float(value) <= 1.0:
        raise ArgumentError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)
