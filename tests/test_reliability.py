"""What surrounds the numerics: the user's model left as it was, pruning that reaches its target,
errors that name the real cause as EscoinErrors (one line from the CLI), arguments Python users
pass, and a quiet compile."""
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as torch_prune

import escoin_tvm
from escoin_tvm import ArgumentError, DTypeError, EscoinError, ShapeError, models, prune
from escoin_tvm.cli import main as cli
from escoin_tvm.prune import prune_array
from escoin_tvm.kernels.conv_spec import Conv2dSpec


def small(seed=0, padding_mode="zeros"):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, padding_mode=padding_mode),
                                torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                torch.nn.Conv2d(8, 4, 1))
    return prune.magnitude(model, 0.9), torch.randn(2, 3, 8, 8)


# ---- the user's model ----
def test_compile_leaves_a_training_model_in_training_mode_and_says_what_it_compiles():
    model, x = small()
    model.train()
    with pytest.warns(UserWarning, match="training mode.*compiled for inference.*eval mode"):
        compiled = escoin_tvm.compile(model, (x,), target="llvm")
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_an_eval_model_compiles_without_a_warning():
    model, x = small()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        escoin_tvm.compile(model, (x,), target="llvm")
    assert not model.training


# ---- pruning ----
def test_pruning_a_model_pruned_with_torch_utils_prune_goes_through_its_mask():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, 3, padding=1)
    torch_prune.l1_unstructured(conv, "weight", amount=0.3)
    prune.magnitude(conv, 0.9)
    conv(torch.randn(1, 8, 6, 6))  # the hook recomputes the weight from orig * mask
    assert float((conv.weight == 0).float().mean()) >= 0.9
    compiled = escoin_tvm.compile(conv.eval(), (torch.randn(1, 8, 6, 6),), target="llvm")
    assert compiled.layers[0]["kernel"] == "escoin"


def test_pruning_reaches_its_target_and_the_report_never_reads_false():
    """216 weights at 0.7: 151.2 zeros are needed, so 152 (0.7037), not 151 (0.699)."""
    assert prune.zero_count(0.7, 216) == 152 and prune.zero_count(0.9, 10) == 9
    weight = prune_array(np.random.default_rng(0).standard_normal((4, 6, 3, 3), np.float32), 0.7)
    assert (weight == 0).mean() >= 0.7
    torch.manual_seed(0)
    conv = prune.magnitude(torch.nn.Conv2d(6, 4, 3), 0.7).eval()
    compiled = escoin_tvm.compile(conv, (torch.randn(1, 6, 5, 5),), target="llvm",
                                  sparsity_threshold=0.7)
    assert compiled.layers[0]["kernel"] == "escoin"
    from escoin_tvm.kernels.eligibility import distinct
    assert distinct(0.699074, 0.7) == ("0.699", "0.700")


def test_bad_sparsities_and_names_are_argument_errors():
    with pytest.raises(ArgumentError, match="sparsity"):
        prune.magnitude(torch.nn.Conv2d(2, 2, 1), 7)
    with pytest.raises(ArgumentError, match="unknown model 'nonsense'"):
        models.build("nonsense")


# ---- errors raised inside the pass, and errors that blame the right thing ----
def test_an_empty_batch_is_an_escoin_error():
    model, _ = small()
    with pytest.raises(EscoinError, match="example input 0 is empty"):
        escoin_tvm.compile(model.eval(), (torch.randn(0, 3, 8, 8),), target="llvm")


def test_an_escoin_error_inside_the_pass_reaches_the_user_as_itself(monkeypatch):
    import escoin_tvm.kernels.conv2d.lowering as lowering  # what the pass calls

    def fail(*_args):
        raise ShapeError("raised inside the pass")

    monkeypatch.setattr(lowering.EscoinWeight, "from_dense", fail)
    model, x = small()
    with pytest.raises(ShapeError, match="raised inside the pass"):
        escoin_tvm.compile(model.eval(), (x,), target="llvm")


