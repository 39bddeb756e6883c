"""Magnitude pruning: zero the smallest weights of a tensor or of a model's convolutions.

A target sparsity is always reached: the count of zeros is rounded up. A layer already pruned
with ``torch.nn.utils.prune`` (its weight recomputed from ``weight_orig * weight_mask`` before
every call) is pruned through its mask, so the pruning stays visible to the hook.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .errors import ArgumentError
from .support.arguments import fraction


def zero_count(sparsity: float, size: int) -> int:
    """The zeros a tensor of ``size`` entries needs to reach ``sparsity``: rounded up (after
    rounding away the float error of the product, so that 0.9 of 10 is 9)."""
    return min(size, math.ceil(round(sparsity * size, 6)))


def check_sparsity(sparsity) -> float:
    """``sparsity`` as a float: a real number (Python, numpy or torch scalar) in [0, 1], else
    an ArgumentError."""
    return fraction(sparsity, "sparsity")


def prune_array(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``weight`` with its ``zero_count(sparsity, size)`` smallest-magnitude entries
    zeroed."""
    sparsity = check_sparsity(sparsity)
    flat = np.array(weight, dtype=weight.dtype).reshape(-1)
    n_zero = zero_count(sparsity, flat.size)
    if n_zero:
        # What a stable argsort of the magnitudes would zero, in linear time: everything below
        # the n_zero-th smallest magnitude, then the first of the entries equal to it.
        magnitude = np.abs(flat)
        cut = np.partition(magnitude, n_zero - 1)[n_zero - 1]
        below = magnitude < cut
        ties = np.flatnonzero(magnitude == cut)[:n_zero - int(below.sum())]
        flat[below] = 0
        flat[ties] = 0
    return flat.reshape(weight.shape)


LAYER_KINDS = ("conv", "linear", "all")


def _layers(model, kind: str):
    """The model's modules of ``kind``: "conv" (Conv2d), "linear" (Linear) or "all" (both)."""
    import torch

    if kind not in LAYER_KINDS:
        raise ArgumentError(f"layers must be one of {', '.join(LAYER_KINDS)}, got {kind!r}")
    types = {"conv": (torch.nn.Conv2d,), "linear": (torch.nn.Linear,),
             "all": (torch.nn.Conv2d, torch.nn.Linear)}[kind]
    return [m for m in model.modules() if isinstance(m, types)]


def magnitude(model, sparsity: float, *, scope: str = "layer", min_params: int = 0,
              layers: str = "conv"):
    """Prunes the layers of ``model`` in place and returns the model: its ``torch.nn.Conv2d``
    (``layers="conv"``, the default), its ``torch.nn.Linear`` (``"linear"``) or both
    (``"all"``).

    ``scope="layer"`` prunes each layer to ``sparsity``; ``scope="global"`` ranks the weights of
    all of them together, so layers end at different sparsities. Either way exactly
    ``zero_count`` weights are zeroed, the smallest magnitudes first and, among equal ones, the
    first in order (of the layers, then within a layer). Layers with fewer than ``min_params``
    weights (e.g. a network's first layer) are left dense. Any floating dtype is pruned
    (magnitudes are ranked in float32, exactly as in the layer's own dtype)."""
    import torch

    sparsity = check_sparsity(sparsity)
    with torch.no_grad():
        for group in _ranked_together(model, layers, scope, min_params):
            weights = [_magnitudes(conv) for conv in group]
            kept = prune_array(np.concatenate(weights), sparsity) != 0
            for conv, mask in zip(group, np.split(kept, np.cumsum([w.size for w in weights])[:-1])):
                _keep(conv, torch.from_numpy(mask.reshape(conv.weight.shape))
                      .to(conv.weight.device))
    return model


def vectors(model, sparsity: float, *, group: int = 16, scope: str = "layer",
            min_params: int = 0, layers: str = "conv"):
    """Prunes the layers of ``model`` in place, in whole vectors, and returns the model: a
    vector is ``group`` consecutive output channels (within a convolution group; a last,
    shorter one where ``group`` does not divide them) at one input position (a convolution's
    tap (c, r, s), a Linear's input feature), the blocks of the vector-sparse kernels
    (``kernels/vector_sparse``), so that each block's channels share their zero taps.

    Vectors go smallest first by root-mean-square (their L2 norm over their length), ties in
    order, until at least ``zero_count(sparsity, size)`` weights are zero in them (at most a
    vector more): per layer (``scope="layer"``) or ranked over all of them (``"global"``).
    ``layers`` and ``min_params`` as for ``magnitude``."""
    import torch

    if isinstance(group, bool) or not isinstance(group, numbers.Integral) or group < 1:
        raise ArgumentError(f"group must be an int >= 1, got {group!r}")
    sparsity = check_sparsity(sparsity)
    with torch.no_grad():
        for members in _ranked_together(model, layers, scope, min_params):
            blocks = [_vector_blocks(m, int(group)) for m in members]
            rms = np.concatenate([b[0] for b in blocks])
            sizes = np.concatenate([b[1] for b in blocks])
            target = zero_count(sparsity, int(sizes.sum()))
            order = np.argsort(rms, kind="stable")
            taken = order[:int(np.searchsorted(np.cumsum(sizes[order]), target)) + 1] \
                if target else order[:0]
            pruned = np.zeros(rms.size, bool)
            pruned[taken] = True
            start = 0
            for m, (m_rms, _, block_of) in zip(members, blocks):
                cut = pruned[start:start + m_rms.size].reshape(-1, block_of.shape[1])
                start += m_rms.size
                keep = ~np.take_along_axis(cut, block_of, axis=0)
                _keep(m, torch.from_numpy(keep.reshape(m.weight.shape)).to(m.weight.device))
    return model


