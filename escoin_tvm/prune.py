"""Magnitude pruning: zero the smallest weights of a tensor or of a model's convolutions.

A target sparsity is always reached: the count of zeros is rounded up. A layer already pruned
with ``torch.nn.utils.prune`` (its weight recomputed from ``weight_orig * weight_mask`` before
every call) is pruned through its mask, so the pruning stays visible to the hook.
"""
from __future__ import annotations

import math

import numpy as np

from .errors import ArgumentError


def zero_count(sparsity: float, size: int) -> int:
    """The zeros a tensor of ``size`` entries needs to reach ``sparsity``: rounded up (after
    rounding away the float error of the product, so that 0.9 of 10 is 9)."""
    return min(size, math.ceil(round(sparsity * size, 6)))


def check_sparsity(sparsity) -> None:
    """Refuses a sparsity that is not a number in [0, 1]."""
    if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or \
            not 0.0 <= sparsity <= 1.0:
        raise ArgumentError(f"sparsity must be a number in [0, 1], got {sparsity!r}")


def prune_array(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``weight`` with its ``zero_count(sparsity, size)`` smallest-magnitude entries
    zeroed."""
    check_sparsity(sparsity)
    flat = np.array(weight, dtype=weight.dtype).reshape(-1)
    n_zero = zero_count(sparsity, flat.size)
    if n_zero:
        flat[np.argsort(np.abs(flat), kind="stable")[:n_zero]] = 0
    return flat.reshape(weight.shape)


def magnitude(model, sparsity: float, *, scope: str = "layer", min_params: int = 0):
    """Prunes every ``torch.nn.Conv2d`` of ``model`` in place and returns the model.

    ``scope="layer"`` prunes each convolution to ``sparsity``; ``scope="global"`` ranks the
    weights of all convolutions together, so layers end at different sparsities. Convolutions
    with fewer than ``min_params`` weights (e.g. a network's first layer) are left dense."""
    import torch

    if scope not in ("layer", "global"):
        raise ArgumentError(f"scope must be 'layer' or 'global', got {scope!r}")
    check_sparsity(sparsity)
    convs = [m for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= min_params]
    with torch.no_grad():
        if scope == "layer":
            for conv in convs:
                pruned = prune_array(conv.weight.detach().cpu().numpy(), sparsity)
                _keep(conv, torch.from_numpy(pruned != 0).to(conv.weight.device))
        elif convs:
            magnitudes = torch.cat([c.weight.detach().abs().reshape(-1).cpu() for c in convs])
            n_zero = zero_count(sparsity, magnitudes.numel())
            if n_zero:
                threshold = torch.kthvalue(magnitudes, n_zero).values
                for conv in convs:
                    _keep(conv, conv.weight.detach().abs() > threshold.to(conv.weight.device))
    return model


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


# Fraction of weights kept per convolution in Deep Compression (Han, Mao, Dally, ICLR 2016,
# Tables 4 and 5), in the networks' order of convolutions.
DEEP_COMPRESSION_DENSITY = {
    "alexnet": (0.84, 0.38, 0.35, 0.37, 0.37),
    "vgg16": (0.58, 0.22, 0.34, 0.36, 0.53, 0.24, 0.42, 0.32, 0.27, 0.34, 0.35, 0.29, 0.36),
}


def deep_compression(model, network: str):
    """Prunes the convolutions of ``model`` (an ``alexnet`` or ``vgg16`` of ``models.build``)
    by magnitude to the per-layer sparsities Deep Compression published."""
    import torch

    if network not in DEEP_COMPRESSION_DENSITY:
        raise ArgumentError(f"Deep Compression sparsities are known for "
                         f"{', '.join(DEEP_COMPRESSION_DENSITY)}, not {network!r}")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    densities = DEEP_COMPRESSION_DENSITY[network]
    if len(convs) != len(densities):
        raise ArgumentError(f"{network} has {len(convs)} convolutions, Deep Compression lists "
                         f"{len(densities)}")
    with torch.no_grad():
        for conv, density in zip(convs, densities):
            pruned = prune_array(conv.weight.detach().cpu().numpy(), 1.0 - density)
            _keep(conv, torch.from_numpy(pruned != 0).to(conv.weight.device))
    return model
