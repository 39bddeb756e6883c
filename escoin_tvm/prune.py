"""Magnitude pruning: zero the smallest weights of a tensor or of a model's convolutions."""
from __future__ import annotations

import numpy as np


def prune_array(weight: np.ndarray, sparsity: float) -> np.ndarray:
    """A copy of ``weight`` with the ``round(sparsity * size)`` smallest-magnitude entries zeroed."""
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    flat = np.array(weight, dtype=weight.dtype).reshape(-1)
    n_zero = int(round(sparsity * flat.size))
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
        raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
    convs = [m for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and m.weight.numel() >= min_params]
    with torch.no_grad():
        if scope == "layer":
            for conv in convs:
                pruned = prune_array(conv.weight.detach().cpu().numpy(), sparsity)
                conv.weight.copy_(torch.from_numpy(pruned))
        elif convs:
            magnitudes = torch.cat([c.weight.detach().abs().reshape(-1).cpu() for c in convs])
            n_zero = int(round(sparsity * magnitudes.numel()))
            if n_zero:
                threshold = torch.kthvalue(magnitudes, n_zero).values
                for conv in convs:
                    conv.weight.masked_fill_(conv.weight.abs() <= threshold, 0.0)
    return model


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
        raise ValueError(f"Deep Compression sparsities are known for "
                         f"{', '.join(DEEP_COMPRESSION_DENSITY)}, not {network!r}")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    densities = DEEP_COMPRESSION_DENSITY[network]
    if len(convs) != len(densities):
        raise ValueError(f"{network} has {len(convs)} convolutions, Deep Compression lists "
                         f"{len(densities)}")
    with torch.no_grad():
        for conv, density in zip(convs, densities):
            pruned = prune_array(conv.weight.detach().cpu().numpy(), 1.0 - density)
            conv.weight.copy_(torch.from_numpy(pruned))
    return model
