"""The Relax pass's dispatch to the vector-sparse (tensor-core) family: which layers it takes
(CUDA targets, half precision, at least 16 output channels per group, more than one tap, weights
pruned in vectors of 16), what the report says of the others, and the compiled model against PyTorch on
the GPU."""

import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import prune
from escoin_tvm.kernels.eligibility import LayerFacts
from escoin_tvm.kernels.vector_sparse import problem
from escoin_tvm.kernels.vector_sparse.weight_format import block_density

from family_stand_ins import backend_family_times, relax_family_times, tensor_core_stand_in

SM_90 = {"kind": "cuda", "arch": "sm_90"}


def facts(**changes):
    base = dict(op="conv2d", input_shape=(1, 32, 8, 8), weight_shape=(32, 32, 3, 3),
                input_dtype="float16", weight_dtype="float16", on_gpu=True, block_density=1.0)
    return LayerFacts(**{**base, **changes})


def test_the_family_takes_only_vector_pruned_half_convolutions_on_cuda():
    assert problem(facts()) is None
    assert problem(facts(input_dtype="bfloat16", weight_dtype="bfloat16")) is None
    assert "CUDA" in problem(facts(on_gpu=False))
    assert "dtype float32" in problem(facts(input_dtype="float32", weight_dtype="float32"))
    assert "1 output channels per convolution group" in problem(facts(weight_shape=(32, 1, 3, 3)))
    assert "4 output channels" in problem(facts(weight_shape=(32, 4, 3, 3)))  # ResNeXt-like
    assert problem(facts(weight_shape=(32, 16, 3, 3))) is None  # 2 groups of 16 (AlexNet-like)
    assert "1 x 1" in problem(facts(weight_shape=(32, 32, 1, 1)))
    assert "vectors of 16" in problem(facts(block_density=6.2))
    assert "prune.vectors" in problem(facts(block_density=None))


def test_block_density_is_one_for_vector_pruned_weights_and_counts_unions_otherwise():
    rng = np.random.default_rng(0)
    conv = torch.nn.Conv2d(8, 40, 3)
    prune.vectors(torch.nn.Sequential(conv), 0.8, group=16)
    assert block_density(conv.weight.detach().numpy()) == 1.0
    weight = np.zeros((32, 4, 3, 3), np.float32)
    weight[0, 0, 0, 0] = weight[1, 1, 1, 1] = 1.0  # two channels of one block, distinct taps
    assert block_density(weight) == 16.0  # each of the 16 channels stores both taps
    assert block_density(np.zeros((16, 2, 3, 3))) == 1.0
    grouped = rng.standard_normal((32, 2, 3, 3)) * (rng.random((32, 2, 3, 3)) < 0.1)
    assert block_density(grouped, groups=4) >= 1.0


def network():
    """A 3 x 3 convolution pruned in vectors (taken), a 1 x 1 and a depthwise one (left to
    the Escoin CUDA-core kernels), with biases, ReLUs and a residual add."""
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(32, 48, 3, padding=1)
            self.point = torch.nn.Conv2d(48, 48, 1)
            self.depth = torch.nn.Conv2d(48, 48, 3, padding=1, groups=48)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            return torch.relu(self.depth(y) + self.point(y))

    torch.manual_seed(0)
    model = Net().eval()
    prune.vectors(torch.nn.Sequential(model.conv), 0.9, group=16)
    prune.magnitude(torch.nn.Sequential(model.point, model.depth), 0.9)
    return model.half()


def test_a_cuda_build_sends_the_vector_pruned_layer_to_tensor_cores_and_the_others_not():
    model, x = network(), torch.randn(2, 32, 9, 9).half()
    compiled = escoin_tvm.compile(model, (x,), target=SM_90, progress=False)
    kernels = {layer["name"]: (layer["kernel"], layer["reason"])
               for layer in compiled.metadata["layers"]}
    assert kernels["conv"][0] == "vector-sparse"
    assert kernels["conv"][1].endswith("; blocks of 16 output channels store 1.00x its non-zeros")
    assert kernels["point"][0] == "escoin" and kernels["depth"][0] == "escoin"
    assert "3 of 3 convolutions on Escoin kernels" in compiled.report()
    # the report says why the tensor-core family passed each of the others over
    assert "not vector-sparse: 1 x 1 convolution" in kernels["point"][1]
    assert "not vector-sparse: 1 output channels per convolution group" in kernels["depth"][1]
    on_cpu = escoin_tvm.compile(model.float(), (x.float(),), target="llvm", progress=False)
    assert all(layer["kernel"] == "escoin" for layer in on_cpu.metadata["layers"])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch", [1, 9])
def test_the_dispatched_network_matches_pytorch_on_the_gpu(dtype, batch):
    model = network().to(dtype)
    x = torch.randn(batch, 32, 9, 9).to(dtype)
    compiled = escoin_tvm.compile(model, (x,), target="cuda", progress=False)
    assert [layer["kernel"] for layer in compiled.metadata["layers"]][0] == "vector-sparse"
    out = compiled(x.cuda()).float().cpu()
    with torch.no_grad():
        expected = model.double()(x.double()).float()
    scale = expected.abs().max().item()
    tolerance = 2e-2 if dtype == torch.bfloat16 else 4e-3
    assert (out - expected).abs().max().item() <= tolerance * scale


