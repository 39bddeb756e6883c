"""What the families' fused epilogues share: which steps follow the sum (``Epilogue``), the
stage that applies them (``epilogue_stage``), and a ReLU that keeps NaN (in float32)."""
from dataclasses import dataclass

from tvm import te, tirx


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


def epilogue_stage(output_shape, sum_at, epilogue: "Epilogue", dtype: str,
                   name: str = "epilogue"):
    """The output of a convolution whose float32 sum is ``sum_at(n, k, y, x)`` (or of a linear
    layer, ``sum_at(row, k)``: any output whose axis 1 is the channel): plus a per-channel
    ``bias`` (float32), plus a ``residual`` of the output's shape and dtype, then ReLU, as
    ``epilogue`` asks, rounded once to ``dtype``. Returns (the placeholders it reads, bias then
    residual, those present; the output)."""
    bias = te.placeholder((output_shape[1],), "float32", name="bias") if epilogue.bias else None
    residual = te.placeholder(output_shape, dtype, name="residual") if epilogue.residual \
        else None

    def finish(*index):
        value = sum_at(*index)
        if bias is not None:
            value = value + bias[index[1]]
        if residual is not None:
            value = value + residual[index].astype("float32")
        if epilogue.relu:
            value = fused_relu(value)
        return value.astype(dtype)

    return [t for t in (bias, residual) if t is not None], te.compute(output_shape, finish,
                                                                    name=name)


def fused_relu(value):
    """ReLU of a float32 value as PyTorch computes it: negatives to 0, NaN kept (``max(NaN,
    0)`` is 0 in CUDA's ``fmaxf`` and LLVM's ``maxnum``, so the comparison is written out)."""
    zero = tirx.const(0.0, "float32")
    return tirx.Select(value < zero, zero, value)
