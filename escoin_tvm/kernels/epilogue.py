"""What the families' fused epilogues share: which steps follow the sum (``Epilogue``), and a
ReLU that keeps NaN (they compute in float32)."""
from dataclasses import dataclass

from tvm import tirx


@dataclass(frozen=True)
class Epilogue:
    """What is fused after the sum: a per-channel bias, a residual input added elementwise (a
    ResNet shortcut), then a ReLU; each optional, applied in that order."""

    bias: bool = False
    relu: bool = False
    residual: bool = False

    @property
    def any(self) -> bool:
        return self.bias or self.relu or self.residual

    @property
    def name(self) -> str:
        return "+".join(p for p, on in (("bias", self.bias), ("residual", self.residual),
                                        ("relu", self.relu)) if on)


def fused_relu(value):
    """ReLU of a float32 value as PyTorch computes it: negatives to 0, NaN kept (``max(NaN,
    0)`` is 0 in CUDA's ``fmaxf`` and LLVM's ``maxnum``, so the comparison is written out)."""
    zero = tirx.const(0.0, "float32")
    return tirx.Select(value < zero, zero, value)