def _ranked_together(model, layers: str, scope: str, min_params: int):
    """The model's layers of kind ``layers`` with at least ``min_params`` weights, in the groups
    whose weights are ranked together: each layer alone (``scope="layer"``), or all of them
    (``"global"``)."""
    if scope not in ("layer", "global"):
        raise ArgumentError(f"scope must be 'layer' or 'global', got {scope!r}")
    min_params = _count(min_params, "min_params")
    chosen = [m for m in _layers(model, layers) if m.weight.numel() >= min_params]
    return [[m] for m in chosen] if scope == "layer" else [chosen] if chosen else []


def _vector_blocks(layer, group: int):
    """(rms, size) of each vector of ``layer`` (block-major, then input position), and the
    block of each output channel ([channels, positions], for taking a block's verdict to its
    channels)."""
    weight = layer.weight.detach().float().cpu().numpy()
    channels = weight.shape[0]
    flat = weight.reshape(channels, -1)
    convolution_groups = getattr(layer, "groups", 1)
    per_group = channels // convolution_groups
    blocks_per_group = -(-per_group // group)
    channel = np.arange(channels)
    block = (channel // per_group) * blocks_per_group + (channel % per_group) // group
    blocks = convolution_groups * blocks_per_group
    squares = np.zeros((blocks, flat.shape[1]))
    np.add.at(squares, block, flat.astype(np.float64) ** 2)
    sizes = np.bincount(block, minlength=blocks)
    rms = np.sqrt(squares / sizes[:, None])
    block_of = np.repeat(block[:, None], flat.shape[1], axis=1)
    return rms.reshape(-1), np.repeat(sizes, flat.shape[1]), block_of


def _magnitudes(conv) -> np.ndarray:
    """The layer's weights as float32 magnitudes, flattened (float16 and bfloat16 convert
    exactly; numpy has no bfloat16)."""
    return conv.weight.detach().abs().float().reshape(-1).cpu().numpy()


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ArgumentError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def _keep(conv, mask) -> None:
    """Zeroes the weights of ``conv`` where ``mask`` is False: in the weight itself, or, for a
    layer pruned with ``torch.nn.utils.prune``, in its mask (combined with the mask it has)."""
    import torch
    import torch.nn.utils.prune as torch_prune

    if hasattr(conv, "weight_orig") and hasattr(conv, "weight_mask"):
        with torch.enable_grad():  # the pruning hook rebuilds the weight from the new mask
            torch_prune.custom_from_mask(conv, "weight", mask)
    else:
        conv.weight.masked_fill_(~mask, 0.0)


def _paired(modules, densities, network: str, what: str):
    if len(modules) != len(densities):
        raise ArgumentError(f"{network} has {len(modules)} {what}, Deep Compression lists "
                            f"{len(densities)}")
    return list(zip(modules, densities))


# Fraction of weights kept per convolution in Deep Compression (Han, Mao, Dally, ICLR 2016,
# Tables 4 and 5), in the networks' order of convolutions.
DEEP_COMPRESSION_DENSITY = {
    "alexnet": (0.84, 0.38, 0.35, 0.37, 0.37),
    "vgg16": (0.58, 0.22, 0.34, 0.36, 0.53, 0.24, 0.42, 0.32, 0.27, 0.34, 0.35, 0.29, 0.36),
}
# ... and per fully-connected layer (fc6, fc7, fc8)
DEEP_COMPRESSION_FC_DENSITY = {"alexnet": (0.09, 0.09, 0.25), "vgg16": (0.03, 0.04, 0.23)}


def deep_compression(model, network: str, layers: str = "conv"):
    """Prunes the convolutions of ``model`` (an ``alexnet`` or ``vgg16`` of ``models.build``),
    and with ``layers="all"`` its fully-connected layers too, by magnitude to the per-layer
    sparsities Deep Compression published."""
    if layers not in ("conv", "all"):
        raise ArgumentError(f"layers must be 'conv' or 'all', got {layers!r}")
    if network not in DEEP_COMPRESSION_DENSITY:
        raise ArgumentError(f"Deep Compression sparsities are known for "
                         f"{', '.join(DEEP_COMPRESSION_DENSITY)}, not {network!r}")
    pairs = _paired(_layers(model, "conv"), DEEP_COMPRESSION_DENSITY[network], network,
                    "convolutions")
    if layers == "all":
        pairs += _paired(_layers(model, "linear"), DEEP_COMPRESSION_FC_DENSITY[network], network,
                         "fully-connected layers")
    import torch

    with torch.no_grad():
        for conv, density in pairs:
            kept = prune_array(_magnitudes(conv), 1.0 - density) != 0
            _keep(conv, torch.from_numpy(kept.reshape(conv.weight.shape)).to(conv.weight.device))
    return model
