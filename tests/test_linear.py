"""Sparse fully-connected layers: the weight format, the kernel against PyTorch in float64 (CPU,
and CUDA code generation), the pass on compiled models, and pruning Linear layers."""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import escoin_tvm
from escoin_tvm import ArgumentError, models, prune
from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
from escoin_tvm.kernels.linear.kernel import build_sparse_linear
from escoin_tvm.prune import DEEP_COMPRESSION_FC_DENSITY, prune_array
from escoin_tvm.kernels.linear.schedule_gpu import LinearGpuConfig
from helpers import ROUNDOFF

CUDA = {"kind": "cuda", "arch": "sm_90"}


def reference(x, weight, bias=None, relu=False, absolute=False):
    x, w = np.asarray(x, np.float64), np.asarray(weight, np.float64)
    if absolute:
        x, w = np.abs(x), np.abs(w)
    out = x @ w.T
    if bias is not None:
        out = out + (np.abs(bias) if absolute else bias)
    return np.maximum(out, 0) if relu and not absolute else out


def assert_linear_close(out, x, weight, bias=None, relu=False, dtype="float32"):
    ref = reference(x, weight, bias, relu)
    scale = reference(x, weight, bias, absolute=True)
    out = np.asarray(out, np.float64)
    assert out.shape == ref.shape and np.isfinite(out).all()
    excess = np.abs(out - ref) - (1e-5 * scale + ROUNDOFF[dtype] * np.abs(ref) + 1e-6)
    assert excess.max() <= 0, f"over tolerance by {excess.max()}"


def test_weight_format_round_trip_and_index_width():
    w = prune_array(np.random.default_rng(0).standard_normal((7, 40), np.float32), 0.8)
    w[3] = 0
    sparse = SparseLinearWeight.from_dense(w)
    np.testing.assert_array_equal(sparse.to_dense(), w)
    columns, values = sparse.to_ell(8)
    assert columns.shape[1] % 8 == 0 and columns.dtype == np.int16
    assert not values[3].any() and (columns[3] == 0).all()
    assert SparseLinearWeight.from_dense(np.ones((1, 40000), np.float32)).index_dtype == "int32"
    with pytest.raises(escoin_tvm.ShapeError, match="out_features, in_features"):
        SparseLinearWeight.from_dense(np.ones((2, 3, 4), np.float32))


@st.composite
def layers(draw):
    return dict(out_features=draw(st.integers(1, 70)), in_features=draw(st.integers(1, 300)),
                batch=draw(st.sampled_from([1, 2, 3, 8, 17, 64])),
                sparsity=draw(st.sampled_from([0.0, 0.5, 0.9, 0.97, 1.0])),
                empty_rows=draw(st.booleans()), bias=draw(st.booleans()),
                relu=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 16)))


def make(layer):
    rng = np.random.default_rng(layer["seed"])
    w = prune_array(rng.standard_normal((layer["out_features"], layer["in_features"]),
                                        np.float32), layer["sparsity"])
    if layer["empty_rows"]:
        w[::3] = 0
    bias = rng.standard_normal(layer["out_features"]).astype(np.float32) if layer["bias"] \
        else None
    x = rng.standard_normal((layer["batch"], layer["in_features"])).astype(np.float32)
    return w, bias, x


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(layers())
def test_random_sparse_linear_layers_on_cpu(layer):
    w, bias, x = make(layer)
    kernel = build_sparse_linear(w, layer["batch"], bias=bias, relu=layer["relu"])
    assert_linear_close(kernel(x), x, w, bias, layer["relu"])


