"""The staged variant: each thread block copies its input window to shared memory, and the
weights' offsets point into that window. Checked against PyTorch: the operator itself on the CPU
(LLVM), the CUDA schedule's code here and its results on the GPU."""
import numpy as np
import pytest
import torch
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import escoin_tvm
from escoin_tvm.operator import Epilogue, sparse_conv2d_primfunc
from escoin_tvm.schedule.gpu import GpuConfig, default_staged_config
from escoin_tvm.spec import Conv2dSpec
from escoin_tvm.weight_format import EscoinWeight
from cases import CASES
from helpers import assert_conv_close, random_weight
from test_properties import conv_configs

SM90 = {"kind": "cuda", "arch": "sm_90"}


def run_staged_operator(spec, weight, x, tile, multiple=1):
    """The staged PrimFunc, unscheduled, on the CPU."""
    offsets, values = EscoinWeight.from_dense(weight, spec).to_tile_ell(
        spec.tile_input_hw(*tile), multiple)
    func = tvm.compile(sparse_conv2d_primfunc(spec, offsets.shape[1], Epilogue(), tile), "llvm")
    out = tvm.runtime.empty(spec.output_shape, "float32")
    func(tvm.runtime.tensor(x), tvm.runtime.tensor(offsets), tvm.runtime.tensor(values), out)
    return out.numpy()


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs(), st.integers(1, 6), st.integers(1, 9), st.sampled_from([1, 4]))
def test_staged_operator_matches_pytorch(config, tile_rows, tile_cols, multiple):
    """Tiles that divide the output or not, larger than it or a single pixel."""
    spec = config["spec"]
    rng = np.random.default_rng(config["seed"])
    weight = random_weight(rng, spec.weight_shape, config["sparsity"], config["scale"])
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    out = run_staged_operator(spec, weight, x, (tile_rows, tile_cols), multiple)
    assert_conv_close(out, x, weight, stride=spec.stride, padding=spec.padding,
                      dilation=spec.dilation, groups=spec.groups)


def test_tile_offsets_decode_to_the_weight():
    spec = Conv2dSpec.create((1, 6, 9, 9), (4, 3, 3, 2), padding=1, dilation=(2, 1), groups=2)
    weight = random_weight(np.random.default_rng(0), spec.weight_shape, 0.5)
    th, tw = spec.tile_input_hw(2, 3)
    assert (th, tw) == (2 - 1 + 2 * 2 + 1, 3 - 1 + 1 + 1)
    offsets, values = EscoinWeight.from_dense(weight, spec).to_tile_ell((th, tw), 4)
    assert offsets.shape[1] % 4 == 0
    dense = np.zeros_like(weight)
    for k in range(4):
        for offset, value in zip(offsets[k], values[k]):
            if value:
                c, rem = divmod(int(offset), th * tw)
                dense[k, c, rem // tw // 2, rem % tw] = value
            else:  # padding entries read the zero channel after the group's channels
                assert offset == 3 * th * tw
    np.testing.assert_array_equal(dense, weight)


def staged_kernel(case, rng, target):
    weight = random_weight(rng, case.weight_shape, case.sparsity)
    bias = rng.standard_normal(case.weight_shape[0]).astype(np.float32) if case.bias else None
    spec = Conv2dSpec.create(case.input_shape, case.weight_shape, **case.conv_args())
    kernel = escoin_tvm.build_sparse_conv2d(weight, case.input_shape, bias=bias, relu=case.relu,
                                            target=target, config=default_staged_config(spec, "sm_90"),
                                            **case.conv_args())
    assert kernel.config.stage_input
    return kernel, weight, bias


@pytest.mark.parametrize("case", CASES[::3], ids=lambda c: c.name)
def test_staged_cuda_code_generates(case):
    kernel, _, _ = staged_kernel(case, np.random.default_rng(0), SM90)
    source = kernel.source
    assert "extern __shared__" in source and "input_tile_shared_dyn" in source
    assert "sparse_conv_local_ptr[((" not in source  # the register tile stays in registers


def test_a_window_too_large_for_shared_memory_is_refused():
    weight = random_weight(np.random.default_rng(0), (8, 512, 3, 3), 0.9)
    config = GpuConfig(threads_x=32, threads_y=8, rows_per_thread=4, stage_input=True)
    with pytest.raises(ValueError, match="shared memory per block"):
        escoin_tvm.build_sparse_conv2d(weight, (1, 512, 56, 56), padding=1, target=SM90,
                                       config=config)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_staged_gpu_matches_pytorch(case):
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    kernel, weight, bias = staged_kernel(case, rng, "cuda")
    x = rng.standard_normal(case.input_shape).astype(np.float32)
    out = kernel(torch.from_numpy(x).cuda()).cpu().numpy()
    assert_conv_close(out, x, weight, bias=bias, relu=case.relu, **case.conv_args())


@st.composite
def staged_configs(draw):
    return GpuConfig(threads_x=draw(st.sampled_from([1, 4, 8, 32])),
                     threads_y=draw(st.sampled_from([1, 2, 4])),
                     channel_threads=draw(st.sampled_from([1, 2, 3])),
                     channel_steps=draw(st.sampled_from([1, 2])),
                     rows_per_thread=draw(st.sampled_from([1, 2, 3])),
                     channels_per_thread=draw(st.sampled_from([1, 2, 4])),
                     images_per_thread=draw(st.sampled_from([1, 2])),
                     chunk=draw(st.sampled_from([1, 4, 16])),
                     stage_weights=draw(st.booleans()), unroll=draw(st.booleans()),
                     stage_input=True)


@pytest.mark.gpu
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs(), staged_configs())
def test_random_staged_convolutions_on_gpu(config, knobs):
    torch.backends.cudnn.allow_tf32 = False
    spec = config["spec"]
    rng = np.random.default_rng(config["seed"])
    weight = random_weight(rng, spec.weight_shape, config["sparsity"], config["scale"])
    args = dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)
    kernel = escoin_tvm.build_sparse_conv2d(weight, spec.input_shape, target="cuda", config=knobs,
                                            **args)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    assert_conv_close(kernel(torch.from_numpy(x).cuda()).cpu().numpy(), x, weight, **args)
