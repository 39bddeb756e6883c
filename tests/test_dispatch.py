"""Per-layer dispatch: by threshold, by measurement on the device, or off (plain TVM)."""
import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import EscoinError, models, prune
from escoin_tvm.kernels.eligibility import beats_dense
from escoin_tvm.prune import DEEP_COMPRESSION_DENSITY, deep_compression
from escoin_tvm.transform import SparseConv2dDispatch


def small_net():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    return prune.magnitude(model, 0.9).eval(), torch.randn(2, 3, 10, 10)


def matches(compiled, model, x):
    """The compiled model's output on ``x`` (given as numpy, which every target takes) against
    the PyTorch model's on the CPU."""
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.numpy()), model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("target", ["llvm", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_measured_dispatch_times_each_layer_both_ways(target):
    model, x = small_net()
    compiled = escoin_tvm.compile(model, (x,), target=target, dispatch_by="measure")
    for layer in compiled.layers:
        assert layer["escoin_us"] > 0 and layer["dense_us"] > 0
        assert layer["reason"].startswith("measured:")
        # sparse only beyond the noise margin (kernels/eligibility.py)
        faster = "escoin" if beats_dense(layer["escoin_us"], layer["dense_us"]) else "dense"
        assert layer["kernel"] == faster
    matches(compiled, model, x)


def test_measured_dispatch_compiles_both_sides_of_a_layer_as_one_module(monkeypatch):
    """Each layer's timed module holds the Escoin side (rewritten by the pass) and the dense
    side (left as it is): one compile per layer."""
    import tvm

    import escoin_tvm.measure

    model, x = small_net()
    compiled_modules, compile = [], tvm.compile

    def recording(mod, *args, **kwargs):
        compiled_modules.append(mod)
        return compile(mod, *args, **kwargs)

    monkeypatch.setattr(escoin_tvm.measure.tvm, "compile", recording)
    compiled = escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="measure")
    timed = [m for m in compiled_modules if "dense" in [g.name_hint for g in m.get_global_vars()]]
    assert len(timed) == len(compiled.layers) == 3
    for mod in timed:
        escoin, dense = mod["escoin"].script(), mod["dense"].script()
        assert "call_tir" in escoin and "R.nn.conv2d" not in escoin
        assert "R.nn.conv2d" in dense and "call_tir" not in dense
    matches(compiled, model, x)


def test_measured_dispatch_says_what_the_layers_left_dense_cost(monkeypatch):
    """A layer that stays dense (here under the threshold) is timed on TVM's dense code: the
    report and the warning say what it costs."""
    model, x = small_net()
    with torch.no_grad():
        model[0].weight.normal_()  # dense again: under the threshold
    with pytest.warns(UserWarning, match=r"[1-3] of 3 convolutions stay dense .*, measured at "
                                         r"[0-9.]+ us per call together"):
        compiled = escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="measure")
    first = compiled.layers[0]
    assert first["kernel"] == "dense" and first["reason"].startswith("sparsity")
    assert first["dense_us"] > 0 and first["escoin_us"] is None
    report = compiled.report()
    assert "escoin us" in report.splitlines()[0] and "dense us" in report.splitlines()[0]
    assert f"{first['dense_us']:.1f}" in report.splitlines()[2]
    left = sum(layer["dense_us"] for layer in compiled.layers if layer["kernel"] == "dense")
    assert f"timed dense one(s) take {left:.1f} us per call together" in report
    matches(compiled, model, x)
    # without measurement nothing is timed, and the report has no time columns
    plain = escoin_tvm.compile(model, (x,), target="llvm")
    assert plain.layers[0]["dense_us"] is None and "dense us" not in plain.report()


def test_measured_dispatch_keeps_a_layer_dense_when_dense_wins(monkeypatch):
    """The pass's choice follows the timer: a timer where the dense side wins keeps it dense."""
    model, x = small_net()
    calls = []

    def timer(conv, make_pass, family):
        calls.append(make_pass())
        return (2e-6, 1e-6) if len(calls) == 2 else (1e-6, 2e-6)  # dense wins the 2nd layer

    timer.dense = lambda conv: pytest.fail("every layer here is a candidate, timed both ways")
    import escoin_tvm.measure

    monkeypatch.setattr(escoin_tvm.measure, "LayerTimer", lambda target: timer)
    compiled = escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="measure")
    assert [l["kernel"] for l in compiled.layers] == ["escoin", "dense", "escoin"]
    assert "escoin 2.0 us, not 5% under dense 1.0 us" in compiled.layers[1]["reason"]
    assert all(isinstance(p, SparseConv2dDispatch) for p in calls)
    matches(compiled, model, x)


def test_dispatch_off_is_plain_tvm():
    model, x = small_net()
    compiled = escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="none")
    assert [l["kernel"] for l in compiled.layers] == ["dense"] * 3
    assert "Escoin pass off" in compiled.layers[0]["reason"]
    matches(compiled, model, x)


def test_bad_dispatch_mode():
    model, x = small_net()
    with pytest.raises(EscoinError, match="dispatch_by must be"):
        escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="fastest")


def test_measured_dispatch_needs_the_device():
    if escoin_tvm.support.target.has_gpu():
        pytest.skip("this machine has a GPU")
    model, x = small_net()
    with pytest.raises(escoin_tvm.TargetError, match="no CUDA GPU"):
        escoin_tvm.compile(model, (x,), target="cuda", dispatch_by="measure")


@pytest.mark.parametrize("network", sorted(DEEP_COMPRESSION_DENSITY))
def test_deep_compression_sparsities(network):
    model = deep_compression(models.build(network), network)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    kept = [float((c.weight != 0).float().mean()) for c in convs]
    np.testing.assert_allclose(kept, DEEP_COMPRESSION_DENSITY[network], atol=1e-3)
    with pytest.raises(ValueError, match="resnet50"):
        deep_compression(models.build("resnet18"), "resnet50")
