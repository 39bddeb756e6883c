"""Linear layers on the vector-sparse (tensor-core) family: the 1 x 1 convolution whose pixels
are the batch. The kernel against PyTorch in float64 on the CPU (and on the GPU), its CUDA
build, which layers it takes, and both dispatch paths offering it to measured dispatch only."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import s_tir

import escoin_tvm
from escoin_tvm import ArgumentError, DTypeError, ShapeError, prune
from escoin_tvm.kernels import linear, vector_sparse
from escoin_tvm.kernels.eligibility import LayerFacts
from escoin_tvm.kernels.family import choose
from escoin_tvm.kernels.vector_sparse.kernel import build_vector_sparse_linear
from escoin_tvm.kernels.vector_sparse.lowering import VectorSparseKernel
from escoin_tvm.kernels.vector_sparse.schedule_gpu import TensorCoreConfig
from escoin_tvm.support import dtypes
from escoin_tvm.support.target import resolve_target

from family_stand_ins import backend_family_times, relax_family_times, tensor_core_stand_in

SM_90 = {"kind": "cuda", "arch": "sm_90"}
TOLERANCE = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1.6e-2}


def vector_pruned_linear(rng, out_features, in_features, sparsity, dtype):
    """A (out, in) weight whose zeros come in vectors of 16 output features."""
    weight = rng.standard_normal((out_features, in_features)).astype(np.float32)
    blocks = rng.random((-(-out_features // 16), in_features)) < sparsity
    weight[np.repeat(blocks, 16, axis=0)[:out_features]] = 0
    return weight.astype(dtypes.numpy_dtype(dtype))


@st.composite
def linear_layers(draw):
    return dict(batch=draw(st.integers(1, 40)), in_features=draw(st.integers(1, 70)),
                out_features=draw(st.integers(1, 50)),
                sparsity=draw(st.sampled_from([0.0, 0.5, 0.9, 1.0])),
                bias=draw(st.booleans()), relu=draw(st.booleans()),
                dtype=draw(st.sampled_from(["float32", "float16", "bfloat16"])),
                config=draw(st.one_of(st.none(), st.builds(
                    TensorCoreConfig, warps=st.sampled_from([1, 2]),
                    fragments=st.sampled_from([1, 2]), k_fragments=st.sampled_from([1, 2]),
                    stages=st.sampled_from([1, 2])))),
                seed=draw(st.integers(0, 2**16)))


def check_linear(case, target=None):
    rng = np.random.default_rng(case["seed"])
    weight = vector_pruned_linear(rng, case["out_features"], case["in_features"],
                                  case["sparsity"], case["dtype"])
    x = rng.standard_normal((case["batch"], case["in_features"])).astype(weight.dtype)
    bias = rng.standard_normal(case["out_features"]).astype(np.float32) if case["bias"] \
        else None
    kernel = build_vector_sparse_linear(weight, case["batch"], bias=bias, relu=case["relu"],
                                        config=case["config"], target=target or "llvm")
    device = "cuda" if target is not None else "cpu"
    out = dtypes.to_numpy(kernel(dtypes.to_torch(x).to(device)).cpu()).astype(np.float64)
    expected = x.astype(np.float64) @ weight.astype(np.float64).T
    if bias is not None:
        expected += bias
    if case["relu"]:
        expected = np.maximum(expected, 0)
    scale = np.abs(x.astype(np.float64)) @ np.abs(weight.astype(np.float64)).T + (
        np.abs(bias) if bias is not None else 0) + 1e-30
    assert out.shape == expected.shape
    assert np.all(np.abs(out - expected) <= TOLERANCE[case["dtype"]] * scale)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(linear_layers())
def test_random_vector_sparse_linear_layers_match_float64(case):
    """Batches past a 16-row tile, features not dividing the blocks, all-zero blocks, bias
    and ReLU, three dtypes, with a GPU config's padding of the rows and taps."""
    check_linear(case)


@pytest.mark.parametrize("batch,in_features,out_features", [(1, 64, 32), (16, 100, 48),
                                                             (40, 33, 20)])
def test_the_linear_kernel_builds_for_tensor_cores(batch, in_features, out_features):
    weight = vector_pruned_linear(np.random.default_rng(0), out_features, in_features, 0.8,
                                  "float16")
    kernel = build_vector_sparse_linear(weight, batch, bias=np.ones(out_features), relu=True,
                                        target=SM_90)
    source = kernel.executable.mod.imports[0].inspect_source()
    assert "mma.sync.aligned.m16n8k16" in source and "ldmatrix.sync" in source
    assert kernel.output_shape == (batch, out_features)


