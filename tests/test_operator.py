"""The sparse direct convolution against PyTorch, on the CPU (LLVM), and its CUDA code."""
import dataclasses

import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm.support import dtypes
from cases import CASES
from helpers import assert_conv_close, random_weight

CUDA = {"kind": "cuda", "arch": "sm_90"}


def build(case, rng, target):
    weight = random_weight(rng, case.weight_shape, case.sparsity)
    bias = rng.standard_normal(case.weight_shape[0]).astype(np.float32) if case.bias else None
    kernel = escoin_tvm.build_sparse_conv2d(weight, case.input_shape, bias=bias, relu=case.relu,
                                            target=target, **case.conv_args())
    return kernel, weight, bias


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cpu_matches_pytorch(case):
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    kernel, weight, bias = build(case, rng, "llvm")
    x = rng.standard_normal(case.input_shape).astype(np.float32)
    out = kernel(x)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    assert_conv_close(out, x, weight, bias=bias, relu=case.relu, **case.conv_args())


def test_channels_with_no_nonzero_give_bias_only():
    rng = np.random.default_rng(1)
    weight = random_weight(rng, (6, 4, 3, 3), 0.5)
    weight[[0, 3, 5]] = 0  # whole output channels pruned away
    bias = rng.standard_normal(6).astype(np.float32)
    kernel = escoin_tvm.build_sparse_conv2d(weight, (2, 4, 8, 8), bias=bias, padding=1)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    out = kernel(x)
    for k in (0, 3, 5):
        assert np.array_equal(out[:, k], np.full((2, 8, 8), bias[k], np.float32))
    assert_conv_close(out, x, weight, bias=bias, padding=1)


def test_torch_in_torch_out():
    rng = np.random.default_rng(2)
    weight = torch.from_numpy(random_weight(rng, (8, 4, 3, 3), 0.7))
    kernel = escoin_tvm.build_sparse_conv2d(weight, (1, 4, 6, 6), padding=1, stride=2)
    x = torch.randn(1, 4, 6, 6)
    out = kernel(x)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 8, 3, 3)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, weight, padding=1, stride=2),
                               rtol=1e-5, atol=1e-5)


def test_repeated_calls_do_not_share_output():
    rng = np.random.default_rng(3)
    kernel = escoin_tvm.build_sparse_conv2d(random_weight(rng, (4, 4, 1, 1), 0.5), (1, 4, 3, 3))
    a = kernel(np.ones((1, 4, 3, 3), np.float32))
    b = kernel(np.zeros((1, 4, 3, 3), np.float32))
    assert np.abs(a).sum() > 0 and not np.abs(b).any()


@pytest.mark.parametrize("case", [c for c in CASES if c.name in {
    "3x3_pad1", "5x5_pad2_bias_relu", "11x11_stride4_odd", "dilation_2x3", "groups2_alexnet",
    "depthwise", "batch5", "spatial_1x1", "asymmetric_pad", "sparsity100_bias_only",
    "1x1_stride2_odd_bias_relu", "3x3_valid_groups2_dilation2"}],
    ids=lambda c: c.name)
def test_cuda_code_generates(case):
    """On a GPU-less machine the CUDA kernel still generates and compiles with nvcc."""
    kernel, _, _ = build(case, np.random.default_rng(0), {"kind": "cuda", "arch": "sm_90"})
    source = kernel.source
    assert "__global__" in source and "__shared__" in source
    # the register tile must live in registers: its indices are constants after unrolling
    assert "sparse_conv_local_ptr[((" not in source


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_gpu_matches_pytorch(case):
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(abs(hash(case.name)) % 2**32)
    kernel, weight, bias = build(case, rng, "cuda")
    x = torch.randn(case.input_shape, device="cuda")
    out = kernel(x)
    assert out.is_cuda and out.shape == kernel.spec.output_shape
    assert_conv_close(out.cpu().numpy(), x.cpu().numpy(), weight, bias=bias, relu=case.relu,
                      **case.conv_args())
    numpy_out = kernel(x.cpu().numpy())  # host arrays are copied to the GPU and back
    np.testing.assert_array_equal(numpy_out, out.cpu().numpy())


