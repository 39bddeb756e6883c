"""The vector-sparse convolution as a TVM tensor expression: per block of output channels and
per image, a product of the gathered input (the block's taps x output pixels) and the block's
values (taps x G), the shape of a GEMM on tensor cores.

    gathered[b, n, t, p] = padded[n, offsets[b, t] + y(p)*sh*Wp + x(p)*sw]   (0 past the pixels)
    sums[b, n, p, g]     = sum_t gathered[b, n, t, p] * values[b, t, g]
    out[n, k, y, x]      = epilogue( sums[slots[k] // G, n, y*OW + x, slots[k] % G] )

``p`` runs over an image's output pixels in row-major order, rounded up to ``pixel_tile`` (a
thread block's M tile never straddles two images); ``padded`` is the input zero-padded and
flattened per image, with the all-zero channel the padding taps point at (``padded_input``).
The products are summed in float32; the epilogue (bias, residual, ReLU, rounded once to the
dtype) also puts each channel back in its place.
"""
from __future__ import annotations

from tvm import te, tirx

from ...errors import ShapeError
from ..conv_spec import Conv2dSpec
from ..epilogue import Epilogue, epilogue_stage
from ..padded_input import padded_input

PAD_BLOCK = "data_pad"
GATHER_BLOCK = "gathered"
SUM_BLOCK = "block_sums"
EPILOGUE_BLOCK = "epilogue"
INT32_MAX = 2**31 - 1


def padded_pixels(spec: Conv2dSpec, pixel_tile: int) -> int:
    """An image's output pixels rounded up to a multiple of ``pixel_tile``."""
    pixels = spec.out_h * spec.out_w
    return -(-pixels // pixel_tile) * pixel_tile


def vector_sparse_conv2d_te(spec: Conv2dSpec, blocks: int, width: int, group: int,
                            epilogue: Epilogue = Epilogue(), dtype: str = "float32",
                            pixel_tile: int = 1):
    """The TE graph for ``blocks`` blocks of ``group`` channels and tap lists of ``width``.
    Returns (inputs, output): inputs are ``[data, offsets, values, slots]``, then ``bias``
    (float32) and ``residual`` (output-shaped) when the epilogue has them."""
    n_, c_, _, _ = spec.input_shape
    hp, wp = spec.padded_h, spec.padded_w
    sh, sw = spec.stride
    out_w, pixels = spec.out_w, spec.out_h * spec.out_w
    padded = padded_pixels(spec, pixel_tile)
    flat = (c_ + 1) * hp * wp
    if n_ * flat > INT32_MAX or blocks * n_ * padded * group > INT32_MAX:
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
    gathered = te.compute(
        (blocks, n_, width, padded),
        lambda b, n, t, p: tirx.if_then_else(
            p < pixels, source[n, offsets[b, t] + p // out_w * (sh * wp) + p % out_w * sw],
            tirx.const(0, dtype)),
        name=GATHER_BLOCK)
    t = te.reduce_axis((0, width), name="t")
    sums = te.compute((blocks, n_, padded, group), lambda b, n, p, g: te.sum(
        wide(gathered[b, n, t, p]) * wide(values[b, t, g]), axis=t), name=SUM_BLOCK)
    extra, out = epilogue_stage(
        spec.output_shape,
        lambda n, k, y, x: sums[slots[k] // group, n, y * out_w + x, slots[k] % group],
        epilogue, dtype, EPILOGUE_BLOCK)
    return [data, offsets, values, slots] + extra, out


def vector_sparse_conv2d_primfunc(spec: Conv2dSpec, blocks: int, width: int, group: int,
                                  epilogue: Epilogue = Epilogue(), dtype: str = "float32",
                                  pixel_tile: int = 1):
    """The unscheduled PrimFunc; parameters (data, offsets, values, slots[, bias][, residual],
    out)."""
    inputs, out = vector_sparse_conv2d_te(spec, blocks, width, group, epilogue, dtype,
                                          pixel_tile)
    return te.create_prim_func([*inputs, out])
