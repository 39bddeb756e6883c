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

    if scope not in ("layer", "global"):
        raise ArgumentError(f"scope must be 'layer' or 'global', got {scope!r}")
    sparsity = check_sparsity(sparsity)
    min_params = _count(min_params, "min_params")
    convs = [m for m in _layers(model, layers) if m.weight.numel() >= min_params]
    with torch.no_grad():
        groups = [[conv] for conv in convs] if scope == "layer" else [convs] if convs else []
        for group in groups:
            weights = [_magnitudes(conv) for conv in group]
            kept = prune_array(np.concatenate(weights), sparsity) != 0
            for conv, mask in zip(group, np.split(kept, np.cumsum([w.size for w in weights])[:-1])):
                _keep(conv, torch.from_numpy(mask.reshape(conv.weight.shape))
                      .to(conv.weight.device))
    return model


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
