"""The input as the direct sparse convolutions gather it: zero-padded and flattened per image,
with an all-zero channel after the real ones (where padding entries of the weight formats
point: they add 0 * 0, so an Inf or NaN input is never multiplied by a stored zero)."""
from __future__ import annotations

from tvm import te, tirx

from .conv_spec import Conv2dSpec


def padded_input(spec: Conv2dSpec, data: te.Tensor, images: int, flat: int,
                 name: str = "data_pad") -> te.Tensor:
    """``(images, flat)``: image n's channel c at ``c * Hp * Wp``, then zeros (the zero channel,
    and whatever else ``flat`` asks for beyond it); images past the batch are zeros (a domain
    rounded up to a register tile)."""
    n_, c_, h_, w_ = spec.input_shape
    top, left = spec.padding[0], spec.padding[1]
    hp, wp = spec.padded_h, spec.padded_w

    def pad(n, f):
        c = f // (hp * wp)
        yy = f % (hp * wp) // wp - top
        xx = f % wp - left
        inside = tirx.all(c < c_, yy >= 0, yy < h_, xx >= 0, xx < w_)
        if images > n_:  # the extra images are zeros (the clamp keeps the read in bounds)
            inside, n = tirx.all(n < n_, inside), tirx.min(n, n_ - 1)
        return tirx.if_then_else(inside, data[n, c, yy, xx], tirx.const(0.0, data.dtype))

    return te.compute((images, flat), pad, name=name)
