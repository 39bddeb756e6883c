"""The vector-sparse convolution as a TVM tensor expression: per block of output channels and
per block of ``v`` images, a product of the gathered input (the block's taps x rows of M) and
the block's values (taps x G), the shape of a GEMM on tensor cores.

    padded[nb, f, i]      = the input of image nb*v + i, zero-padded and flattened
    gathered[b, nb, t, m] = padded[nb, offsets[b, t] + y(p)*sh*Wp + x(p)*sw, i]
                            with p = m // v, i = m % v   (0 past the pixels)
    sums[b, nb, m, g]     = sum_t gathered[b, nb, t, m] * values[b, t, g]
    out[n, k, y, x]       = epilogue( sums[slots[k] // G, n // v, (y*OW + x)*v + n % v,
                                           slots[k] % G] )

(with ``in_place`` weights, whose channel k is place k % G of block k // G, the epilogue reads
``sums[k // G, ...]`` without ``slots``, so that a schedule can see which sums a tile of the
output needs).

A row m of M is one output pixel p (row-major) of one image i of the block: the v images of a
pixel are adjacent in ``padded`` and in M, so that a tap's v values are one vector load (16
bytes for v = 8 half values). An image block's pixels are rounded up so that its rows are a
multiple of ``m_tile`` (a thread block's M tile never straddles two image blocks); images past
the batch are zeros. ``padded`` ends with the all-zero channel the padding taps point at
(``padded_input``). The products are summed in float32; the epilogue (bias, residual, ReLU,
rounded once to the dtype) also puts each channel back in its place.

A linear layer is the 1 x 1 case with the batch as the pixels of one image
(``vector_sparse_linear_te``): M is the batch, K a block's non-zero input features, and the
padding stage reads the (batch, features) input transposed, the epilogue writes the
(batch, features) output.
"""
from __future__ import annotations

from tvm import te, tirx

from ...errors import ShapeError
from ..conv_spec import Conv2dSpec
from ..epilogue import Epilogue, epilogue_stage
from ..padded_input import padded_input

PAD_BLOCK = "data_pad"
FLAT_PAD_BLOCK = "data_pad_flat"  # inlined into PAD_BLOCK by the schedules
GATHER_BLOCK = "gathered"
SUM_BLOCK = "block_sums"
EPILOGUE_BLOCK = "epilogue"
INT32_MAX = 2**31 - 1