def test_bad_arguments_name_the_argument():
    weight = np.ones((32, 16), np.float16)
    with pytest.raises(ShapeError, match="out_features, in_features"):
        build_vector_sparse_linear(np.ones((32, 16, 1, 1), np.float16), 2)
    with pytest.raises(ShapeError, match="bias must have shape"):
        build_vector_sparse_linear(weight, 2, bias=np.ones(5))
    with pytest.raises(ArgumentError, match="batch must be an int"):
        build_vector_sparse_linear(weight, 0)
    with pytest.raises(DTypeError, match="tensor cores"):
        build_vector_sparse_linear(weight.astype(np.float32), 2, target=SM_90)
    with pytest.raises(ArgumentError, match="image_block must be 1"):
        build_vector_sparse_linear(weight, 2, target=SM_90,
                                   config=TensorCoreConfig(image_block=8))


def facts(batch=4, weight_shape=(64, 128), dtype="float16", on_gpu=True, density=1.0):
    return LayerFacts("linear", (batch, weight_shape[1]), weight_shape, dtype, dtype,
                      on_gpu=on_gpu, block_density=density)


@pytest.mark.parametrize("layer,reason", [
    (facts(), None),
    (facts(on_gpu=False), "CUDA targets only"),
    (facts(dtype="float32"), "dtype float32"),
    (facts(weight_shape=(8, 128)), "8 output features"),
    (facts(batch=65), "batch 65 > 64"),
    (facts(density=1.4), "not pruned in vectors of 16 output features"),
])
def test_which_linear_layers_the_family_takes(layer, reason):
    problem = vector_sparse.linear_problem(layer)
    assert problem is None if reason is None else reason in problem


def test_a_layer_no_family_takes_gets_the_general_familys_reason():
    """The tensor-core family is listed after the CUDA-core one for linear layers (and before
    it for convolutions): either way the report's reason is the general family's."""
    families = (linear.FAMILY, vector_sparse.LINEAR_FAMILY)
    assert choose(families, facts(batch=100)) == (None, linear.FAMILY.problem(facts(batch=100)))
    cpu = facts(dtype="float64", on_gpu=False)
    assert choose(families, cpu)[1] == linear.FAMILY.problem(cpu)
    assert choose(families, facts())[0] is linear.FAMILY  # the preferred one, unmeasured


def mlp():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU(),
                                torch.nn.Linear(48, 32)).eval()
    prune.vectors(model, 0.8, group=16, layers="all")
    return model.half(), torch.randn(4, 4, 4, 4).half()


@pytest.mark.parametrize("vector_us, escoin_us, kernel", [
    (10.0, 20.0, "vector-sparse"), (20.0, 10.0, "escoin"), (10.0, 10.0, "escoin"),
    (99.0, 98.0, "dense")])
def test_the_relax_path_times_both_families_and_keeps_the_fastest(monkeypatch, vector_us,
                                                                  escoin_us, kernel):
    """Measured dispatch times a vector-pruned half linear layer on each family (each in a pass
    that offers it alone); the CUDA-core one wins a tie (it comes first); the compiled model
    matches float64 (the family's CPU schedule standing in for the tensor-core one)."""
    tensor_core_stand_in(monkeypatch)
    timed = relax_family_times(monkeypatch, {"vector-sparse": vector_us, "escoin": escoin_us})
    model, x = mlp()
    compiled = escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="measure",
                                  progress=False)
    layers = compiled.metadata["linear_layers"]
    assert timed == ["escoin", "vector-sparse"] * 2
    assert [layer["kernel"] for layer in layers] == [kernel, kernel]
    if kernel == "vector-sparse":
        assert layers[0]["epilogue"] == "bias+relu" and layers[1]["epilogue"] == "bias"
    with torch.no_grad():
        expected = model.double()(x.double()).float()
    out = compiled(x).float()
    assert (out - expected).abs().max().item() <= 4e-3 * expected.abs().max().item()


@pytest.mark.parametrize("vector_us, escoin_us, kernel", [
    (10.0, 20.0, "vector-sparse"), (20.0, 10.0, "escoin")])
