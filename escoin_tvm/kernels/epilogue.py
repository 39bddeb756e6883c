"""What the families' fused epilogues share (they compute in float32)."""
from tvm import tirx


def fused_relu(value):
    """ReLU of a float32 value as PyTorch computes it: negatives to 0, NaN kept (``max(NaN,
    0)`` is 0 in CUDA's ``fmaxf`` and LLVM's ``maxnum``, so the comparison is written out)."""
    zero = tirx.const(0.0, "float32")
    return tirx.Select(value < zero, zero, value)
