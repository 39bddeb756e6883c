"""Pruning hits its sparsity exactly, in every scope and dtype, and takes numpy scalars."""
import numpy as np
import pytest
import torch

from escoin_tvm import ArgumentError, prune


def ones_model(dtype=torch.float32):
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 2, 1, bias=False),
                                torch.nn.Conv2d(2, 2, 3, bias=False)).to(dtype)
    for conv in model:
        torch.nn.init.ones_(conv.weight)
    return model


def zeros(model):
    return sum(int((c.weight == 0).sum()) for c in model), sum(c.weight.numel() for c in model)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_equal_weights_are_pruned_to_the_sparsity_not_past_it(scope, dtype):
    """All-equal weights tie at the cut-off: exactly zero_count of them go, the first in order
    (global: the first layer's first)."""
    model = prune.magnitude(ones_model(dtype), 0.5, scope=scope)
    zero, total = zeros(model)
    if scope == "global":
        assert zero == prune.zero_count(0.5, total) == 20
        assert int((model[0].weight == 0).sum()) == 4  # the first layer's, all of them
    else:
        assert [int((c.weight == 0).sum()) for c in model] == [2, 18]
    assert all(c.weight.dtype == dtype for c in model)


def test_global_pruning_ranks_all_layers_together():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.Conv2d(8, 8, 3))
    model[1].weight.data *= 10  # the second layer's weights are larger: it keeps more
    prune.magnitude(model, 0.8, scope="global")
    zero, total = zeros(model)
    assert zero == prune.zero_count(0.8, total)
    assert (model[0].weight == 0).float().mean() > (model[1].weight == 0).float().mean()


def test_numpy_and_torch_scalars_are_sparsities_and_bad_ones_are_named():
    for sparsity in (np.float32(0.9), np.float64(0.9), torch.tensor(0.9).item()):
        model = prune.magnitude(ones_model(), sparsity)
        assert zeros(model)[0] == prune.zero_count(0.9, 4) + prune.zero_count(0.9, 36) == 37
    for bad in ("0.9", None, 1.5, float("nan"), True):
        with pytest.raises(ArgumentError, match="sparsity must be a number in"):
            prune.magnitude(ones_model(), bad)
    with pytest.raises(ArgumentError, match="min_params must be an int"):
        prune.magnitude(ones_model(), 0.5, min_params=-1)