def test_a_float64_bias_is_taken_and_an_integer_one_or_weight_is_named():
    """As PyTorch takes a float64 bias, so does a kernel (its epilogue adds it in float32)."""
    rng = np.random.default_rng(0)
    w = prune_array(rng.standard_normal((4, 2, 3, 3), np.float32), 0.5)
    x, bias = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), rng.standard_normal(4)
    out = escoin_tvm.build_sparse_conv2d(w, (1, 2, 5, 5), bias=bias)(x)
    expected = torch.nn.functional.conv2d(torch.from_numpy(x).double(),
                                          torch.from_numpy(w).double(), torch.from_numpy(bias))
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(DTypeError, match="bias is int64; a bias is a floating-point tensor"):
        escoin_tvm.build_sparse_conv2d(w, (1, 2, 5, 5), bias=np.zeros(4, np.int64))
    with pytest.raises(DTypeError, match="weight is int64; Escoin kernels take"):
        escoin_tvm.build_sparse_conv2d(torch.from_numpy(w).long(), (1, 2, 5, 5))


def test_a_kernel_larger_than_its_input_names_the_dilated_extent():
    with pytest.raises(ShapeError, match=r"3x3 kernel with dilation \(3, 3\) spans 7x7 input "
                                         r"pixels, more than the padded input's 4x4"):
        Conv2dSpec.create((1, 2, 4, 4), (3, 2, 3, 3), dilation=3)


@pytest.fixture(scope="module")
def cpu_module(tmp_path_factory):
    model, x = small()
    path = tmp_path_factory.mktemp("so") / "m.so"
    escoin_tvm.compile(model.eval(), (x,), target="llvm").export_library(path)
    return path, x


@pytest.mark.parametrize("device", ["cpu", "cpu:0", torch.device("cpu"), None])
def test_load_takes_torch_style_devices(cpu_module, device):
    path, x = cpu_module
    assert escoin_tvm.load(path, device=device)(x).shape == (2, 4, 8, 8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                    reason="needs two CUDA GPUs")
def test_a_module_and_a_kernel_for_the_second_gpu_run_there(tmp_path):
    model, x = small()
    model.eval()
    path = tmp_path / "m.so"
    escoin_tvm.compile(model, (x,), target="cuda").export_library(path)
    with torch.no_grad():
        expected = model(x)
    x1 = x.to("cuda:1")
    out = escoin_tvm.load(path, device="cuda:1")(x1)
    assert out.device == torch.device("cuda:1")
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-5)

    weight = prune_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3), np.float32), 0.9)
    kernel = escoin_tvm.build_sparse_conv2d(weight, (2, 3, 8, 8), padding=1, target="cuda",
                                            device=torch.device("cuda", 1))
    with torch.cuda.device(0):  # the current device is another GPU: the kernel still runs on 1
        y = kernel(x1)
    assert y.device == torch.device("cuda:1")
    torch.backends.cudnn.allow_tf32 = False
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x1, torch.from_numpy(weight).to(
        x1.device), padding=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device, words", [("cuda:0", "cannot run code compiled for the CPU"),
                                           ("tpu", "device must be"), (3.5, "device must be")])
def test_a_bad_device_is_named_as_the_argument(cpu_module, device, words):
    with pytest.raises(ArgumentError, match=words):
        escoin_tvm.load(cpu_module[0], device=device)


def test_damaged_and_foreign_libraries_say_what_is_wrong(cpu_module, tmp_path):
    data = cpu_module[0].read_bytes()
    body = bytearray(data)
    body[len(body) // 2: len(body) // 2 + 16] = os.urandom(16)
    (tmp_path / "random-body.so").write_bytes(bytes(body))
    with pytest.raises(EscoinError, match="random-body.so.*damaged"):
        escoin_tvm.load(tmp_path / "random-body.so")
    foreign = next(p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib64/libm.so.6",
                               "/lib/aarch64-linux-gnu/libm.so.6", np.core._multiarray_umath.__file__)
                   if os.path.exists(p))
    with pytest.raises(EscoinError, match="not one written by escoin-tvm's export_library"):
        escoin_tvm.load(foreign)


# ---- arguments Python users pass ----
def test_integral_numpy_and_torch_scalars_are_accepted_floats_refused():
    w = prune_array(np.random.default_rng(0).standard_normal((4, 2, 3, 3), np.float32), 0.5)
    kernel = escoin_tvm.build_sparse_conv2d(w, (1, 2, 9, 9), stride=np.int64(2),
                                            padding=np.int64(1), groups=torch.tensor(1))
    assert kernel.spec.stride == (2, 2) and kernel.spec.padding == (1, 1, 1, 1)
    with pytest.raises(ShapeError, match="stride must be an int.*1.5"):
        escoin_tvm.build_sparse_conv2d(w, (1, 2, 9, 9), stride=1.5)