@pytest.mark.gpu
def test_gpu_call_runs_on_torchs_current_stream_and_in_cuda_graphs():
    """A call on torch tensors launches on PyTorch's current stream: it waits for the work
    queued before it on a side stream, and it is captured into a CUDA graph."""
    torch.backends.cudnn.allow_tf32 = False
    rng = np.random.default_rng(11)
    weight = torch.from_numpy(random_weight(rng, (32, 16, 3, 3), 0.9)).cuda()
    kernel = escoin_tvm.build_sparse_conv2d(weight.cpu(), (2, 16, 15, 15), padding=1,
                                            target="cuda", device="cuda")
    source, x = torch.randn(2, 16, 15, 15, device="cuda"), torch.zeros(2, 16, 15, 15, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)  # the copy lands long after a launch on another stream
        x.copy_(source)
        out = kernel(x)
    torch.cuda.synchronize()
    expected = torch.nn.functional.conv2d(source, weight, padding=1)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)

    static = torch.zeros_like(source)
    kernel(static)  # warm up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = kernel(static)
    static.copy_(source)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(captured, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [c for c in CASES if c.name in {
    "5x5_pad2_bias_relu", "7x7_stride2_odd", "groups2_alexnet", "batch5", "dilation_2x3",
    "1x1_stride2_odd_bias_relu", "3x3_valid_groups2_dilation2"}],
    ids=lambda c: c.name)
def test_sum_over_a_larger_domain_stores_the_output_only(case):
    """The GPU kernels sum over images and rows rounded up to their register tile
    (operator.sparse_conv2d_te's ``domain``): extra images read zeros, extra rows read in-bounds
    leftovers (an in-place kernel: the last real image and row again), and only the output is
    stored. Checked here with the CPU schedule."""
    import tvm
    from tvm import s_tir

    from escoin_tvm.kernels.conv2d.operator import (Epilogue,
                                                    ell_arrays,
                                                    kernel_input_shape,
                                                    sparse_conv2d_primfunc)
    from escoin_tvm.kernels.conv2d.knobs import default_cpu_config
    from escoin_tvm.kernels.conv2d.schedule_cpu import schedule_cpu
    from escoin_tvm.kernels.conv_spec import Conv2dSpec
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    rng = np.random.default_rng(7)
    weight = random_weight(rng, case.weight_shape, case.sparsity)
    bias = rng.standard_normal(case.weight_shape[0]).astype(np.float32) if case.bias else None
    spec = Conv2dSpec.create(case.input_shape, case.weight_shape, **case.conv_args())
    offsets, values = ell_arrays(spec, EscoinWeight.from_dense(weight, spec))
    domain = (spec.batch + 3, spec.out_h + 3)
    func = sparse_conv2d_primfunc(spec, offsets.shape[1], Epilogue(case.bias, case.relu), domain)
    lib = tvm.compile(schedule_cpu(s_tir.Schedule(func), default_cpu_config(spec)).mod, "llvm")
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in [x.reshape(kernel_input_shape(spec)), offsets, values]
            + ([bias] if case.bias else [])]
    out = tvm.runtime.empty(spec.output_shape, "float32", dev)
    lib["main"](*args, out)
    assert_conv_close(out.numpy(), x, weight, bias=bias, relu=case.relu, **case.conv_args())
    with pytest.raises(ValueError, match="smaller than the output"):
        sparse_conv2d_primfunc(spec, offsets.shape[1], domain=(spec.batch, spec.out_h - 1))


HALF_CASES = [c for c in CASES if c.name in ("3x3_pad1", "5x5_pad2_bias_relu", "1x7", "dilation2",
                                            "groups2_alexnet", "depthwise", "batch5",
                                            "1x1_stride2_odd_bias_relu", "sparsity100_bias_only")]


