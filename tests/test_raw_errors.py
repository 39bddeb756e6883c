"""What users pass that once raised a raw error (a TypeError, ValueError or a crash deep in TVM
or inductor): each is now taken where PyTorch takes it, or refused as an EscoinError that
names the argument, the option or the input."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import escoin_tvm
from escoin_tvm import ArgumentError, DTypeError, EscoinError, models, prune


def pruned_cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU())
    return prune.magnitude(model, 0.9).eval(), torch.randn(1, 8, 6, 6)


def backend_report(model, *args, **options):
    from escoin_tvm.torch_compile import backend

    torch._dynamo.reset()
    out = torch.compile(model, backend="escoin", options=options or None)(*args)
    return out, backend.REPORTS[-1].layers


@pytest.mark.parametrize("options, match", [
    ({"thresh": 0.5}, r"unknown option\(s\) 'thresh' \(did you mean 'threshold'\?\)"),
    ({"threshold": "abc"}, r"options\['threshold'\] must be a number in \[0, 1\]"),
    ({"threshold": None}, r"options\['threshold'\] must be a number"),
    ({"tuning_log": 42}, r"options\['tuning_log'\] must be the path of a tuning log"),
])
def test_bad_backend_options_are_named(options, match):
    model, x = pruned_cnn()
    with pytest.raises(Exception) as raised, torch.no_grad():
        backend_report(model, x, **options)
    # Dynamo raises a backend's error as BackendCompilerFailed, holding it as inner_exception
    error = getattr(raised.value, "inner_exception", raised.value)
    assert isinstance(error, ArgumentError), repr(raised.value)
    assert pytest.importorskip("re").search(match, str(error)), str(error)


def test_inductor_options_still_reach_inductor():
    model, x = pruned_cnn()
    with torch.no_grad():
        out, _ = backend_report(model, x, **{"max_autotune": False})
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


def test_an_input_that_requires_grad_keeps_its_layers_with_pytorch_and_says_so():
    """A backward pass works: with gradients on, a layer whose input needs them stays dense
    (the Escoin operator has no backward), and a graph that took no layer for that warns."""
    model, x = pruned_cnn()
    for p in model.parameters():
        p.requires_grad_(False)
    x.requires_grad_(True)
    with pytest.warns(UserWarning, match="gradients are on, so none of the graph's"):
        out, report = backend_report(model, x)
    out.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert report[0].kernel == "dense" and "the input requires them" in report[0].reason


def test_conv2d_padding_given_as_a_one_element_list():
    from escoin_tvm.torch_compile import graph

    assert graph._pair([1]) == (1, 1) and graph._pair((2, 3)) == (2, 3) and graph._pair(4) == (4, 4)

    class PaddedAsList(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(8, 16, 3)

        def forward(self, x):
            return F.conv2d(x, self.conv.weight, self.conv.bias, padding=[1])

    model = PaddedAsList().eval()
    prune.magnitude(model, 0.9)
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        out, report = backend_report(model, x, threshold=0.5)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert report[0].kernel == "escoin"


def test_a_dynamic_batch_export_is_refused_naming_the_input_and_dimension(tmp_path, capsys):
    from escoin_tvm.cli import main as cli

    model, x = pruned_cnn()
    batch = torch.export.Dim("batch", min=2, max=32)
    exported = torch.export.export(model, (torch.randn(2, 8, 6, 6),),
                                   dynamic_shapes=({0: batch},))
    with pytest.raises(EscoinError, match=r"dynamic size\(s\) in dimension\(s\) \[0\]"):
        escoin_tvm.compile(exported, None, target="llvm")
    path = tmp_path / "dynamic.pt2"
    torch.export.save(exported, str(path))
    assert cli(["compile", str(path), "-o", str(tmp_path / "m.so"), "--target", "llvm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("escoin: error:") and "dynamic size" in err and "Traceback" not in err


def test_integer_inputs_that_reach_no_kernel_are_taken():
    """Token ids into an embedding, then a pruned Linear: the ids never reach a kernel."""
    torch.manual_seed(0)

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 32)
            self.fc = torch.nn.Linear(32, 16)

        def forward(self, ids):
            return self.fc(self.embed(ids).mean(dim=1))

    model = prune.magnitude(Tokens().eval(), 0.9, layers="linear")
    ids = torch.randint(0, 50, (2, 7))
    compiled = escoin_tvm.compile(model, (ids,), target="llvm")
    assert compiled.linear_layers[0]["kernel"] == "escoin"
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), model(ids), rtol=1e-4, atol=1e-5)
    assert compiled.time(number=2, repeat=1) > 0  # its timing input is ids in range
    with pytest.raises(DTypeError, match="example input 0 is float64"):
        escoin_tvm.compile(model, (ids.double(),), target="llvm")


def test_model_numbers_are_checked():
    with pytest.raises(ArgumentError, match="num_classes must be an int >= 1, got -1"):
        models.build("alexnet", num_classes=-1)
    with pytest.raises(ArgumentError, match="sparsity_threshold must be a number in"):
        escoin_tvm.compile(*pruned_cnn(), target="llvm", sparsity_threshold="high")
    model, x = pruned_cnn()
    compiled = escoin_tvm.compile(model, (x,), target="llvm",
                                  sparsity_threshold=np.float32(0.8))
    assert compiled.layers[0]["kernel"] == "escoin"


def test_max_pools_without_a_stride_and_with_ceil_mode_convert():
    class Pools(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3)

        def forward(self, x):
            y = self.conv(x)
            return (F.max_pool2d(y, 2, ceil_mode=True), torch.nn.MaxPool2d(3, 2, ceil_mode=True)(y),
                    F.max_pool2d(y, 2))

    model = prune.magnitude(Pools().eval(), 0.9)
    x = torch.randn(1, 3, 10, 10)
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    with torch.no_grad():
        for out, expected in zip(compiled(x), model(x)):
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_a_float32_batch_norm_after_a_half_convolution_runs_as_pytorch_runs_it():
    """``model.half()`` of the convolutions only: PyTorch runs the float32 batch norm on the
    half input; so does the compiled model (in float32, rounded back)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU()).eval()
    prune.magnitude(model, 0.9)
    model[0].half()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5)
        model[1].running_mean.uniform_(-0.1, 0.1)
    x = torch.randn(1, 8, 9, 9).half()
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    with torch.no_grad():
        out, expected = compiled(x), model(x)
    assert out.dtype == expected.dtype == torch.float16
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-3, atol=2e-3)
    assert compiled.layers[0]["kernel"] == "escoin"


def hooked_model():
    """A layer pruned the usual PyTorch way: its hook computes weight_orig * weight_mask."""
    import torch.nn.utils.prune as torch_prune

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1, bias=False),
                                torch.nn.BatchNorm2d(16), torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 1.5)
    torch_prune.l1_unstructured(model[0], "weight", 0.9)
    return model, torch.randn(1, 8, 8, 8)


def test_a_layer_with_prune_hooks_is_taken_by_compile_with_its_batch_norm_folded():
    model, x = hooked_model()
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    assert [(l["kernel"], l["epilogue"]) for l in compiled.layers] == [("escoin", "bias+relu")]
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_layer_with_prune_hooks_is_taken_by_the_backend_with_its_batch_norm_folded():
    model, x = hooked_model()
    with torch.no_grad():
        out, report = backend_report(model, x)
        torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)
    assert report[0].kernel == "escoin" and "batch norm folded" in report[0].epilogue
