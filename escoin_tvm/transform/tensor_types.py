"""What the pass reads off a Relax expression's type: its static shape and its dtype."""
from __future__ import annotations

from typing import Optional

import tvm


def static_shape(expr) -> Optional[tuple]:
    """The expression's shape as ints, or None when it is not a tensor of static shape."""
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def dtype(expr) -> str:
    """The expression's element type ("" when it is not a tensor)."""
    return str(getattr(expr.ty, "dtype", ""))