def half_case(case, dtype, rng):
    """The case's weight, bias and input in ``dtype`` (torch tensors) and as float64 values."""
    weight = torch.from_numpy(random_weight(rng, case.weight_shape, case.sparsity)).to(dtype)
    bias = rng.standard_normal(case.weight_shape[0]).astype(np.float32) if case.bias else None
    x = torch.randn(case.input_shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    return weight, bias, x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", HALF_CASES, ids=lambda c: c.name)
def test_half_precision_on_the_cpu_matches_float64(case, dtype):
    """Half-precision inputs and weights, float32 sums, a half output rounded once."""
    weight, bias, x = half_case(case, dtype, np.random.default_rng(5))
    kernel = escoin_tvm.build_sparse_conv2d(weight, case.input_shape, bias=bias, relu=case.relu,
                                            **case.conv_args())
    out = kernel(x)
    assert out.dtype == dtype and kernel.dtype == str(dtype).replace("torch.", "")
    assert_conv_close(out.float().numpy(), x.float().numpy(), weight.float().numpy(),
                      dtype=kernel.dtype, bias=bias, relu=case.relu, **case.conv_args())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_cuda_code_generates(dtype):
    case = HALF_CASES[1]
    weight, bias, _ = half_case(case, getattr(torch, dtype), np.random.default_rng(5))
    kernel = escoin_tvm.build_sparse_conv2d(weight, (16, *case.input_shape[1:]), bias=bias,
                                            relu=True, target=CUDA, **case.conv_args())
    assert "__global__" in kernel.source and ("half" in kernel.source or "bfloat16" in kernel.source)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", HALF_CASES, ids=lambda c: c.name)
def test_half_precision_on_the_gpu_matches_float64(case, dtype):
    weight, bias, x = half_case(case, dtype, np.random.default_rng(5))
    kernel = escoin_tvm.build_sparse_conv2d(weight, case.input_shape, bias=bias, relu=case.relu,
                                            target="cuda", **case.conv_args())
    out = kernel(x.cuda())
    assert out.dtype == dtype and out.is_cuda
    assert_conv_close(out.float().cpu().numpy(), x.float().numpy(), weight.float().numpy(),
                      dtype=kernel.dtype, bias=bias, relu=case.relu, **case.conv_args())


@pytest.mark.parametrize("bad", [np.float64, np.int32])
def test_unsupported_dtypes_are_dtype_errors(bad):
    with pytest.raises(escoin_tvm.DTypeError, match="Escoin kernels take float32, float16, "
                                                    "bfloat16"):
        escoin_tvm.build_sparse_conv2d(np.ones((2, 2, 3, 3), bad), (1, 2, 5, 5))


@pytest.mark.parametrize("padding, in_place", [(0, True), (1, False), ((0, 0, 1, 0), False)])
def test_unpadded_convolution_reads_its_input_in_place(padding, in_place):
    """Without padding there is nothing to copy: no pad stage, the data parameter is the input
    flattened per image, and the ELL padding points at real taps instead of a zero channel."""
    from escoin_tvm.kernels.conv2d.operator import PAD_BLOCK, kernel_input_shape, reads_in_place
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    spec = Conv2dSpec.create((2, 4, 6, 6), (8, 4, 3, 3), padding=padding)
    assert reads_in_place(spec) == in_place
    assert kernel_input_shape(spec) == ((2, 4 * 36) if in_place else (2, 4, 6, 6))
    kernel = escoin_tvm.build_sparse_conv2d(random_weight(np.random.default_rng(1), (8, 4, 3, 3), 0.8),
                                            (2, 4, 6, 6), padding=padding)
    assert (PAD_BLOCK in kernel.source) != in_place


BLOCKED_CASES = ["1x1", "5x5_pad2_bias_relu", "batch5", "depthwise", "groups2_alexnet",
                 "1x1_stride2_odd_bias_relu", "3x3_valid_groups2_dilation2", "dilation_2x3"]


def _blocked_kernel(case, dtype, images, target, batch=None):
    """The case's kernel (at ``batch`` images) with its images blocked ``images`` at a time."""
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig

    weight, bias, _ = half_case(case, dtype, np.random.default_rng(7))
    shape = (batch or case.input_shape[0], *case.input_shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    config = GpuConfig(threads_x=8, threads_y=2, rows_per_thread=2, channels_per_thread=2,
                       images_per_thread=images, chunk=8, block_images=True)
    kernel = escoin_tvm.build_sparse_conv2d(weight, shape, bias=bias, relu=case.relu,
                                            target=target, config=config, **case.conv_args())
    return kernel, weight, bias, x


@pytest.mark.parametrize("dtype, images, vector", [
    (torch.float32, 4, "float4"), (torch.float32, 2, "float2"), (torch.float16, 4, "half4"),
    (torch.float16, 2, "half2"), (torch.bfloat16, 4, "nv_bfloat164")])
@pytest.mark.parametrize("case, copy", [("5x5_pad2_bias_relu", "data_pad"), ("1x1", "data_global")])
def test_blocked_images_load_a_vector_per_tap(case, copy, dtype, images, vector):
    """block_images: the input copy is laid out (N/v, C*Hp*Wp, v), and the kernel loads a
    thread's v images at a tap as one vector (a padded kernel's copy is its pad stage; an
    in-place one gets a copy)."""
    case = next(c for c in CASES if c.name == case)
    kernel = _blocked_kernel(case, dtype, images, CUDA, batch=8)[0]
    assert f"*({vector}*)({copy}_ptr + " in kernel.source
    assert "sparse_conv_local_ptr[((" not in kernel.source


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, images", [
    (torch.float32, 2), (torch.float32, 3), (torch.float32, 4), (torch.float16, 2),
    (torch.float16, 4), (torch.bfloat16, 4)])
