"""Conv2dSpec: the static description of one NCHW convolution, normalised and validated once.

Everything downstream (weight format, operator, schedules, the Relax pass) reads the geometry from
here, so there is a single place that decides what a legal convolution is.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

from ..errors import ShapeError

IntOrPair = Union[int, Sequence[int]]


def as_int(value, name: str) -> int:
    """An integral Python, numpy or torch scalar as an int; anything else (a float, a bool, a
    string) is refused naming the argument."""
    if isinstance(value, bool):
        raise ShapeError(f"{name} must be an int, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ShapeError(f"{name} must be an int (or an integral numpy/torch scalar), got "
                         f"{value!r} of type {type(value).__name__}") from None


def _ints(value: IntOrPair, name: str) -> Tuple[int, ...]:
    """A scalar as a 1-tuple, a sequence as a tuple, each element an int."""
    if isinstance(value, (list, tuple)):
        return tuple(as_int(v, f"{name}[{i}]") for i, v in enumerate(value))
    if hasattr(value, "ndim") and getattr(value, "ndim", 0) > 0:  # a numpy array or tensor
        return tuple(as_int(v, f"{name}[{i}]") for i, v in enumerate(value.tolist()))
    return (as_int(value, name),)


def _pair(value: IntOrPair, name: str) -> Tuple[int, int]:
    out = _ints(value, name)
    if len(out) == 1:
        return out * 2
    if len(out) != 2:
        raise ShapeError(f"{name} must be an int or a pair, got {value!r}")
    return out


def normalize_padding(padding: IntOrPair) -> Tuple[int, int, int, int]:
    """int, (pad_h, pad_w) or (top, left, bottom, right) -> (top, left, bottom, right)."""
    pads = _ints(padding, "padding")
    if len(pads) == 1:
        pads = pads * 4
    elif len(pads) == 2:
        pads = (pads[0], pads[1], pads[0], pads[1])
    elif len(pads) != 4:
        raise ShapeError(
            f"padding must be an int, (pad_h, pad_w) or (top, left, bottom, right), got {padding!r}")
    if min(pads) < 0:
        raise ShapeError(f"padding must be non-negative, got {padding!r}")
    return pads


@dataclass(frozen=True)
class Conv2dSpec:
    """NCHW input (batch, in_channels, height, width) convolved with an OIHW weight
    (out_channels, in_channels // groups, kernel_h, kernel_w)."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel_h: int
    kernel_w: int
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1

    @staticmethod
    def create(input_shape: Sequence[int], weight_shape: Sequence[int], *, stride: IntOrPair = 1,
               padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1) -> "Conv2dSpec":
        """Builds and validates a spec from PyTorch-style arguments."""
        input_shape = tuple(int(d) for d in input_shape)
        weight_shape = tuple(int(d) for d in weight_shape)
        if len(input_shape) != 4:
            raise ShapeError(f"input must be 4-D NCHW, got shape {input_shape}")
        if len(weight_shape) != 4:
            raise ShapeError(f"weight must be 4-D OIHW, got shape {weight_shape}")
        spec = Conv2dSpec(*input_shape, weight_shape[0], weight_shape[2], weight_shape[3],
                          stride=_pair(stride, "stride"), padding=normalize_padding(padding),
                          dilation=_pair(dilation, "dilation"), groups=as_int(groups, "groups"))
        spec._validate(weight_shape)
        return spec

    @staticmethod
    def of_call(conv, input_shape: Sequence[int]) -> "Conv2dSpec":
        """The spec of a Relax conv2d call (``conv``, its weight a constant) on inputs of
        ``input_shape``."""
        attrs = conv.attrs
        return Conv2dSpec.create(input_shape, conv.args[1].value.shape,
                                 stride=tuple(int(s) for s in attrs.strides),
                                 padding=tuple(int(p) for p in attrs.padding),
                                 dilation=tuple(int(d) for d in attrs.dilation),
                                 groups=int(attrs.groups))

    def _validate(self, weight_shape: Tuple[int, ...]) -> None:
        if min(self.input_shape) < 1 or min(weight_shape) < 1:
            raise ShapeError(f"empty tensors are not supported: input {self.input_shape}, "
                             f"weight {weight_shape}")
        if min(self.stride) < 1 or min(self.dilation) < 1:
            raise ShapeError(f"stride and dilation must be >= 1, got {self.stride}, {self.dilation}")
        if self.groups < 1 or self.in_channels % self.groups or self.out_channels % self.groups:
            raise ShapeError(f"groups={self.groups} must divide in_channels={self.in_channels} and "
                             f"out_channels={self.out_channels}")
        if weight_shape[1] != self.in_channels // self.groups:
            raise ShapeError(
                f"weight has {weight_shape[1]} input channels per group but the input has "
                f"{self.in_channels} channels in {self.groups} group(s) "
                f"(expected {self.in_channels // self.groups}); is the input NCHW?")
        if self.out_h < 1 or self.out_w < 1:
            span_h = (self.kernel_h - 1) * self.dilation[0] + 1
            span_w = (self.kernel_w - 1) * self.dilation[1] + 1
            raise ShapeError(
                f"the {self.kernel_h}x{self.kernel_w} kernel with dilation {self.dilation} spans "
                f"{span_h}x{span_w} input pixels, more than the padded input's "
                f"{self.padded_h}x{self.padded_w}")

    def subsampled(self) -> Optional["Conv2dSpec"]:
        """A strided 1x1 convolution without padding reads one input pixel per output pixel: it is
        the stride-1 convolution of the input subsampled by the stride (``x[:, :, ::sh, ::sw]``
        cropped to the output size). Returns that convolution's spec, else None. Its kernel reads
        whole rows: a strided gather wastes half of every cache line (docs/findings.md)."""
        if (self.kernel_h, self.kernel_w) != (1, 1) or self.stride == (1, 1) or any(self.padding):
            return None
        return Conv2dSpec.create((self.batch, self.in_channels, self.out_h, self.out_w),
                                 self.weight_shape, groups=self.groups)

    @property
    def input_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.in_channels, self.height, self.width)

    @property
    def weight_shape(self) -> Tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, self.kernel_h, self.kernel_w)

    @property
    def output_shape(self) -> Tuple[int, int, int, int]:
        return (self.batch, self.out_channels, self.out_h, self.out_w)

    @property
    def padded_h(self) -> int:
        return self.height + self.padding[0] + self.padding[2]

    @property
    def padded_w(self) -> int:
        return self.width + self.padding[1] + self.padding[3]

    @property
    def out_h(self) -> int:
        span = (self.kernel_h - 1) * self.dilation[0] + 1
        return (self.padded_h - span) // self.stride[0] + 1

    @property
    def out_w(self) -> int:
        span = (self.kernel_w - 1) * self.dilation[1] + 1
        return (self.padded_w - span) // self.stride[1] + 1

    @property
    def in_per_group(self) -> int:
        return self.in_channels // self.groups

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups
