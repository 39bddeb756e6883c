"""The vector-sparse family (blocks of output channels sharing their taps, for tensor cores): its
weight format, its operator on the CPU against PyTorch in float64, and ``prune.vectors``."""
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from escoin_tvm import ArgumentError, DTypeError, prune
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from escoin_tvm.kernels.vector_sparse.kernel import build_vector_sparse_conv2d
from escoin_tvm.kernels.vector_sparse.schedule_gpu import TensorCoreConfig
from escoin_tvm.kernels.vector_sparse.weight_format import VectorSparseWeight
from escoin_tvm.prune import prune_array
from escoin_tvm.support import dtypes
from helpers import assert_conv_close

SM_90 = {"kind": "cuda", "arch": "sm_90"}


def vector_pruned(rng, shape, sparsity, group, groups=1):
    """A weight pruned in vectors of ``group`` output channels (``prune.vectors``)."""
    conv = torch.nn.Conv2d(shape[1] * groups, shape[0], shape[2:], groups=groups, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(rng.standard_normal(shape).astype(np.float32)))
    prune.vectors(torch.nn.Sequential(conv), sparsity, group=group)
    return conv.weight.detach().numpy()


@pytest.mark.parametrize("group", [8, 16])
@pytest.mark.parametrize("reorder", [False, True])
@pytest.mark.parametrize("groups, out_channels", [(1, 40), (2, 24), (4, 8)])
def test_from_dense_and_to_dense_are_exact_inverses(group, reorder, groups, out_channels):
    rng = np.random.default_rng(0)
    for weight in (prune_array(rng.standard_normal((out_channels, 3, 3, 2)).astype(np.float32),
                               0.8),
                   vector_pruned(rng, (out_channels, 3, 3, 2), 0.8, group, groups),
                   np.zeros((out_channels, 3, 3, 2), np.float32)):
        spec = Conv2dSpec.create((1, 3 * groups, 7, 6), weight.shape, padding=(1, 0, 2, 1),
                                 dilation=(1, 2), groups=groups)
        encoded = VectorSparseWeight.from_dense(weight, spec, group, reorder=reorder)
        np.testing.assert_array_equal(encoded.to_dense(), weight)
        assert encoded.offsets.shape[1] % 16 == 0 and encoded.values.shape[2] == group
        assert sorted(encoded.slots.tolist()) == sorted(set(encoded.slots.tolist()))
        # channels in block order unless reordered or a group's last block has empty slots
        if not reorder and (groups == 1 or (out_channels // groups) % group == 0):
            assert encoded.in_place
        if groups > 1 and (out_channels // groups) % group:
            assert not encoded.in_place


def test_a_vector_pruned_weight_stores_exactly_its_non_zeros_and_reordering_finds_its_blocks():
    rng = np.random.default_rng(1)
    weight = vector_pruned(rng, (64, 16, 3, 3), 0.9, 16)
    spec = Conv2dSpec.create((1, 16, 8, 8), weight.shape, padding=1)
    assert VectorSparseWeight.from_dense(weight, spec).density == 1.0
    shuffled = weight[rng.permutation(64)]
    assert VectorSparseWeight.from_dense(shuffled, spec).density > 2.0
    reordered = VectorSparseWeight.from_dense(shuffled, spec, reorder=True)
    assert reordered.density == 1.0
    np.testing.assert_array_equal(reordered.to_dense(), shuffled)
    unstructured = prune_array(rng.standard_normal(weight.shape).astype(np.float32), 0.9)
    assert VectorSparseWeight.from_dense(unstructured, spec).density > 4.0  # the unions


def test_bad_arguments_are_named():
    spec = Conv2dSpec.create((1, 4, 6, 6), (8, 4, 3, 3))
    with pytest.raises(ArgumentError, match="group must be one of"):
        VectorSparseWeight.from_dense(np.ones((8, 4, 3, 3), np.float32), spec, group=4)
    with pytest.raises(DTypeError, match="float16 or bfloat16, not float32"):
        build_vector_sparse_conv2d(np.ones((8, 4, 3, 3), np.float32), (1, 4, 6, 6),
                                   target=SM_90)
    with pytest.raises(ArgumentError, match="blocks of 16 output channels.*group=8"):
        build_vector_sparse_conv2d(np.ones((8, 4, 3, 3), np.float16), (1, 4, 6, 6),
                                   target=SM_90, group=8)
    with pytest.raises(ArgumentError, match="TensorCoreConfig.warps must be an int >= 1"):
        build_vector_sparse_conv2d(np.ones((8, 4, 3, 3), np.float16), (1, 4, 6, 6),
                                   target=SM_90, config=TensorCoreConfig(warps=0))
    with pytest.raises(ArgumentError, match="group must be an int"):
        prune.vectors(torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3)), 0.5, group=0)


@st.composite
def convolutions(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cin_g = draw(st.integers(1, 6))
    out_g = draw(st.integers(1, 20))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    shape = (draw(st.integers(1, 3)), cin_g * groups, draw(st.integers(4, 12)),
             draw(st.integers(4, 12)))
    args = dict(stride=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                padding=tuple(draw(st.integers(0, 2)) for _ in range(4)),
                dilation=(draw(st.integers(1, 2)), draw(st.integers(1, 2))), groups=groups)
    try:
        Conv2dSpec.create(shape, (out_g * groups, cin_g, *kernel), **args)
    except Exception:
        args["padding"], args["dilation"] = (kernel[0], kernel[1]) * 2, (1, 1)
    return {"shape": shape, "weight": (out_g * groups, cin_g, *kernel), "args": args,
            "group": draw(st.sampled_from([8, 16])), "reorder": draw(st.booleans()),
            "vectors": draw(st.booleans()), "sparsity": draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
            "bias": draw(st.booleans()), "relu": draw(st.booleans()),
            "dtype": draw(st.sampled_from(["float32", "float32", "float16", "bfloat16"])),
            "config": draw(st.one_of(st.none(), tensor_core_configs())),
            "seed": draw(st.integers(0, 2**16))}


def tensor_core_configs():
    """Random tiles, images blocked or not, one or two stages (with blocked images some tiles
    get plain loads instead of cp.async: support/tir_pipeline.py)."""
    return st.builds(TensorCoreConfig, warps=st.sampled_from([1, 2, 3, 4]),
                     fragments=st.sampled_from([1, 2, 3]), k_fragments=st.sampled_from([1, 2, 3]),
                     image_block=st.sampled_from([1, 8]), stages=st.sampled_from([1, 2]))


def check_random_case(case, target=None):
    """Builds ``case`` for ``target`` (the CPU by default), runs it and compares with PyTorch
    in float64."""
    rng = np.random.default_rng(case["seed"])
    groups = case["args"]["groups"]
    if case["vectors"]:
        weight = vector_pruned(rng, (case["weight"][0], *case["weight"][1:]), case["sparsity"],
                               case["group"], groups)
    else:
        weight = prune_array(rng.standard_normal(case["weight"]).astype(np.float32),
                             case["sparsity"])
    half = dtypes.numpy_dtype(case["dtype"])
    weight = weight.astype(half)
    x = rng.standard_normal(case["shape"]).astype(half)
    bias = rng.standard_normal(case["weight"][0]).astype(np.float32) if case["bias"] else None
    kernel = build_vector_sparse_conv2d(weight, case["shape"], bias=bias, relu=case["relu"],
                                        group=case["group"], reorder=case["reorder"],
                                        config=case["config"], target=target or "llvm",
                                        **case["args"])
    device = "cuda" if target is not None else "cpu"
    out = kernel(dtypes.to_torch(x).to(device)).cpu()
    assert_conv_close(dtypes.to_numpy(out), x, weight, dtype=case["dtype"], bias=bias,
                      relu=case["relu"], **case["args"])


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(convolutions())
def test_random_vector_sparse_convolutions_match_float64(case):
    """Strides, asymmetric padding, dilation, groups, odd sizes, G not dividing the channels,
    all-zero blocks, vector-pruned or unstructured weights, three dtypes; with a GPU config,
    its padding of pixels and taps."""
    check_random_case(case)


def on_tensor_cores(case):
    """``case`` as the GPU kernels take it: float16 or bfloat16, blocks of 16."""
    dtype = case["dtype"] if case["dtype"] != "float32" else "float16"
    return {**case, "dtype": dtype, "group": 16}


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(convolutions())
def test_the_tensor_core_schedule_builds_for_random_convolutions_and_configs(case):
    """The GPU schedule applies and nvcc compiles it (no GPU needed) on random shapes, with
    the default or a random config."""
    case = on_tensor_cores(case)
    weight = np.ones(case["weight"], dtypes.numpy_dtype(case["dtype"]))
    kernel = build_vector_sparse_conv2d(weight, case["shape"], relu=case["relu"],
                                        config=case["config"], target=SM_90, **case["args"])
    assert kernel.compiled
    source = kernel.executable.mod.imports[0].inspect_source()
    assert "mma.sync.aligned.m16n8k16" in source and "ldmatrix.sync" in source
    assert "_warp_ptr[256]" not in source  # the fragments are lowered to registers


@pytest.mark.parametrize("batch,channels,size", [(1, 64, 28), (16, 32, 13), (1, 32, 112),
                                                  (16, 16, 149), (12, 16, 7)])
def test_the_staged_epilogue_fits_in_shared_memory(batch, channels, size):
    """The epilogue's tile of sums stays within the 48 KiB a block may have statically (nvcc
    refuses more), at both image blocks and for rows that do not split evenly."""
    weight = np.ones((channels, channels, 3, 3), np.float16)
    kernel = build_vector_sparse_conv2d(weight, (batch, channels, size, size), padding=1,
                                        target=SM_90)
    assert kernel.compiled
    source = kernel.executable.mod.imports[0].inspect_source()
    staged = [int(n) for n in re.findall(r"float block_sums_shared_ptr\[(\d+)\]", source)]
    assert all(4 * n <= 48 * 1024 for n in staged)
    assert staged or size == 149  # no tile of 8 or more columns divides a row of 149


GPU_SHARDS = 6  # the GPU cases split by seed, so that parallel workers share the compiles


@pytest.mark.gpu
@pytest.mark.parametrize("shard", range(GPU_SHARDS))
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(convolutions())
def test_random_tensor_core_convolutions_match_float64_on_the_gpu(shard, case):
    """The random cases on the GPU, float16 and bfloat16: each shard checks the cases whose
    seed falls to it (about 5 of the 30 each; a CUDA build takes seconds)."""
    if case["seed"] % GPU_SHARDS == shard:
        check_random_case(on_tensor_cores(case), target="cuda")


def test_vector_pruning_keeps_each_blocks_zero_taps_shared_and_reaches_its_sparsity():
    """Per layer and global, convolutions (groups, a last shorter block) and Linears, float32
    and bfloat16: a block's channels are all zero or all kept at each position, and the zeros
    reach the target (at most one vector past it)."""
    for scope in ("layer", "global"):
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Conv2d(6, 40, 3, groups=2),
                                        torch.nn.Conv2d(40, 16, 1), torch.nn.Linear(10, 20))
            model.to(dtype)
            prune.vectors(model, 0.8, group=16, scope=scope, layers="all")
            total = zeros = 0
            for layer, blocks in ((model[0], [range(0, 16), range(16, 20), range(20, 36),
                                              range(36, 40)]),
                                  (model[1], [range(0, 16)]), (model[2], [range(0, 16),
                                                                          range(16, 20)])):
                zero = (layer.weight.detach() == 0).reshape(layer.weight.shape[0], -1)
                for block in blocks:
                    rows = zero[list(block)]
                    assert bool((rows.all(0) | (~rows).all(0)).all()), (layer, block)
                total, zeros = total + zero.numel(), zeros + int(zero.sum())
                if scope == "layer":
                    fraction = float(zero.float().mean())
                    assert 0.8 <= fraction < 0.8 + 16 / zero.numel() + 1e-9, layer
            assert zeros >= prune.zero_count(0.8, total)


def test_vector_pruning_keeps_the_largest_vectors():
    linear = torch.nn.Linear(4, 16, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([1.0, 9.0, 2.0, 0.5]).repeat(16, 1))
    prune.vectors(torch.nn.Sequential(linear), 0.5, layers="linear")
    kept = (linear.weight != 0).all(0).tolist()
    assert kept == [False, True, True, False]
