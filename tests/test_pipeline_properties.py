"""Property-based tests of the whole compile pipeline: random small CNNs built from Conv2d,
BatchNorm, ReLU, pooling, residual adds, concatenation and a Linear head, with random
per-layer sparsities, compiled by escoin_tvm.compile and checked against PyTorch in float64.

Derandomized (the same networks every run) with a fixed example budget: 12 networks on the CPU
in CI, 40 on the GPU machine."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import escoin_tvm
from escoin_tvm.prune import prune_array


class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


class Concat(nn.Module):
    def __init__(self, left, right):
        super().__init__()
        self.left, self.right = left, right

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], dim=1)


@st.composite
def conv_block(draw, channels, size, same=False):
    """Conv2d [+ BatchNorm] [+ ReLU]; ``same`` keeps channels and size (residual bodies)."""
    kernel = draw(st.sampled_from([1, 3, 5]))
    dilation = 1 if same or kernel == 1 else draw(st.sampled_from([1, 2]))
    stride = 1 if same else draw(st.sampled_from([1, 1, 2]))
    reach = dilation * (kernel - 1)
    padding = reach // 2 if same else draw(st.integers(0, reach // 2 + 1))
    if size + 2 * padding < reach + 1:
        padding = reach  # keep the output at least 1x1
    groups = draw(st.sampled_from([g for g in (1, 2, channels) if channels % g == 0]))
    out = channels if same else groups * draw(st.integers(1, 4))
    layers = [nn.Conv2d(channels, out, kernel, stride=stride, padding=padding, dilation=dilation,
                        groups=groups, bias=draw(st.booleans()))]
    if draw(st.booleans()):
        layers.append(nn.BatchNorm2d(out))
    if draw(st.booleans()):
        layers.append(nn.ReLU())
    size = (size + 2 * padding - reach - 1) // stride + 1
    return nn.Sequential(*layers), out, size


@st.composite
def networks(draw):
    channels, size = draw(st.integers(1, 4)), draw(st.integers(5, 12))
    shape = (draw(st.integers(1, 2)), channels, size, size)
    blocks = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "residual", "concat", "pool"]))
        if kind == "conv":
            block, channels, size = draw(conv_block(channels, size))
        elif kind == "residual":
            body, _, _ = draw(conv_block(channels, size, same=True))
            block = Residual(body)
        elif kind == "concat":
            left, c1, _ = draw(conv_block(channels, size, same=True))
            right, c2, _ = draw(conv_block(channels, size, same=True))
            block, channels = Concat(left, right), c1 + c2
        elif size >= 2:
            block = draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)]))
            size //= 2
        else:
            continue
        blocks.append(block)
    classes = draw(st.integers(1, 10))
    model = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))
    return model, shape, draw(st.integers(0, 2**16)), draw(st.sampled_from([0.0, 0.5, 0.7]))


def randomize(model, seed):
    """Random weights, random per-layer sparsities (0 to 1), random batch-norm statistics."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                sparsity = float(rng.choice([0.0, 0.5, 0.8, 0.9, 0.97, 1.0]))
                module.weight.copy_(torch.from_numpy(prune_array(module.weight.numpy(), sparsity)))
            elif isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_()
                module.bias.normal_()
    return model.eval()


def check(case, target, device="cpu"):
    model, shape, seed, threshold = case
    model = randomize(model, seed)
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))
    compiled = escoin_tvm.compile(model, (x,), target=target, sparsity_threshold=threshold)
    with torch.no_grad():
        expected = model.double()(x.double()).numpy()
    out = compiled(x.to(device)).cpu().numpy()
    assert out.shape == expected.shape
    tolerance = 1e-4 * (np.abs(expected).max() + 1.0)
    assert np.abs(out - expected).max() <= tolerance, compiled.report()
    return compiled


SETTINGS = dict(deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(max_examples=12, **SETTINGS)
@given(networks())
def test_random_networks_on_cpu(case):
    check(case, "llvm")


@pytest.mark.gpu
@settings(max_examples=40, **SETTINGS)
@given(networks())
def test_random_networks_on_gpu(case):
    torch.backends.cudnn.allow_tf32 = False
    check(case, "cuda", device="cuda")