def test_the_backend_times_both_families_and_keeps_the_fastest(monkeypatch, vector_us,
                                                               escoin_us, kernel):
    from escoin_tvm.torch_compile import backend

    timed = backend_family_times(monkeypatch, {"vector-sparse": vector_us, "escoin": escoin_us})
    model, x = mlp()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="escoin", options={
            "dense": "eager", "dispatch": "measure", "whole_graph": False})(x)
        expected = model(x)
    assert timed == [["escoin", "vector-sparse"]] * 2
    assert [layer.kernel for layer in backend.REPORTS[-1].layers] == [kernel, kernel]
    assert torch.allclose(out.float(), expected.float(), atol=2e-3, rtol=2e-3)


def test_a_linear_kernel_is_a_tuning_task_whose_untuned_point_builds():
    from escoin_tvm.kernels.vector_sparse.lowering import _linear_weight
    from escoin_tvm.kernels.vector_sparse.operator import linear_spec
    from escoin_tvm.kernels.vector_sparse.tuning_space import work_config
    from escoin_tvm.kernels.epilogue import Epilogue
    from escoin_tvm.tuning.runners import build_kernel

    weight = vector_pruned_linear(np.random.default_rng(1), 48, 200, 0.9, "float16")
    spec = linear_spec(16, 200, 48)
    encoded = _linear_weight(weight, spec)
    encoded = encoded.padded_to(work_config(spec, encoded.offsets.shape[1]).k_tile)
    target = resolve_target(SM_90)
    task = VectorSparseKernel("fc", spec, encoded, Epilogue(bias=True), linear=True).task(target)
    task.layers.append("fc")
    assert task.linear and task.representable(task.untuned_config())
    [sch] = task.design_spaces(fixed=task.untuned_config())(s_tir.Schedule(task.workload))
    assert task.decode(sch.trace) == task.untuned_config()
    source = build_kernel(sch.mod, target, None).imports[0].inspect_source()
    assert "mma.sync.aligned.m16n8k16" in source


def test_the_backend_kernel_takes_the_knobs_of_its_tuning_log(monkeypatch):
    """With a tuning log, a backend linear layer's kernel gets the log's best config for its
    workload, flagged tuned, on the weight as the log's lookup encoded it."""
    from escoin_tvm.kernels.vector_sparse import kernel as vs_kernel
    from escoin_tvm.kernels.vector_sparse import lowering
    from escoin_tvm.torch_compile import ops

    weight = vector_pruned_linear(np.random.default_rng(2), 48, 200, 0.9, "float16")
    bias = np.arange(48, dtype=np.float32)
    best = TensorCoreConfig(warps=1, fragments=1, k_fragments=1, stages=1, image_block=1)
    asked = []

    class Log:
        def best(self, workload, target, decode):
            asked.append(workload)
            return best, 1e-5

    built = []
    monkeypatch.setattr(vs_kernel, "VectorSparseLinearKernel", lambda *args: built.append(args))
    layer = ops.SparseLinearLayer("fc", weight, bias, True, resolve_target(SM_90), Log(),
                                  vector_sparse.LINEAR_FAMILY)
    lowering.linear_torch_kernel(layer, (16, 200), None)
    (batch, encoded, kernel_bias, relu, _, _, config, tuned), = built
    assert len(asked) == 1 and config == best and tuned is True
    assert (batch, relu, encoded.weight_shape[:2]) == (16, True, (48, 200))
    np.testing.assert_array_equal(kernel_bias, bias)
    np.testing.assert_array_equal(encoded.to_dense()[..., 0, 0], weight)


GPU_SHARDS = 3


@pytest.mark.gpu
@pytest.mark.parametrize("shard", range(GPU_SHARDS))
@settings(max_examples=18, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(linear_layers())
def test_random_vector_sparse_linear_layers_match_float64_on_the_gpu(shard, case):
    if case["seed"] % GPU_SHARDS == shard:
        dtype = case["dtype"] if case["dtype"] != "float32" else "float16"
        check_linear({**case, "dtype": dtype}, target="cuda")


@pytest.mark.gpu
def test_the_backend_measures_a_vector_pruned_mlp_on_the_gpu_and_keeps_the_answer():
    from escoin_tvm.torch_compile import backend

    model, x = mlp()
    model, x = model.cuda(), x.cuda()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="escoin")(x).float()
        expected = model.double()(x.double()).float()
    report = backend.last_report()
    assert "linear layers" in report
    assert (out - expected).abs().max().item() <= 4e-3 * expected.abs().max().item(), report