@pytest.mark.parametrize("case", [c for c in CASES if c.name in BLOCKED_CASES],
                         ids=lambda c: c.name)
def test_blocked_images_on_the_gpu_match_float64(case, images, dtype):
    """Blocked images, on batches the block divides or not (a padded kernel rounds its copy up
    with zero images; an in-place one keeps its plain reads)."""
    kernel, weight, bias, x = _blocked_kernel(case, dtype, images, "cuda", batch=5)
    out = kernel(x.cuda())
    assert out.dtype == dtype
    assert_conv_close(out.float().cpu().numpy(), x.float().numpy(), weight.float().numpy(),
                      dtype=kernel.dtype, bias=bias, relu=case.relu, **case.conv_args())


def _split_k_kernel(case, split, target):
    """The GPU schedule with each row's non-zeros split over ``split`` blocks (schedule_gpu's
    split_k), built for ``target``; returns (executable, weight, bias, spec, constants)."""
    import tvm

    from escoin_tvm.kernels.conv2d.kernel import scheduled_module
    from escoin_tvm.kernels.conv2d.operator import Epilogue
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv_spec import Conv2dSpec
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    rng = np.random.default_rng(3)
    weight = random_weight(rng, case.weight_shape, case.sparsity)
    bias = rng.standard_normal(case.weight_shape[0]).astype(np.float32) if case.bias else None
    spec = Conv2dSpec.create(case.input_shape, case.weight_shape, **case.conv_args())
    config = GpuConfig(threads_x=8, threads_y=2, channel_threads=2, rows_per_thread=2,
                       channels_per_thread=2, images_per_thread=2 if spec.batch > 1 else 1, chunk=8)
    target = resolve_target(target)
    mod, (offsets, values), _ = scheduled_module(spec, EscoinWeight.from_dense(weight, spec),
                                                 Epilogue(case.bias, case.relu), target, config,
                                                 split_k=split)
    exe = tvm.compile(mod, target=target)
    return exe, weight, bias, spec, [offsets, values] + ([bias] if case.bias else [])


SPLIT_CASES = [c for c in CASES if c.name in {
    "3x3_pad1", "5x5_pad2_bias_relu", "groups2_alexnet", "batch5", "1x1_stride2_odd_bias_relu"}]


@pytest.mark.parametrize("split", [2, 4])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c.name)
def test_split_k_cuda_code_generates(case, split):
    """split_k: partial sums over blocks (rfactor) and a second kernel that sums them."""
    exe = _split_k_kernel(case, split, {"kind": "cuda", "arch": "sm_90"})[0]
    source = exe.mod.imports[0].inspect_source()
    assert "sparse_conv_rf" in source and "sparse_conv_rf_local_ptr[((" not in source


