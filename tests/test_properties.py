"""Property-based tests: random convolutions, checked against PyTorch (hypothesis).

The CI budget is fixed (derandomized examples, so every run tries the same configurations);
the GPU variant runs more of them on the GPU machine."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import escoin_tvm
from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from helpers import assert_conv_close, random_weight

CI = settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans()) and groups == 1
    cin_g = 1 if depthwise else draw(st.integers(1, 5))
    groups = draw(st.integers(2, 6)) if depthwise else groups
    cout_g = draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(4))
    shape = (draw(st.integers(1, 3)), cin_g * groups, draw(st.integers(1, 12)),
             draw(st.integers(1, 12)))
    try:
        spec = Conv2dSpec.create(shape, (cout_g * groups, cin_g, kh, kw), stride=stride,
                                 padding=padding, dilation=dilation, groups=groups)
    except escoin_tvm.ShapeError:
        assume(False)
    # GPU schedule knobs, including register tiles that do not divide the output (odd rows,
    # images, channels): the kernel then sums over a rounded-up domain and crops
    gpu = GpuConfig(threads_x=draw(st.sampled_from([8, 16, 32])),
                    threads_y=draw(st.sampled_from([1, 2, 4])),
                    channel_threads=draw(st.sampled_from([1, 2])),
                    channel_steps=draw(st.sampled_from([1, 2])),
                    rows_per_thread=draw(st.integers(1, 4)),
                    channels_per_thread=draw(st.integers(1, 3)),
                    images_per_thread=draw(st.integers(1, 3)),
                    chunk=draw(st.sampled_from([4, 8, 16])),
                    stage_weights=draw(st.booleans()), unroll=draw(st.booleans()),
                    block_images=draw(st.booleans()))
    return dict(spec=spec, sparsity=draw(st.sampled_from([0.0, 0.3, 0.5, 0.8, 0.95, 1.0])),
                scale=draw(st.sampled_from([1e-3, 1.0, 1e3])), bias=draw(st.booleans()),
                relu=draw(st.booleans()), seed=draw(st.integers(0, 2**16)),
                gpu=draw(st.sampled_from([None, gpu])))


def check(config, target, device="cpu"):
    spec = config["spec"]
    rng = np.random.default_rng(config["seed"])
    weight = random_weight(rng, spec.weight_shape, config["sparsity"], config["scale"])
    bias = rng.standard_normal(spec.out_channels).astype(np.float32) if config["bias"] else None
    args = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)
    kernel = escoin_tvm.build_sparse_conv2d(weight, spec.input_shape, bias=bias,
                                            relu=config["relu"], target=target,
                                            config=config["gpu"] if target == "cuda" else None,
                                            **args)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    out = kernel(torch.from_numpy(x).to(device)).cpu().numpy() if device != "cpu" else kernel(x)
    assert_conv_close(out, x, weight, bias=bias, relu=config["relu"], **args)
    return kernel


@CI
@given(conv_configs())
def test_random_convolutions_on_cpu(config):
    check(config, "llvm")


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_random_convolutions_generate_cuda(config):
    spec = config["spec"]
    weight = random_weight(np.random.default_rng(0), spec.weight_shape, config["sparsity"])
    kernel = escoin_tvm.build_sparse_conv2d(
        weight, spec.input_shape, stride=spec.stride, padding=spec.padding,
        dilation=spec.dilation, groups=spec.groups, target={"kind": "cuda", "arch": "sm_90"},
        config=config["gpu"])
    assert "__global__" in kernel.source


@pytest.mark.gpu
@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_random_convolutions_on_gpu(config):
    torch.backends.cudnn.allow_tf32 = False
    check(config, "cuda", device="cuda")
