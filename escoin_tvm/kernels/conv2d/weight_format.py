"""Escoin's weight format: one CSR row per output channel over its flattened (c, r, s) filter.

Each column index is pre-encoded as the offset of that tap in the zero-padded input of the
channel's group, ``c * Hp * Wp + r * dilation_h * Wp + s * dilation_w``, so that output pixel (y, x)
reads ``padded[group_base + offset + y * stride_h * Wp + x * stride_w]``: every pixel of a channel
walks the same offset list from its own base pointer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ...errors import ShapeError
from ..csr import CsrValues, as_numpy_weight, csr_rows
from ..conv_spec import Conv2dSpec


@dataclass(frozen=True, eq=False)
class EscoinWeight(CsrValues):
    """A conv2d weight in Escoin's CSR format, tied to one padded input size."""

    indptr: np.ndarray  # int32, (out_channels + 1,)
    offsets: np.ndarray  # int32, (nnz,): tap offset in the padded input of the channel's group
    values: np.ndarray  # (nnz,), in the weight's dtype
    weight_shape: Tuple[int, int, int, int]  # OIHW of the dense weight
    padded_hw: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int

    @staticmethod
    def from_dense(weight, spec: Conv2dSpec) -> "EscoinWeight":
        """Encodes a dense OIHW weight (float32, float16 or bfloat16, kept as it is) for the
        padded input size of ``spec``."""
        weight = as_numpy_weight(weight)
        if weight.ndim != 4:
            raise ShapeError(f"weight must be 4-D OIHW, got shape {weight.shape}")
        if tuple(weight.shape) != spec.weight_shape:
            raise ShapeError(f"weight shape {weight.shape} does not match the convolution's "
                             f"{spec.weight_shape}")
        out_channels = weight.shape[0]
        hp, wp = spec.padded_h, spec.padded_w
        dh, dw = spec.dilation
        flat = weight.reshape(out_channels, -1)
        indptr, rows, cols = csr_rows(flat)  # sorted by channel, then by (c, r, s)
        _, kh, kw = weight.shape[1:]
        c, rem = np.divmod(cols, kh * kw)
        r, s = np.divmod(rem, kw)
        offsets = c * (hp * wp) + r * dh * wp + s * dw
        return EscoinWeight(indptr.astype(np.int32), offsets.astype(np.int32),
                            flat[rows, cols], tuple(weight.shape), (hp, wp),
                            spec.dilation, spec.groups)

    @property
    def dense_shape(self) -> Tuple[int, int, int, int]:
        return self.weight_shape

    @property
    def row_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def decode(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(out_channel, in_channel_within_group, r, s) of every non-zero."""
        hp, wp = self.padded_hw
        rows = np.repeat(np.arange(self.weight_shape[0]), self.row_lengths)
        c, rem = np.divmod(self.offsets.astype(np.int64), hp * wp)
        r, s = np.divmod(rem, wp)
        return rows, c, r // self.dilation[0], s // self.dilation[1]

    def to_dense(self) -> np.ndarray:
        """The dense OIHW weight back: the exact inverse of from_dense."""
        dense = np.zeros(self.weight_shape, dtype=self.values.dtype)
        rows, c, r, s = self.decode()
        dense[rows, c, r, s] = self.values
        return dense

    def ell_width(self, multiple: int = 1) -> int:
        """The length ``to_ell`` pads every row to: the longest row (at least 1) rounded up to
        ``multiple``."""
        longest = max(1, int(self.row_lengths.max(initial=0)))
        return -(-longest // multiple) * multiple

    def to_ell(self, in_channels: int, multiple: int = 1,
               in_place: bool = False) -> Tuple[np.ndarray, np.ndarray]:
        """Rows padded to one length (ELL), with offsets made absolute in the whole padded input.

        Returns ``(offsets, values)`` of shape (out_channels, L), L the longest row rounded up to
        ``multiple``. Padding entries have value 0 and point into the all-zero extra channel that the
        operator appends after the ``in_channels`` real ones, so that they add 0 * 0 and never turn
        an Inf or NaN input into NaN. A kernel that reads its input in place has no such channel
        (``operator.reads_in_place``): its padding entries repeat the row's last tap, whose input
        the row already multiplies by a non-zero weight (an empty row: its group's first tap), so
        a non-finite input only reaches outputs that are non-finite anyway (Inf may turn NaN).
        """
        out_channels = self.weight_shape[0]
        plane = self.padded_hw[0] * self.padded_hw[1]
        lengths = self.row_lengths
        width = self.ell_width(multiple)
        group_base = (np.arange(out_channels) // (out_channels // self.groups)) * \
            self.weight_shape[1] * plane
        if in_place:
            last, nonempty = np.zeros(out_channels, np.int64), lengths > 0
            last[nonempty] = self.offsets[self.indptr[1:][nonempty] - 1]
            padding = (last + group_base)[:, None]
        else:
            padding = in_channels * plane
        offsets = np.full((out_channels, width), padding, dtype=np.int64)
        values = np.zeros((out_channels, width), dtype=self.values.dtype)
        rows = np.repeat(np.arange(out_channels), lengths)
        cols = np.arange(self.nnz) - np.repeat(self.indptr[:-1], lengths)
        offsets[rows, cols] = self.offsets + group_base[rows]
        values[rows, cols] = self.values
        return offsets.astype(np.int32), values