@pytest.mark.gpu
@pytest.mark.parametrize("split", [2, 4])
@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c.name)
def test_split_k_gpu_matches_pytorch(case, split):
    import tvm

    from escoin_tvm.kernels.conv2d.operator import kernel_input_shape

    exe, weight, bias, spec, constants = _split_k_kernel(case, split, "cuda")
    dev = tvm.cuda(0)
    x = np.random.default_rng(5).standard_normal(spec.input_shape).astype(np.float32)
    out = tvm.runtime.empty(spec.output_shape, "float32", dev)
    exe["main"](*[tvm.runtime.tensor(a, dev) for a in [x.reshape(kernel_input_shape(spec))] + constants],
                out)
    assert_conv_close(out.numpy(), x, weight, bias=bias, relu=case.relu, **case.conv_args())


def test_split_k_needs_a_gpu_target():
    from escoin_tvm.kernels.conv2d.kernel import scheduled_module
    from escoin_tvm.kernels.conv2d.operator import Epilogue
    from escoin_tvm.kernels.conv_spec import Conv2dSpec
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    spec = Conv2dSpec.create((1, 4, 6, 6), (8, 4, 3, 3), padding=1)
    dense = random_weight(np.random.default_rng(0), (8, 4, 3, 3), 0.5)
    weight = EscoinWeight.from_dense(dense, spec)
    with pytest.raises(ValueError, match="split_k=2 needs a GPU target"):
        scheduled_module(spec, weight, Epilogue(), resolve_target("llvm"), split_k=2)


def test_half_precision_defaults_block_four_images_from_batch_four():
    """The untuned heuristic blocks 4 images in half precision from batch 4 (keeping the
    accumulators' count), never in float32, and not where it could not take effect (an
    in-place kernel whose batch 4 does not divide)."""
    from escoin_tvm.kernels.conv2d.schedule_gpu import blocks_images
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    def config(batch, dtype, padding=1):
        return default_gpu_config(Conv2dSpec.create((batch, 64, 28, 28), (64, 64, 3, 3),
                                                    padding=padding), dtype)

    for dtype in ("float16", "bfloat16"):
        half, plain = config(16, dtype), config(16, "float32")
        assert half.block_images and half.images_per_thread == 4 and half.half_sums
        assert half.images_per_thread * half.channels_per_thread * half.rows_per_thread == \
            plain.images_per_thread * plain.channels_per_thread * plain.rows_per_thread
        assert not config(2, dtype).block_images
        assert not config(6, dtype, padding=0).block_images
        assert config(8, dtype, padding=0).block_images
    assert not plain.block_images
    spec = Conv2dSpec.create((6, 64, 28, 28), (64, 64, 3, 3))
    assert not blocks_images(spec, config(16, "float16"))


HALF_SUM_CASES = ["5x5_pad2_bias_relu", "batch5", "1x1", "groups2_alexnet",
                  "1x1_stride2_odd_bias_relu", "dilation_2x3"]


def _half_sums_kernel(case, dtype, target, batch=8, images=4, threads_x=None):
    """The case's kernel with half sums on a tile of ``images`` blocked images (threads fitted
    by with_half_sums, or ``threads_x`` over columns), and its weight, bias and input."""
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig
    from escoin_tvm.kernels.conv2d.schedule_gpu import with_half_sums
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    weight, bias, _ = half_case(case, dtype, np.random.default_rng(8))
    shape = (batch, *case.input_shape[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3)).to(dtype)
    spec = Conv2dSpec.create(shape, case.weight_shape, **case.conv_args())
    config = with_half_sums(spec, GpuConfig(threads_x=8, threads_y=2, rows_per_thread=2,
                                            channels_per_thread=2, images_per_thread=images,
                                            chunk=8, block_images=True), dtypes.name_of(dtype))
    assert config is not None and config.half_sums
    if threads_x is not None:
        config = dataclasses.replace(config, threads_x=threads_x)
    kernel = escoin_tvm.build_sparse_conv2d(weight, shape, bias=bias, relu=case.relu,
                                            target=target, config=config, **case.conv_args())
    return kernel, weight, bias, x


@pytest.mark.parametrize("dtype, scalar, pair", [(torch.float16, "half", "half2"),
                                                 (torch.bfloat16, "nv_bfloat16", "nv_bfloat162")])
