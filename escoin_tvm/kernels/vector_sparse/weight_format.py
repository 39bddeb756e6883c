"""The vector-sparse weight format: output channels in blocks of G that share one list of taps.

For tensor cores the zeros of a convolution's weight must come in a shape they can skip: here,
whole vectors of G output channels at one tap (c, r, s). Each block of G output channels (within
one convolution group) keeps the union of its channels' non-zero taps, each stored as its
Escoin offset into the padded input (``c * Hp * Wp + r * dilation_h * Wp + s * dilation_w``,
plus the group's first channel), and a dense block of values ``[taps, G]`` in the weight's
dtype, with explicit zeros where a channel has none at a tap of its block. For a weight pruned
in such vectors (``prune.vectors``) the union is exactly the non-zeros; for any other weight it
is larger (``density`` says by how much). The lists are padded to one length, a multiple of
``multiple`` (16: the K of a tensor-core tile), with taps of value 0 that point at the all-zero
channel after the input's real ones.

Channels may be reordered so that channels with similar rows share a block (``reorder``), which
shrinks the unions; ``slots`` maps each output channel to its place in the blocks, and
``to_dense`` writes each channel back to its own place: ``from_dense`` and ``to_dense`` are exact
inverses. A group's channel count need not be a multiple of G: its last block has empty slots.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import List, Tuple

import numpy as np

from ...errors import ArgumentError, ShapeError
from ...support import dtypes
from ..conv_spec import Conv2dSpec
from ..csr import as_numpy_weight

GROUP_SIZES = (8, 16)  # output channels per block: the N of the tensor-core tiles


@dataclass(frozen=True, eq=False)
class VectorSparseWeight:
    """A conv2d weight in blocks of ``group`` output channels sharing their taps, tied to one
    padded input size (``from_dense``)."""

    offsets: np.ndarray  # int32 (blocks, K): each tap's offset in the whole padded input
    values: np.ndarray  # (blocks, K, group), the weight's dtype; zeros where a channel has none
    taps: np.ndarray  # int32 (blocks,): the real taps of each block (the rest pad the list)
    slots: np.ndarray  # int32 (out_channels,): block * group + place of each output channel
    group: int
    weight_shape: Tuple[int, int, int, int]  # OIHW of the dense weight
    padded_hw: Tuple[int, int]
    dilation: Tuple[int, int]
    groups: int
    nnz: int  # non-zeros of the dense weight

    @staticmethod
    def from_dense(weight, spec: Conv2dSpec, group: int = 16, multiple: int = 16,
                   reorder: bool = False) -> "VectorSparseWeight":
        """Encodes a dense OIHW weight (float32, float16 or bfloat16, kept as it is) for the
        padded input of ``spec``, in blocks of ``group`` output channels, tap lists padded to
        a multiple of ``multiple``; ``reorder`` puts channels with similar rows together."""
        weight = as_numpy_weight(weight)
        if tuple(weight.shape) != spec.weight_shape:
            raise ShapeError(f"weight shape {weight.shape} does not match the convolution's "
                             f"{spec.weight_shape}")
        if group not in GROUP_SIZES:
            raise ArgumentError(f"group must be one of {GROUP_SIZES}, got {group!r}")
        if not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1:
            raise ArgumentError(f"multiple must be an int >= 1, got {multiple!r}")
        out_channels, per_group = weight.shape[0], spec.out_per_group
        hp, wp = spec.padded_h, spec.padded_w
        plane, (dh, dw) = hp * wp, spec.dilation
        _, c_g, kh, kw = weight.shape
        flat = weight.reshape(out_channels, -1)
        mask = flat != 0
        # per conv group, its channels in the order they fill the blocks
        blocks_per_group = -(-per_group // group)
        slots = np.empty(out_channels, np.int32)
        members: List[List[int]] = []
        for g in range(spec.groups):
            channels = list(range(g * per_group, (g + 1) * per_group))
            ordered = _similar_first(mask, channels, group) if reorder else channels
            for i in range(blocks_per_group):
                block = ordered[i * group:(i + 1) * group]
                for place, channel in enumerate(block):
                    slots[channel] = (len(members)) * group + place
                members.append(block)
        unions = [np.flatnonzero(mask[block].any(axis=0)) for block in members]
        width = max(1, max(len(u) for u in unions))
        width = -(-width // multiple) * multiple
        zero_channel = spec.in_channels * plane
        offsets = np.full((len(members), width), zero_channel, np.int64)
        values = np.zeros((len(members), width, group), weight.dtype)
        for b, (block, union) in enumerate(zip(members, unions)):
            g = block[0] // per_group if block else 0
            c, rem = np.divmod(union, kh * kw)
            r, s = np.divmod(rem, kw)
            offsets[b, :len(union)] = (g * c_g + c) * plane + r * dh * wp + s * dw
            values[b, :len(union), :len(block)] = flat[block][:, union].T
        return VectorSparseWeight(offsets.astype(np.int32), values,
                                  np.array([len(u) for u in unions], np.int32), slots, group,
                                  tuple(weight.shape), (hp, wp), spec.dilation, spec.groups,
                                  int(mask.sum()))

    @property
    def dtype(self) -> str:
        return dtypes.name_of(self.values.dtype)

    @property
    def blocks(self) -> int:
        return int(self.offsets.shape[0])

    @property
    def in_place(self) -> bool:
        """Whether each output channel k is place k % G of block k // G (no reordering, and
        the blocks never straddle two convolution groups): the kernels then index the blocks
        by the channel itself instead of reading ``slots``."""
        return bool(np.array_equal(self.slots, np.arange(self.slots.size)))

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights of the dense weight."""
        return 1.0 - self.nnz / float(np.prod(self.weight_shape))

    @property
    def stored(self) -> int:
        """Weights the blocks hold for real channels at real taps (non-zeros and the zeros the
        unions add)."""
        per_block = np.bincount(self.slots // self.group, minlength=self.blocks)
        return int((self.taps * per_block).sum())

    @property
    def density(self) -> float:
        """What the unions cost: stored weights per non-zero (1.0 for a weight pruned in
        vectors of the block size, more for any other)."""
        return self.stored / max(1, self.nnz)

    def padded_to(self, multiple: int) -> "VectorSparseWeight":
        """The same weight with its tap lists padded to a multiple of ``multiple`` (more taps
        of value 0 at the zero channel)."""
        width = self.offsets.shape[1]
        extra = -(-width // multiple) * multiple - width
        if not extra:
            return self
        hp, wp = self.padded_hw
        zero_channel = self.weight_shape[1] * self.groups * hp * wp
        offsets = np.concatenate(
            [self.offsets, np.full((self.blocks, extra), zero_channel, np.int32)], axis=1)
        values = np.concatenate(
            [self.values, np.zeros((self.blocks, extra, self.group), self.values.dtype)], axis=1)
        return replace(self, offsets=offsets, values=values)

    def to_dense(self) -> np.ndarray:
        """The dense OIHW weight back: the exact inverse of ``from_dense``."""
        out_channels, c_g, kh, kw = self.weight_shape
        hp, wp = self.padded_hw
        plane, per_group = hp * wp, out_channels // self.groups
        dense = np.zeros(self.weight_shape, dtype=self.values.dtype)
        for channel in range(out_channels):
            b, place = divmod(int(self.slots[channel]), self.group)
            taps = self.offsets[b, :self.taps[b]].astype(np.int64)
            c, rem = np.divmod(taps, plane)
            r, s = np.divmod(rem, wp)
            c = c - (channel // per_group) * c_g
            dense[channel, c, r // self.dilation[0], s // self.dilation[1]] = \
                self.values[b, :self.taps[b], place]
        return dense


def block_density(weight: np.ndarray, groups: int = 1, group: int = 16) -> float:
    """The ``density`` ``from_dense`` would give ``weight`` (OIHW) in blocks of ``group``
    output channels without reordering: taps stored for real channels per non-zero (1.0 for a
    weight pruned in such vectors; 1.0 for an all-zero weight)."""
    out_channels = weight.shape[0]
    mask = weight.reshape(out_channels, -1) != 0
    per_group, stored = out_channels // groups, 0
    for g in range(groups):
        for start in range(g * per_group, (g + 1) * per_group, group):
            block = mask[start:min(start + group, (g + 1) * per_group)]
            stored += int(block.any(axis=0).sum()) * block.shape[0]
    nnz = int(mask.sum())
    return stored / nnz if nnz else 1.0


def _similar_first(mask: np.ndarray, channels: List[int], group: int) -> List[int]:
    """``channels`` in blocks of ``group`` that each add as few taps as possible to their
    block's union: a block starts from the remaining channel with the most non-zeros and takes,
    one by one, the channel that grows its union least (the first in order on a tie). A weight
    pruned in vectors and then shuffled gets its blocks back."""
    left, ordered = list(channels), []
    counts = mask.sum(axis=1)
    while left:
        seed = left[int(np.argmax(counts[left]))]  # the first of the fullest
        left.remove(seed)
        block, union = [seed], mask[seed].copy()
        while left and len(block) < group:
            growth = (mask[left] & ~union).sum(axis=1)
            best = left[int(np.argmin(growth))]
            left.remove(best)
            block.append(best)
            union |= mask[best]
        ordered += block
    return ordered