def test_the_lowering_computes_the_network_on_the_cpu(monkeypatch):
    """What the pass emits for a vector-sparse layer (the call's arguments in order, the bias
    in float32, the fused ReLU and residual add; stride, asymmetric padding, dilation, an odd
    batch), run on the CPU: the same
    lowering with the family's CPU schedule standing in for the tensor-core one (which the GPU
    tests check against float64 on random convolutions)."""
    tensor_core_stand_in(monkeypatch)

    class Residual(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Conv2d(16, 32, 3, padding=1, stride=2)
            self.second = torch.nn.Conv2d(32, 32, (3, 2), padding=(1, 0), dilation=(1, 2))

        def forward(self, x):
            y = torch.relu(self.first(x))
            return torch.relu(self.second(torch.nn.functional.pad(y, (1, 1))) + y)

    torch.manual_seed(1)
    model = Residual().eval()
    prune.vectors(torch.nn.Sequential(model.first, model.second), 0.8, group=16)
    model = model.half()
    x = torch.randn(3, 16, 11, 10).half()
    compiled = escoin_tvm.compile(model, (x,), target="llvm", progress=False)
    kernels = {layer["name"]: (layer["kernel"], layer["epilogue"])
               for layer in compiled.metadata["layers"]}
    assert kernels["first"] == ("vector-sparse", "bias+relu")
    assert kernels["second"] == ("vector-sparse", "bias+residual+relu")
    with torch.no_grad():
        expected = model.double()(x.double()).float()
    out = compiled(x).float()
    assert (out - expected).abs().max().item() <= 4e-3 * expected.abs().max().item()


@pytest.mark.parametrize("vector_us, escoin_us, kernel", [
    (10.0, 20.0, "vector-sparse"), (20.0, 10.0, "escoin"), (10.0, 10.0, "vector-sparse"),
    (99.0, 98.0, "dense")])
def test_measured_dispatch_times_each_family_that_takes_a_layer_and_keeps_the_fastest(
        monkeypatch, vector_us, escoin_us, kernel):
    """With measured dispatch a vector-pruned layer is timed on both families (each in a pass
    that offers it alone) and goes to the faster (the tensor-core one on a tie) if that beats
    dense by the margin; the report gives every time."""
    tensor_core_stand_in(monkeypatch)
    timed = relax_family_times(monkeypatch, {"vector-sparse": vector_us, "escoin": escoin_us})
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU()).eval()
    prune.vectors(model, 0.8, group=16)
    model = model.half()
    x = torch.randn(2, 16, 8, 8).half()
    compiled = escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="measure",
                                  progress=False)
    assert timed == ["vector-sparse", "escoin"]
    layer = compiled.metadata["layers"][0]
    assert layer["kernel"] == kernel
    if kernel == "escoin":
        assert layer["reason"] == (f"measured: escoin {escoin_us:.1f} us, dense 100.0 us "
                                   f"({100 / escoin_us:.2f}x); vector-sparse {vector_us:.1f} us")
    elif kernel == "dense":
        assert layer["reason"] == (f"measured: escoin {escoin_us:.1f} us, not 5% under dense "
                                   f"100.0 us; vector-sparse {vector_us:.1f} us")
    else:
        assert layer["reason"].startswith(f"measured: vector-sparse {vector_us:.1f} us")
    with torch.no_grad():
        expected = model.double()(x.double()).float()
    out = compiled(x).float()
    assert (out - expected).abs().max().item() <= 4e-3 * expected.abs().max().item()


def test_the_backend_offers_the_family_only_vector_pruned_layers_on_a_gpu():
    """On the CPU the backend's layers keep the Escoin CUDA-core family (the report's reason
    is that family's); the facts it reads carry the weight's block density."""
    from escoin_tvm.torch_compile import backend

    assert backend.FAMILIES["conv2d"][0].name == "vector-sparse"
    model = network().float()
    x = torch.randn(1, 32, 9, 9)
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="escoin", options={"dense": "eager"})(x)
        expected = model(x)
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)
    assert "vector-sparse" not in backend.last_report()


@pytest.mark.parametrize("vector_us, escoin_us, kernel", [
    (10.0, 20.0, "vector-sparse"), (20.0, 10.0, "escoin"), (99.0, 98.0, "dense")])
def test_the_backend_times_each_family_that_takes_a_layer_and_keeps_the_fastest(
        monkeypatch, vector_us, escoin_us, kernel):
    """The backend's measured dispatch of a layer both families take (the facts of a GPU
    graph, on the CPU): each family's layer is timed with PyTorch's operator once, and the
    fastest beating it by the margin runs; the report gives every time."""
    from escoin_tvm.torch_compile import backend

    timed = backend_family_times(monkeypatch, {"vector-sparse": vector_us, "escoin": escoin_us})
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU()).eval()
    prune.vectors(model, 0.8, group=16)
    model, x = model.half(), torch.randn(2, 16, 8, 8).half()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="escoin", options={
            "dense": "eager", "dispatch": "measure", "whole_graph": False})(x)
        expected = model(x)
    assert timed == [["vector-sparse", "escoin"]]
    layer = backend.REPORTS[-1].layers[0]
    assert layer.kernel == kernel
    best, other = sorted([("vector-sparse", vector_us), ("escoin", escoin_us)],
                         key=lambda pair: pair[1])
    assert layer.reason.startswith(f"measured as calls: {best[0]} {best[1]:.1f} us")
    assert layer.reason.endswith(f"; {other[0]} {other[1]:.1f} us")
    assert torch.allclose(out.float(), expected.float(), atol=2e-3, rtol=2e-3)


@pytest.mark.gpu
def test_the_backend_measures_the_family_against_cudnn_and_keeps_the_answer_on_the_gpu():
    from escoin_tvm.torch_compile import backend

    model = network().cuda()
    x = torch.randn(16, 32, 9, 9, device="cuda").half()
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="escoin")(x).float()
        expected = model.double()(x.double()).float()
    report = backend.last_report()
    assert "conv" in report
    assert (out - expected).abs().max().item() <= 4e-3 * expected.abs().max().item(), report