@pytest.mark.parametrize("case", ["5x5_pad2_bias_relu", "1x1"])
def test_half_sums_are_packed_fmas(case, dtype, scalar, pair):
    """half_sums: the chunk's sums are half-precision registers updated by one __hfma2 per pair
    of images, the inputs gathered into registers with one vector load per channel and row,
    and only the chunk sums are converted to float32 (not each value)."""
    case = next(c for c in CASES if c.name == case)
    kernel = _half_sums_kernel(case, dtype, CUDA)[0]
    source = kernel.source
    name = dtypes.name_of(dtype)
    assert f"*({pair}*)acc = __hfma2(" in source
    # chunk 8 x 2 channels x 2 rows x 2 pairs of images, each an unrolled call
    assert source.count(f"escoin_hfma2_{name}((&(partial_sum_local_ptr[") == 8 * 2 * 2 * 2
    assert f"{scalar}4*)(tap_local_ptr + " in source or f"{pair}*)(tap_local_ptr + " in source


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_sums_of_one_image_are_scalar_fmas(dtype):
    """half_sums on a tile of one image: the chunk's sums are half-precision registers updated
    by plain multiply-adds (no packed call), and each is converted to float32 once per chunk
    (8 non-zeros here) for its 2 channels x 2 rows, not once per value."""
    case = next(c for c in CASES if c.name == "5x5_pad2_bias_relu")
    kernel = _half_sums_kernel(case, dtype, CUDA, batch=1, images=1)[0]
    source = kernel.source
    assert "escoin_hfma2_" not in source and "__hfma2(" not in source
    assert source.count("] * tap_local_ptr[") == 8 * 2 * 2
    assert source.count("(float)partial_sum_local_ptr[") == 2 * 2
    # threads that do not tile the output: the scalar sums check their bounds instead
    source = _half_sums_kernel(case, dtype, CUDA, batch=1, images=1, threads_x=5)[0].source
    assert "partial_sum_local_ptr[0] = (partial_sum_local_ptr[0] + " in source
    assert "* 5) + ((int)threadIdx.x)) < 11)" in source  # 11 columns, blocks of 5 threads


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_sums_on_the_cpu_operator_match_float64(dtype):
    """The operator with half_chunk (its TE, unscheduled, on LLVM): runs of non-zeros summed
    in the half dtype, the runs in float32, within the bound of those roundings."""
    import tvm

    from escoin_tvm.support import dtypes as dt
    from escoin_tvm.kernels.conv2d.operator import (Epilogue, sparse_conv2d_primfunc,
                                                    weight_arrays)
    from escoin_tvm.kernels.conv_spec import Conv2dSpec
    from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

    rng = np.random.default_rng(4)
    spec = Conv2dSpec.create((3, 6, 7, 9), (5, 6, 3, 3), padding=1, stride=(1, 2))
    weight = random_weight(rng, spec.weight_shape, 0.6).astype(dt.numpy_dtype(dtype))
    arrays = weight_arrays(spec, EscoinWeight.from_dense(weight, spec), 4, half_chunk=4)
    func = sparse_conv2d_primfunc(spec, arrays[0].shape[1], Epilogue(relu=True), dtype=dtype,
                                  half_chunk=4)
    exe = tvm.compile(func, target="llvm")
    x = rng.standard_normal(spec.input_shape).astype(dt.numpy_dtype(dtype))
    dev = tvm.cpu()
    out = tvm.runtime.empty(spec.output_shape, dtype, dev)
    exe["main"](*[tvm.runtime.tensor(a, dev) for a in (x, *arrays)], out)
    assert_conv_close(out.numpy().astype(np.float64), x.astype(np.float64),
                      weight.astype(np.float64), dtype=dtype, half_chunk=4, relu=True,
                      padding=1, stride=(1, 2))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch, images, threads_x", [(8, 4, None), (5, 4, None),
                                                     (6, 2, None), (1, 1, None), (3, 1, None),
                                                     (1, 1, 5)])
@pytest.mark.parametrize("case", [c for c in CASES if c.name in HALF_SUM_CASES],
                         ids=lambda c: c.name)