@settings(max_examples=12, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(layers(), st.sampled_from([1, 4, 32]), st.sampled_from([1, 3, 8]), st.booleans())
def test_random_sparse_linear_layers_generate_cuda(layer, lanes, tile, transposed):
    w, bias, _ = make(layer)
    config = LinearGpuConfig(lanes=lanes, rows=4, batch_tile=tile, chunk=4,
                             transposed_input=transposed)
    kernel = build_sparse_linear(w, layer["batch"], bias=bias, relu=layer["relu"], target=CUDA,
                                 config=config)
    assert "__global__" in kernel.source and (lanes == 1 or "shfl" in kernel.source)


@pytest.mark.parametrize("out_features, rows", [(3, 2), (7, 4), (33, 32)])
def test_the_cuda_store_of_every_row_is_bounds_checked(out_features, rows):
    """Regression: TVM's cross-thread reduction dropped the bounds check of its final store,
    so a block's rows past ``out_features`` wrote into the next batch row (a race, seen on an
    H200). Each store to the output must sit under a check against ``out_features``."""
    w = np.ones((out_features, 5), np.float32)
    config = LinearGpuConfig(lanes=8, rows=rows, batch_tile=3, chunk=4)
    source = build_sparse_linear(w, 2, target=CUDA, config=config).source
    lines = source.splitlines()
    stores = [i for i, line in enumerate(lines) if "linear_epilogue_ptr[" in line]
    assert stores and "sparse_linear_ptr[" not in source.split("__global__")[-1]
    for i in stores:
        assert f") < {out_features})" in lines[i - 1], lines[i - 1]


@pytest.mark.gpu
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(layers(), st.sampled_from([None, LinearGpuConfig(lanes=8, rows=2, batch_tile=3),
                                   LinearGpuConfig(lanes=4, rows=3, batch_tile=5,
                                                   transposed_input=True),
                                   # the shipped table's large-block tile
                                   LinearGpuConfig(lanes=32, rows=32, batch_tile=16, chunk=1)]))
def test_random_sparse_linear_layers_on_gpu(layer, config):
    w, bias, x = make(layer)
    kernel = build_sparse_linear(w, layer["batch"], bias=bias, relu=layer["relu"],
                                 target="cuda", config=config)
    out = kernel(torch.from_numpy(x).cuda()).cpu().numpy()
    assert_linear_close(out, x, w, bias, layer["relu"])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_linear_layers(dtype):
    w, bias, x = make(dict(out_features=33, in_features=250, batch=5, sparsity=0.9,
                           empty_rows=True, bias=True, relu=True, seed=3))
    wt, xt = torch.from_numpy(w).to(dtype), torch.from_numpy(x).to(dtype)
    kernel = build_sparse_linear(wt, 5, bias=bias, relu=True)
    out = kernel(xt)
    assert out.dtype == dtype
    assert_linear_close(out.float().numpy(), xt.float().numpy(), wt.float().numpy(), bias,
                        True, dtype=str(dtype).replace("torch.", ""))


def test_bad_arguments_are_named():
    w = np.eye(4, dtype=np.float32)
    with pytest.raises(escoin_tvm.ShapeError, match="batch"):
        build_sparse_linear(w, 0)
    with pytest.raises(ArgumentError, match="lanes"):
        build_sparse_linear(w, 1, target=CUDA, config=LinearGpuConfig(lanes=3))
    with pytest.raises(ArgumentError, match="transposed_input must be a bool"):
        build_sparse_linear(w, 1, target=CUDA, config=LinearGpuConfig(transposed_input=1))
    with pytest.raises(escoin_tvm.DTypeError, match="float64"):
        build_sparse_linear(w.astype(np.float64), 1)


def alexnet(sparsity=0.9, layers="all"):
    return prune.magnitude(models.build("alexnet", hidden=64, num_classes=10), sparsity,
                           layers=layers)


def test_pruned_linear_layers_run_on_escoin_kernels_in_a_compiled_model():
    model = alexnet()
    x = torch.randn(2, 3, 224, 224)
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    with torch.no_grad():
        ref = model.double()(x.double())
    out = compiled(x).double()
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5
    linear = compiled.linear_layers
    assert [l["name"] for l in linear] == ["classifier.1", "classifier.4", "classifier.6"]
    assert [l["kernel"] for l in linear] == ["escoin"] * 3
    assert [l["epilogue"] for l in linear] == ["bias+relu", "bias+relu", "bias"]
    assert "3 of 3 linear layers on Escoin kernels" in compiled.report()


def test_dense_and_large_batch_linear_layers_stay_dense():
    model = alexnet(layers="conv")
    compiled = escoin_tvm.compile(model, (torch.randn(1, 3, 224, 224),), target="llvm")
    assert all(l["kernel"] == "dense" and "< threshold" in l["reason"]
               for l in compiled.linear_layers)
    mlp = prune.magnitude(torch.nn.Sequential(torch.nn.Linear(8, 16)), 0.9, layers="linear")
    compiled = escoin_tvm.compile(mlp.eval(), (torch.randn(65, 8),), target="llvm")
    assert compiled.linear_layers[0]["kernel"] == "dense"
    assert "batch 65 > 64" in compiled.linear_layers[0]["reason"]


def test_measured_dispatch_times_linear_layers_too():
    mlp = prune.magnitude(torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU()), 0.9,
                          layers="linear").eval()
    x = torch.randn(4, 64)
    compiled = escoin_tvm.compile(mlp, (x,), target="llvm", dispatch_by="measure")
    [layer] = compiled.linear_layers
    assert layer["escoin_us"] > 0 and layer["dense_us"] > 0
    assert layer["reason"].startswith("measured:")
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), mlp(x).numpy(), rtol=1e-5, atol=1e-5)


def test_pruning_linear_layers_and_deep_compression_rates():
    model = alexnet(layers="linear")
    assert all(int((m.weight == 0).sum()) >= 0.9 * m.weight.numel() for m in model.modules()
               if isinstance(m, torch.nn.Linear))
    assert all(not (m.weight == 0).any() for m in model.modules()
               if isinstance(m, torch.nn.Conv2d))
    model = prune.deep_compression(models.build("vgg16", hidden=64), "vgg16", layers="all")
    kept = [float((m.weight != 0).float().mean()) for m in model.modules()
            if isinstance(m, torch.nn.Linear)]
    np.testing.assert_allclose(kept, DEEP_COMPRESSION_FC_DENSITY["vgg16"], atol=2e-3)
    with pytest.raises(ArgumentError, match="layers must be"):
        prune.magnitude(model, 0.5, layers="fc")