@pytest.mark.parametrize("name", ["m.tar", "m", "m.bin"])
def test_export_refuses_a_path_load_would_refuse(tmp_path, name):
    model, x = small()
    compiled = escoin_tvm.compile(model.eval(), (x,), target="llvm")
    with pytest.raises(ArgumentError, match="'.so'"):
        compiled.export_library(tmp_path / name)
    with pytest.raises(ArgumentError, match="does not exist"):
        compiled.export_library(tmp_path / "missing" / "m.so")


# ---- the CLI: one line, exit code 2 ----
def cli_error(argv, capsys):
    code = cli(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("escoin: error: "), err
    return err[0]


@pytest.mark.parametrize("argv, words", [
    (["demo", "--model", "nonsense"], "unknown model"),
    (["demo", "--sparsity", "7"], "sparsity must be"),
    (["demo", "--batch", "0"], "--batch must be >= 1"),
    (["demo", "--structure", "blocks"], "--structure must be unstructured or vectors"),
])
def test_cli_demo_arguments(argv, words, capsys):
    assert words in cli_error(argv, capsys)


def test_cli_files_and_paths(cpu_module, tmp_path, capsys):
    path, x = cpu_module
    np.savez(tmp_path / "x.npz", a=x.numpy())
    os.rename(tmp_path / "x.npz", tmp_path / "x.pt2")
    assert "is an archive" in cli_error(["run", str(path), "--input", str(tmp_path / "x.pt2")],
                                        capsys)
    np.save(tmp_path / "x.npy", x.numpy())
    assert "does not exist" in cli_error(["run", str(path), "--input", str(tmp_path / "x.npy"),
                                          "-o", str(tmp_path / "missing" / "y.npy")], capsys)
    model, x = small()
    torch.export.save(torch.export.export(model.eval(), (x,)), tmp_path / "m.pt2")
    assert "does not exist" in cli_error(["compile", str(tmp_path / "m.pt2"), "-o",
                                          str(tmp_path / "missing" / "m.so"), "--target", "llvm"],
                                         capsys)


# ---- quiet ----
def test_a_compile_export_and_load_print_only_what_concerns_the_user(tmp_path, capfd):
    model, x = small(padding_mode="circular")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = escoin_tvm.compile(model.eval(), (x,), target="llvm")
        compiled(x)  # called before it is exported, the README's order
        compiled.export_library(tmp_path / "c.so")
    out, err = capfd.readouterr()
    assert "Fast mode segfaults" not in err and "Scope Saving" not in err, err
    assert not [w for w in caught if "LeafSpec" in str(w.message)]
    loaded = escoin_tvm.load(tmp_path / "c.so")
    assert "Scope Loaded" not in capfd.readouterr().err
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_a_compile_shows_its_progress_when_asked_and_only_then(capfd):
    model, x = small()
    escoin_tvm.compile(model.eval(), (x,), target="llvm", progress=True)
    assert "escoin compile" in capfd.readouterr().err
    escoin_tvm.compile(model.eval(), (x,), target="llvm", progress=False)
    assert "escoin compile" not in capfd.readouterr().err
    escoin_tvm.compile(model.eval(), (x,), target="llvm")  # stderr is not a terminal here
    assert "escoin compile" not in capfd.readouterr().err


def test_the_progress_bar_is_not_full_while_tvm_builds_and_names_its_passes(monkeypatch):
    """The build is the last stage and the longest: the bar counts it when it ends, and
    meanwhile shows the pass TVM runs."""
    from escoin_tvm import compiler

    seen = []
    real = compiler._build

    def build(mod, target, cuda_graph, stock, instruments=()):
        bar = instruments[0].bar
        seen.append((bar.n, bar.total))
        result = real(mod, target, cuda_graph, stock, instruments)
        seen.append(bar.postfix)
        return result

    monkeypatch.setattr(compiler, "_build", build)
    model, x = small()
    escoin_tvm.compile(model.eval(), (x,), target="llvm", progress=True)
    (done, total), postfix = seen
    assert done < total
    assert postfix  # a pass name
