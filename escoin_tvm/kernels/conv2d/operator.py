"""The sparse direct convolution as a TVM tensor expression.

    out[n, k, y, x] = epilogue( sum_j values[k, j] * padded[n, offsets[k, j] + y*sh*Wp + x*sw] )

``padded`` is the input zero-padded and flattened per image, with one extra all-zero channel that
the ELL padding entries point at (see ``EscoinWeight.to_ell``). The reduction has a static extent
(the longest row), which keeps every loop schedulable: the Escoin register tile needs the non-zero
loop outside the pixel loops, and TIR cannot reorder around a data-dependent extent.

A convolution without padding skips the copy: ``padded`` is then the input itself, read in place
through a flat (N, C*H*W) view (``reads_in_place``; the caller reshapes, which costs nothing).

The offsets and values are ordinary buffer parameters of the PrimFunc; the kernel wrapper and the
Relax pass pass them as constants.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from tvm import te, tirx

from ...errors import ShapeError
from ..epilogue import Epilogue, epilogue_stage
from ..padded_input import padded_input
from ..conv_spec import Conv2dSpec
from .weight_format import EscoinWeight

INT32_MAX = 2**31 - 1

# Block names the schedules look up.
PAD_BLOCK = "data_pad"
CONV_BLOCK = "sparse_conv"
PARTIAL_BLOCK = "partial_sum"
TAP_BLOCK = "tap"
EPILOGUE_BLOCK = "epilogue"


def reads_in_place(spec: Conv2dSpec) -> bool:
    """Whether the kernel reads its input in place (no padding to add, so no padded copy): its
    data parameter is then the input flattened per image, ``kernel_input_shape(spec)``."""
    return not any(spec.padding)


def kernel_input_shape(spec: Conv2dSpec) -> Tuple[int, ...]:
    """The shape of the kernel's data parameter: NCHW, or (N, C*H*W) when it reads in place."""
    n_, c_, h_, w_ = spec.input_shape
    return (n_, c_ * h_ * w_) if reads_in_place(spec) else spec.input_shape


def ell_arrays(spec: Conv2dSpec, weight: EscoinWeight, multiple: int = 1):
    """The (offsets, values) arrays the kernel of ``spec`` takes (``EscoinWeight.to_ell``)."""
    return weight.to_ell(spec.in_channels, multiple, in_place=reads_in_place(spec))


