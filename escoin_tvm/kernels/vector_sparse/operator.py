"""The vector-sparse convolution as a TVM tensor expression: per block of output channels, a
product of the gathered input (pixels x the block's taps) and the block's values (taps x G).

    sums[n, b, g, y, x] = sum_t values[b, t, g] * padded[n, offsets[b, t] + y*sh*Wp + x*sw]
    out[n, k, y, x]     = epilogue( sums[n, slots[k] // G, slots[k] % G, y, x] )

For a GPU this is a gathered GEMM per block (M = pixels, N = G channels, K = the block's taps),
the shape tensor cores run; ``padded`` is the input zero-padded and flattened per image, with
the all-zero channel the padding taps point at (``padded_input``). The epilogue (bias, residual,
ReLU, in float32, rounded once to the dtype) also puts each channel back in its place.
"""
from __future__ import annotations

from tvm import te

from ...errors import ShapeError
from ..conv_spec import Conv2dSpec
from ..epilogue import Epilogue, epilogue_stage
from ..padded_input import padded_input

PAD_BLOCK = "data_pad"
SUM_BLOCK = "block_sums"
EPILOGUE_BLOCK = "epilogue"
INT32_MAX = 2**31 - 1


def vector_sparse_conv2d_te(spec: Conv2dSpec, blocks: int, width: int, group: int,
                            epilogue: Epilogue = Epilogue(), dtype: str = "float32"):
    """The TE graph for ``blocks`` blocks of ``group`` channels and tap lists of ``width``.
    Returns (inputs, output): inputs are ``[data, offsets, values, slots]``, then ``bias``
    (float32) and ``residual`` (output-shaped) when the epilogue has them."""
    n_, c_, _, _ = spec.input_shape
    hp, wp = spec.padded_h, spec.padded_w
    sh, sw = spec.stride
    flat = (c_ + 1) * hp * wp
    if n_ * flat > INT32_MAX or n_ * blocks * group * spec.out_h * spec.out_w > INT32_MAX:
        raise ShapeError(f"convolution {spec.input_shape} -> {spec.output_shape} is too large for "
                         "32-bit indexing; split the batch")
    data = te.placeholder(spec.input_shape, dtype, name="data")
    offsets = te.placeholder((blocks, width), "int32", name="offsets")
    values = te.placeholder((blocks, width, group), dtype, name="values")
    slots = te.placeholder((spec.out_channels,), "int32", name="slots")
    half = dtype != "float32"

    def wide(value):
        return value.astype("float32") if half else value

    source = padded_input(spec, data, n_, flat, PAD_BLOCK)
    t = te.reduce_axis((0, width), name="t")
    sums = te.compute((n_, blocks, group, spec.out_h, spec.out_w), lambda n, b, g, y, x: te.sum(
        wide(values[b, t, g]) * wide(source[n, offsets[b, t] + y * (sh * wp) + x * sw]),
        axis=t), name=SUM_BLOCK)
    extra, out = epilogue_stage(
        spec.output_shape, lambda n, k, y, x: sums[n, slots[k] // group, slots[k] % group, y, x],
        epilogue, dtype, EPILOGUE_BLOCK)
    return [data, offsets, values, slots] + extra, out


def vector_sparse_conv2d_primfunc(spec: Conv2dSpec, blocks: int, width: int, group: int,
                                  epilogue: Epilogue = Epilogue(), dtype: str = "float32"):
    """The unscheduled PrimFunc; parameters (data, offsets, values, slots[, bias][, residual],
    out)."""
    inputs, out = vector_sparse_conv2d_te(spec, blocks, width, group, epilogue, dtype)
    return te.create_prim_func([*inputs, out])