def padded_pixels(spec: Conv2dSpec, m_tile: int, image_block: int = 1) -> int:
    """An image's output pixels rounded up so that ``image_block`` images of them are a
    multiple of ``m_tile`` rows (``image_block`` divides ``m_tile``, or is 1)."""
    step = max(1, m_tile // image_block)
    return -(-(spec.out_h * spec.out_w) // step) * step


def image_blocks(spec: Conv2dSpec, image_block: int) -> int:
    return -(-spec.batch // image_block)


def _block_sums(spec: Conv2dSpec, source, blocks: int, width: int, group: int, dtype: str,
                m_tile: int, image_block: int):
    """The gather and the products of ``source`` (``PAD_BLOCK``: [image block, flat, image]):
    the tensors (offsets, values) they read, and the float32 sums [block, image block, row,
    channel] of each block's taps."""
    wp = spec.padded_w
    sh, sw = spec.stride
    out_w, pixels = spec.out_w, spec.out_h * spec.out_w
    v, nb_ = image_block, image_blocks(spec, image_block)
    rows = padded_pixels(spec, m_tile, v) * v
    offsets = te.placeholder((blocks, width), "int32", name="offsets")
    values = te.placeholder((blocks, width, group), dtype, name="values")
    half = dtype != "float32"

    def wide(value):
        return value.astype("float32") if half else value

    def gather(b, nb, t, m):
        p, i = (m // v, m % v) if v > 1 else (m, 0)
        return tirx.if_then_else(
            p < pixels, source[nb, offsets[b, t] + p // out_w * (sh * wp) + p % out_w * sw, i],
            tirx.const(0, dtype))

    gathered = te.compute((blocks, nb_, width, rows), gather, name=GATHER_BLOCK)
    t = te.reduce_axis((0, width), name="t")
    sums = te.compute((blocks, nb_, rows, group), lambda b, nb, m, g: te.sum(
        wide(gathered[b, nb, t, m]) * wide(values[b, t, g]), axis=t), name=SUM_BLOCK)
    return offsets, values, sums


def _check_indexing(spec: Conv2dSpec, blocks: int, group: int, m_tile: int,
                    image_block: int) -> int:
    """The flat length of an image's padded input, after checking that every index fits in
    32 bits."""
    flat = (spec.in_channels + 1) * spec.padded_h * spec.padded_w
    v, nb_ = image_block, image_blocks(spec, image_block)
    rows = padded_pixels(spec, m_tile, v) * v
    if nb_ * v * flat > INT32_MAX or blocks * nb_ * rows * group > INT32_MAX:
        raise ShapeError(f"convolution {spec.input_shape} -> {spec.output_shape} is too large for "
                         "32-bit indexing; split the batch")
    return flat


def vector_sparse_conv2d_te(spec: Conv2dSpec, blocks: int, width: int, group: int,
                            epilogue: Epilogue = Epilogue(), dtype: str = "float32",
                            m_tile: int = 1, image_block: int = 1, in_place: bool = False):
    """The TE graph for ``blocks`` blocks of ``group`` channels and tap lists of ``width``
    (``in_place``: the weight's ``in_place``, its channels in block order). Returns (inputs, output): inputs are ``[data, offsets, values, slots]``, then ``bias``
    (float32) and ``residual`` (output-shaped) when the epilogue has them."""
    v, nb_ = image_block, image_blocks(spec, image_block)
    flat = _check_indexing(spec, blocks, group, m_tile, image_block)
    data = te.placeholder(spec.input_shape, dtype, name="data")
    slots = te.placeholder((spec.out_channels,), "int32", name="slots")
    flat_input = padded_input(spec, data, nb_ * v, flat, FLAT_PAD_BLOCK)
    source = te.compute((nb_, flat, v), lambda nb, f, i: flat_input[nb * v + i, f],
                        name=PAD_BLOCK)
    offsets, values, sums = _block_sums(spec, source, blocks, width, group, dtype, m_tile, v)
    out_w = spec.out_w

    def sum_at(n, k, y, x):
        m = (y * out_w + x) * v + n % v if v > 1 else y * out_w + x
        block, place = (k // group, k % group) if in_place else \
            (slots[k] // group, slots[k] % group)
        return sums[block, n // v if v > 1 else n, m, place]

    extra, out = epilogue_stage(spec.output_shape, sum_at, epilogue, dtype, EPILOGUE_BLOCK)
    return [data, offsets, values, slots] + extra, out


def linear_spec(batch: int, in_features: int, out_features: int) -> Conv2dSpec:
    """A linear layer as the convolution the family computes it as: its 1 x 1 case on one
    image of ``in_features`` channels whose ``batch`` x 1 pixels are the rows of the input, so
    that M of the GEMM is the batch and K a block's non-zero input features."""
    return Conv2dSpec.create((1, in_features, batch, 1), (out_features, in_features, 1, 1))


class _RowsAsPixels:
    """A (batch, features) input read as the one image (1, features, batch, 1) of
    ``linear_spec`` (``padded_input`` indexes it so): the padding stage transposes it."""

    def __init__(self, data: te.Tensor):
        self.data, self.dtype = data, data.dtype

    def __getitem__(self, index):
        _image, feature, row, _column = index
        return self.data[row, feature]


def vector_sparse_linear_te(batch: int, in_features: int, out_features: int, blocks: int,
                            width: int, group: int, epilogue: Epilogue = Epilogue(),
                            dtype: str = "float32", m_tile: int = 1, in_place: bool = False):
    """The TE graph of a linear layer ``y = x W^T`` (+ bias, ReLU) for x of (batch,
    in_features), as the 1 x 1 convolution of ``linear_spec`` with the weight in blocks of
    ``group`` output features: the same gather and products, the input read and the output
    written in their own (batch, features) layouts. Returns (inputs, output) as
    ``vector_sparse_conv2d_te``."""
    if epilogue.residual:
        raise ShapeError("the vector-sparse linear kernels fuse a bias and a ReLU, not a "
                         "residual")
    spec = linear_spec(batch, in_features, out_features)
    flat = _check_indexing(spec, blocks, group, m_tile, 1)
    data = te.placeholder((batch, in_features), dtype, name="data")
    slots = te.placeholder((out_features,), "int32", name="slots")
    flat_input = padded_input(spec, _RowsAsPixels(data), 1, flat, FLAT_PAD_BLOCK)
    source = te.compute((1, flat, 1), lambda nb, f, i: flat_input[nb, f], name=PAD_BLOCK)
    offsets, values, sums = _block_sums(spec, source, blocks, width, group, dtype, m_tile, 1)

    def sum_at(row, k):
        block, place = (k // group, k % group) if in_place else \
            (slots[k] // group, slots[k] % group)
        return sums[block, 0, row, place]

    extra, out = epilogue_stage((batch, out_features), sum_at, epilogue, dtype, EPILOGUE_BLOCK)
    return [data, offsets, values, slots] + extra, out


def vector_sparse_conv2d_primfunc(spec: Conv2dSpec, blocks: int, width: int, group: int,
                                  epilogue: Epilogue = Epilogue(), dtype: str = "float32",
                                  m_tile: int = 1, image_block: int = 1,
                                  in_place: bool = False):
    """The unscheduled PrimFunc; parameters (data, offsets, values, slots[, bias][, residual],
    out)."""
    inputs, out = vector_sparse_conv2d_te(spec, blocks, width, group, epilogue, dtype, m_tile,
                                          image_block, in_place)
    return te.create_prim_func([*inputs, out])


def vector_sparse_linear_primfunc(batch: int, in_features: int, out_features: int,
                                  blocks: int, width: int, group: int,
                                  epilogue: Epilogue = Epilogue(), dtype: str = "float32",
                                  m_tile: int = 1, in_place: bool = False):
    """The unscheduled PrimFunc of ``vector_sparse_linear_te``; parameters (data, offsets,
    values, slots[, bias], out)."""
    inputs, out = vector_sparse_linear_te(batch, in_features, out_features, blocks, width, group,
                                          epilogue, dtype, m_tile, in_place)
    return te.create_prim_func([*inputs, out])