def chunk_scaled(values: np.ndarray, chunk: int) -> Tuple[np.ndarray, np.ndarray]:
    """ELL ``values`` for half sums of ``chunk`` non-zeros, and the float32 factors of the
    chunks' sums: each chunk whose sum of |weights| is above 1/2 is divided by the power of two
    that brings it to at most 1/2 (exact, unless a weight becomes subnormal), and its sum is
    multiplied back in float32. A half sum then stays within half the largest finite input
    (|sum| <= sum |w| max |x| <= 65504 / 2 in float16), so it cannot overflow to Inf where
    the float32 sum is finite: a run of large products of opposite signs (100 x 1000 and
    -100 x 1000) no longer passes 65504 on its way to 0."""
    rows, width = values.shape
    blocks = values.astype(np.float32).reshape(rows, width // chunk, chunk)
    sums = np.abs(blocks).sum(axis=2)
    exponent = np.ceil(np.log2(np.maximum(2.0 * sums, 1.0))).astype(np.int32)
    factors = np.ldexp(np.float32(1.0), exponent).astype(np.float32)
    scaled = (blocks / factors[:, :, None]).reshape(rows, width).astype(values.dtype)
    return scaled, factors


def weight_arrays(spec: Conv2dSpec, weight: EscoinWeight, multiple: int = 1,
                  half_chunk: Optional[int] = None) -> List[np.ndarray]:
    """The weight's arrays in the order of the kernel's parameters after ``data``: offsets and
    values, and for half sums (``half_chunk``) the chunks' factors (``chunk_scaled``)."""
    offsets, values = ell_arrays(spec, weight, multiple)
    if half_chunk is None:
        return [offsets, values]
    return [offsets, *chunk_scaled(values, half_chunk)]


def sparse_conv2d_te(spec: Conv2dSpec, row_length: int, epilogue: Epilogue = Epilogue(),
                     domain: Optional[Tuple[int, int]] = None, dtype: str = "float32",
                     half_chunk: Optional[int] = None):
    """Builds the TE graph. Returns (inputs, output): inputs are ``[data, offsets, values]``,
    ``chunk_factors`` with ``half_chunk``, then ``bias`` (float32) and ``residual``
    (output-shaped) when the epilogue has them (``weight_arrays`` gives the weight's).

    ``dtype`` is the element type of the input, the weights, the residual and the output; the
    sum and the epilogue are computed in float32 whatever it is (a half-precision kernel
    converts each value it loads, and rounds once, when it stores).

    ``domain`` = (images, rows) computes the sum over more images and output rows than the output
    has (the extra ones from zeros or in-bounds leftovers of the padded input, never stored): a GPU
    register tile that does not divide the output otherwise needs a bounds check around each
    accumulator, and those checks keep nvcc from batching the tile's loads (docs/findings.md,
    "Odd output sizes").

    ``half_chunk`` (half precision only; it must divide ``row_length``) sums each run of that
    many consecutive non-zeros in the input's own dtype first (the ``partial_sum`` stage, which
    a GPU schedule computes with packed two-lane FMAs) and adds the runs' sums in float32: the
    conversions and the fp32 FMAs per non-zero become one packed FMA per two outputs, and the
    rounding error grows with the run, not the row. Each run's sum is multiplied by its factor
    (``chunk_factors``, (out_channels, runs) float32) as it is added: the values come scaled
    down by it where a run could overflow the half dtype (``chunk_scaled``)."""
    n_, c_ = spec.input_shape[:2]
    hp, wp = spec.padded_h, spec.padded_w
    sh, sw = spec.stride
    images, rows = domain or (n_, spec.out_h)
    if images < n_ or rows < spec.out_h:
        raise ValueError(f"domain {domain} is smaller than the output {spec.output_shape}")
    # + the all-zero channel, + what the extra rows read beyond it
    flat = (c_ + 1) * hp * wp + (rows - spec.out_h) * sh * wp
    if images * flat > INT32_MAX or images * spec.out_channels * rows * spec.out_w > INT32_MAX:
        raise ShapeError(f"convolution {spec.input_shape} -> {spec.output_shape} is too large for "
                         "32-bit indexing; split the batch")

    data = te.placeholder(kernel_input_shape(spec), dtype, name="data")
    offsets = te.placeholder((spec.out_channels, row_length), "int32", name="offsets")
    values = te.placeholder((spec.out_channels, row_length), dtype, name="values")
    half = dtype != "float32"

    def wide(value):
        return value.astype("float32") if half else value

    in_place = reads_in_place(spec)
    source = data if in_place else padded_input(spec, data, images, flat, PAD_BLOCK)

    def gather(n, k, y, x, j):
        if in_place:  # the extra images and rows of a larger domain read the last real ones
            # (never stored); the clamps are per thread, outside the non-zero loop
            n = tirx.min(n, n_ - 1) if images > n_ else n
            y = tirx.min(y, spec.out_h - 1) if rows > spec.out_h else y
        return source[n, offsets[k, j] + y * (sh * wp) + x * sw]

    space = (images, spec.out_channels, rows, spec.out_w)
    if half_chunk is None:
        j = te.reduce_axis((0, row_length), name="j")
        conv = te.compute(space, lambda n, k, y, x: te.sum(
            wide(values[k, j]) * wide(gather(n, k, y, x, j)), axis=j), name=CONV_BLOCK)
    else:
        if not half or row_length % half_chunk:
            raise ValueError(f"half_chunk={half_chunk} needs a half-precision dtype (got "
                             f"{dtype}) and a row length it divides (got {row_length})")
        chunks = row_length // half_chunk
        # the gathered inputs as a stage of their own: a schedule loads them into registers, so
        # the packed FMA that reads them sees a plain (not a data-dependent) index
        tap = te.compute((*space, chunks, half_chunk), lambda n, k, y, x, c, i: gather(
            n, k, y, x, c * half_chunk + i), name=TAP_BLOCK)
        i = te.reduce_axis((0, half_chunk), name="i")
        partial = te.compute((*space, chunks), lambda n, k, y, x, c: te.sum(
            values[k, c * half_chunk + i] * tap[n, k, y, x, c, i], axis=i), name=PARTIAL_BLOCK)
        factors = te.placeholder((spec.out_channels, chunks), "float32", name="chunk_factors")
        c = te.reduce_axis((0, chunks), name="c")
        conv = te.compute(space, lambda n, k, y, x: te.sum(
            partial[n, k, y, x, c].astype("float32") * factors[k, c], axis=c), name=CONV_BLOCK)
    inputs = [data, offsets, values] + ([] if half_chunk is None else [factors])
    cropped = (images, rows) != (n_, spec.out_h)
    if not epilogue.any and not cropped and not half:
        return inputs, conv

    extra, out = epilogue_stage(spec.output_shape, lambda n, k, y, x: conv[n, k, y, x], epilogue,
                                dtype, EPILOGUE_BLOCK)
    return inputs + extra, out


def sparse_conv2d_primfunc(spec: Conv2dSpec, row_length: int, epilogue: Epilogue = Epilogue(),
                           domain: Optional[Tuple[int, int]] = None, dtype: str = "float32",
                           half_chunk: Optional[int] = None):
    """The unscheduled PrimFunc; parameters (data, offsets, values[, bias][, residual], out)."""
    inputs, out = sparse_conv2d_te(spec, row_length, epilogue, domain, dtype, half_chunk)
    return te.create_prim_func([*inputs, out])