def test_half_sums_on_the_gpu_match_float64(case, batch, images, threads_x, dtype):
    """Half sums on the GPU, on batches the blocked images divide or not, and of one image per
    thread on blocks that tile the output or not, within the bound of their half-precision
    roundings."""
    from escoin_tvm.kernels.conv2d.operator import reads_in_place
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    spec = Conv2dSpec.create(case.input_shape, case.weight_shape, **case.conv_args())
    if batch % images and reads_in_place(spec):
        pytest.skip("an in-place kernel blocks images only where they divide the batch")
    kernel, weight, bias, x = _half_sums_kernel(case, dtype, "cuda", batch, images, threads_x)
    out = kernel(x.cuda())
    assert out.dtype == dtype
    assert_conv_close(out.float().cpu().numpy(), x.float().numpy(), weight.float().numpy(),
                      dtype=kernel.dtype, half_chunk=kernel.config.chunk, bias=bias,
                      relu=case.relu, **case.conv_args())


@pytest.mark.parametrize("shape, weight_shape, conv_args", [
    ((16, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}),
    ((16, 32, 112, 112), (64, 32, 3, 3), {"padding": 1}),
    ((8, 96, 17, 13), (48, 96, 3, 3), {"padding": 1}),
    ((4, 40, 7, 7), (80, 40, 1, 1), {}),
    ((16, 48, 35, 35), (64, 48, 5, 5), {"padding": 2}),
    ((8, 24, 30, 30), (24, 24, 3, 3), {"padding": 1, "stride": 2}),
])
def test_with_half_sums_fits_threads_to_tile_the_output(shape, weight_shape, conv_args):
    """with_half_sums changes the threads over rows and columns so that the blocks tile the
    output (no bounds check on a block index, which tensorize cannot match), keeps about as
    many threads, and the result builds for CUDA; float32 and unblocked tiles get None."""
    import dataclasses

    from escoin_tvm.kernels.conv2d.schedule_gpu import blocks_images, tiles_divide, with_half_sums
    from escoin_tvm.kernels.conv2d.knobs import default_gpu_config
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    spec = Conv2dSpec.create(shape, weight_shape, **conv_args)
    base = default_gpu_config(spec, "float16")
    if not blocks_images(spec, base):
        base = dataclasses.replace(base, images_per_thread=4, block_images=True)
    fitted = with_half_sums(spec, base, "float16")
    assert fitted is not None and fitted.half_sums
    rows = -(-spec.out_h // fitted.rows_per_thread) * fitted.rows_per_thread
    images = -(-spec.batch // 4) * 4
    assert tiles_divide((images, spec.out_channels, rows, spec.out_w), fitted)
    assert fitted.threads >= base.threads // 4
    assert with_half_sums(spec, base, "float32") is None
    assert with_half_sums(spec, dataclasses.replace(base, block_images=False), "float16") is None
    weight = random_weight(np.random.default_rng(0), weight_shape, 0.9)
    kernel = escoin_tvm.build_sparse_conv2d(torch.from_numpy(weight).half(), shape, target=CUDA,
                                            config=fitted, **conv_args)
    assert "escoin_hfma2_float16(" in kernel.source


def test_half_sums_errors_name_the_requirement():
    """half_sums on a float32 kernel, on unblocked images, or on blocks that do not tile the
    output: an ArgumentError that says what half sums need."""
    from escoin_tvm.errors import ArgumentError
    from escoin_tvm.kernels.conv2d.schedule_gpu import GpuConfig

    weight = random_weight(np.random.default_rng(0), (8, 4, 3, 3), 0.5)
    tiled = dict(threads_x=8, threads_y=2, rows_per_thread=2, channels_per_thread=2,
                 images_per_thread=4, chunk=8, block_images=True, half_sums=True)
    for w, config, match in [
            (weight, GpuConfig(**tiled), "needs a half-precision kernel"),
            (weight.astype(np.float16), GpuConfig(**{**tiled, "block_images": False}),
             "blocked images in pairs"),
            (weight.astype(np.float16), GpuConfig(**{**tiled, "threads_x": 5}),
             "thread blocks that tile")]:
        with pytest.raises(ArgumentError, match=match):
            escoin_tvm.build_sparse_conv2d(w, (8, 4, 16, 16), padding=1, target=CUDA,
                                           config=config)
