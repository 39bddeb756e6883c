"""escoin_tvm.compile on pruned torchvision architectures, export/load, and the CLI."""
import warnings

import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import EscoinError, models, prune
from escoin_tvm import runtime as RUNTIME
from escoin_tvm.cli import main as cli

SMALL = {"alexnet": dict(hidden=64), "vgg11": dict(hidden=64), "resnet18": {}, "googlenet": {}}


def pruned(name, sparsity=0.9):
    """The first convolution left dense, the others pruned to ``sparsity``."""
    model = models.build(name, num_classes=10, **SMALL[name])
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    dense = first.weight.detach().clone()
    prune.magnitude(model, sparsity)
    with torch.no_grad():
        first.weight.copy_(dense)
    return model


def assert_matches(out, ref):
    scale = ref.abs().max().item()
    assert (out - ref).abs().max().item() <= 1e-4 * scale + 1e-6


@pytest.fixture(scope="module")
def resnet18_llvm():
    model = pruned("resnet18")
    x = torch.randn(2, 3, 64, 64)
    return model, x, escoin_tvm.compile(model, (x,), target="llvm")


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "googlenet"])
def test_models_match_pytorch_on_cpu(name):
    model = pruned(name)
    x = torch.randn(1, 3, 64, 64)
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    with torch.no_grad():
        assert_matches(compiled(x), model(x))
    kernels = {l["name"]: l["kernel"] for l in compiled.layers}
    first = next(iter(kernels))
    assert kernels[first] == "dense"  # the unpruned first convolution
    assert sum(k == "escoin" for k in kernels.values()) == len(kernels) - 1


@pytest.mark.parametrize("dtype, tolerance", [(torch.float16, 3e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_models_compile_run_and_export_in_their_dtype(dtype, tolerance, tmp_path):
    """model.half() / model.to(torch.bfloat16): Escoin kernels in that dtype (float32 sums),
    checked against the same weights in float64. Batch norms sit after a biased convolution,
    after a bias-free one, after a ReLU and after a flatten: each is folded in float32."""
    def small():
        torch.manual_seed(0)
        layers = [torch.nn.Conv2d(3, 16, 3, padding=1)]
        for stride in (1, 2, 1):
            layers += [torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
                       torch.nn.Conv2d(16, 16, 3, stride, 1, bias=False)]
        net = torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.BatchNorm2d(16),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 10))
        for bn in net.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                torch.nn.init.uniform_(bn.running_var, 0.5, 1.5)
                torch.nn.init.uniform_(bn.running_mean, -0.1, 0.1)
        return prune.magnitude(net, 0.9).eval()

    model = small().to(dtype)
    x = torch.randn(2, 3, 16, 16).to(dtype)
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    with torch.no_grad():
        ref = small().double()(x.double())
    out = compiled(x)
    assert out.dtype == dtype
    assert float((out.double() - ref).abs().max() / ref.abs().max()) < tolerance
    name = str(dtype).replace("torch.", "")
    assert all(l["dtype"] == name for l in compiled.layers)
    assert sum(l["kernel"] == "escoin" for l in compiled.layers) == 4
    assert f" {name} " in compiled.report()
    loaded = escoin_tvm.load(compiled.export_library(tmp_path / "half.so"))
    assert torch.equal(loaded(x), out) and loaded.metadata["inputs"][0][1] == name


def test_the_demo_runs_on_the_cpu_and_states_the_comparison(capsys):
    """It says the result is a CPU one, names the baseline it ran, and prints each variant's
    spread over its rounds (min, median, max), taken in turn."""
    assert cli(["demo", "--model", "resnet18", "--size", "16", "--sparsity", "0.9"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "-> OK" in next(l for l in lines if l.startswith("check against"))
    assert lines[-1].startswith("on the CPU, with ") and "escoin-tvm targets NVIDIA GPUs" in \
        lines[-1] and "than the fastest dense PyTorch run here (eager fp32), by medians" in \
        lines[-1]
    rows = [l.split() for l in lines if l.startswith(("escoin-tvm, float32", "dense PyTorch"))]
    assert len(rows) == 2 and all(float(r[-3]) <= float(r[-2]) <= float(r[-1]) for r in rows)
    assert cli(["demo", "--dtype", "float64"]) == 2


def test_the_demo_prunes_in_vectors_when_asked(capsys):
    assert cli(["demo", "--model", "resnet18", "--size", "16", "--sparsity", "0.9",
                "--structure", "vectors", "--dtype", "float16"]) == 0
    out = capsys.readouterr().out
    assert "convolutions pruned in vectors of 16 output channels to 90%" in out
    assert "here the Escoin CUDA-core or CPU kernels run them" in out
    assert "-> OK" in out


def test_float64_models_are_refused_naming_the_input():
    with pytest.raises(escoin_tvm.DTypeError, match="example input 0 is float64"):
        escoin_tvm.compile(pruned("alexnet").double(), (torch.randn(1, 3, 64, 64).double(),),
                           target="llvm")


def test_resnet18_report_and_outputs(resnet18_llvm):
    model, x, compiled = resnet18_llvm
    with torch.no_grad():
        out = compiled(x)
        assert isinstance(out, torch.Tensor)
        assert_matches(out, model(x))
        assert_matches(torch.from_numpy(compiled(x.numpy())), model(x))
    report = compiled.report()
    assert "layer1.0.conv1" in report and "bias+relu" in report
    assert "conv1 " in report and "sparsity 0.00 < threshold 0.70" in report
    assert "19 of 20 convolutions on Escoin kernels" in report


def test_threshold_keeps_layers_dense(resnet18_llvm):
    model, x, _ = resnet18_llvm
    compiled = escoin_tvm.compile(model, (x,), target="llvm", sparsity_threshold=0.95)
    assert all(l["kernel"] == "dense" for l in compiled.layers)
    with torch.no_grad():
        assert_matches(compiled(x), model(x))


def test_export_load_round_trip(resnet18_llvm, tmp_path):
    model, x, compiled = resnet18_llvm
    path = compiled.export_library(tmp_path / "r18.so")
    loaded = escoin_tvm.load(path)
    assert loaded.layers == compiled.layers
    np.testing.assert_array_equal(loaded(x.numpy()), compiled(x.numpy()))


def test_output_structure_is_kept():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 8, 3, padding=1)

        def forward(self, x):
            y = self.conv(x)
            return {"feat": y, "pooled": (y.mean((2, 3)), torch.relu(y))}

    model = prune.magnitude(TwoHeads().eval(), 0.8)
    x = torch.randn(1, 4, 6, 6)
    out = escoin_tvm.compile(model, (x,), target="llvm")(x)
    ref = model(x)
    assert set(out) == {"feat", "pooled"} and isinstance(out["pooled"], tuple)
    assert_matches(out["pooled"][1], ref["pooled"][1])


def test_cli_end_to_end(tmp_path, capsys):
    model = prune.magnitude(torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3)).eval(), 0.9)
    x = torch.randn(1, 3, 12, 12)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    np.save(tmp_path / "x.npy", x.numpy())
    so = str(tmp_path / "m.so")
    assert cli(["compile", str(tmp_path / "m.pt2"), "-o", so, "--target", "llvm"]) == 0
    assert cli(["info", so]) == 0
    assert "2 of 2 convolutions on Escoin kernels" in capsys.readouterr().out
    out_npy = str(tmp_path / "y.npy")
    assert cli(["run", so, "--input", str(tmp_path / "x.npy"), "-o", out_npy]) == 0
    assert_matches(torch.from_numpy(np.load(out_npy)), model(x).detach())
    capsys.readouterr()
    assert cli(["compile", str(tmp_path / "m.pt2"), "-o", so, "--target", "llvm", "--quiet",
                "--dispatch-by", "none"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err == ""
    assert cli(["info", so]) == 0
    assert "0 of 2 convolutions on Escoin kernels" in capsys.readouterr().out


def _batch_net():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(16, 8, 3, stride=2), torch.nn.Flatten(),
                                torch.nn.Linear(8 * 5 * 5, 10))
    return prune.magnitude(model, 0.9, layers="all").eval()


def test_one_module_serves_several_batch_sizes(tmp_path):
    """compile(..., batch_sizes=...) builds one module with a function per batch size (the
    reshape before the Linear has the batch in it); a call runs the one of its input's batch,
    after export and load too, and another batch is an error naming the sizes it serves."""
    model = _batch_net()
    compiled = escoin_tvm.compile(model, (torch.randn(1, 3, 12, 12),), target="llvm",
                                  batch_sizes=[1, 3, 3, 16])
    assert compiled.batch_sizes == [1, 3, 16]
    path = tmp_path / "m.so"
    compiled.export_library(path)
    loaded = escoin_tvm.load(path)
    for batch in (1, 3, 16):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            expected = model(x)
        assert_matches(compiled(x), expected)
        assert_matches(loaded(x), expected)
        assert_matches(torch.from_numpy(loaded(x.numpy())), expected)
    with pytest.raises(escoin_tvm.ShapeError, match="serves batch sizes 1, 3, 16, not a batch "
                                                     "of 2"):
        compiled(torch.randn(2, 3, 12, 12))
    report = loaded.report()
    assert "batch 1:" in report and "batch 16:" in report and "16x3x12x12" in report
    assert compiled.time(number=1, repeat=1, batch=16) > 0
    variants = compiled.metadata["variants"]
    assert [v["function"] for v in variants.values()] == ["main", "main_b3", "main_b16"]
    assert all(layer["kernel"] == "escoin" for v in variants.values() for layer in v["layers"])


@pytest.mark.gpu
def test_one_cuda_module_serves_several_batch_sizes(tmp_path):
    model = _batch_net()
    compiled = escoin_tvm.compile(model, (torch.randn(1, 3, 12, 12),), target="cuda",
                                  batch_sizes=[1, 8], cuda_graph=True)
    compiled.export_library(tmp_path / "m.so")
    loaded = escoin_tvm.load(tmp_path / "m.so")
    for batch in (1, 8, 1):
        x = torch.randn(batch, 3, 12, 12)
        with torch.no_grad():
            expected = model(x)
        assert_matches(compiled(x.cuda()).cpu(), expected)
        assert_matches(loaded(x.cuda()).cpu(), expected)


def test_an_exported_program_with_a_dynamic_batch_compiles_for_several_sizes(tmp_path, capsys):
    model = _batch_net()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (torch.randn(2, 3, 12, 12),),
                                   dynamic_shapes=({0: batch},))
    with pytest.raises(EscoinError, match="batch_sizes"):  # without: the dynamic size refused
        escoin_tvm.compile(exported, None, target="llvm")
    torch.export.save(exported, tmp_path / "m.pt2")
    so = str(tmp_path / "m.so")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the program is for inference
        assert cli(["compile", str(tmp_path / "m.pt2"), "-o", so, "--target", "llvm",
                    "--batch-sizes", "2,5", "--quiet"]) == 0
    loaded = escoin_tvm.load(so)
    for size in (2, 5):
        x = torch.randn(size, 3, 12, 12)
        with torch.no_grad():
            assert_matches(loaded(x), model(x))
    assert cli(["compile", str(tmp_path / "m.pt2"), "-o", so, "--batch-sizes", "2,x"]) == 2
    assert "--batch-sizes takes batch sizes" in capsys.readouterr().err
    static = torch.export.export(model, (torch.randn(2, 3, 12, 12),))
    with pytest.raises(EscoinError, match="static batch .*export it with a dynamic batch"):
        escoin_tvm.compile(static, None, target="llvm", batch_sizes=[1, 2])


@pytest.mark.parametrize("sizes, words", [([], "non-empty"), (4, "non-empty"),
                                          ([1, 0], "positive ints"), ([1.5], "positive ints"),
                                          ("1,2", "non-empty")])
def test_bad_batch_sizes_are_named(sizes, words):
    with pytest.raises(escoin_tvm.ArgumentError, match=words):
        escoin_tvm.compile(_batch_net(), (torch.randn(1, 3, 12, 12),), target="llvm",
                           batch_sizes=sizes)


def test_batch_sizes_need_the_batch_first_in_every_input():
    class Two(torch.nn.Module):
        def forward(self, x, y):
            return x.sum() + y.sum()

    with pytest.raises(escoin_tvm.ArgumentError, match="example input 1 has shape"):
        escoin_tvm.compile(Two(), (torch.randn(2, 3), torch.randn(3, 3)), target="llvm",
                           batch_sizes=[1, 2])


def test_a_batch_norm_after_a_biased_convolution_folds_and_its_relu_fuses():
    """Conv2d(bias=True) -> BatchNorm2d -> ReLU in float32: TVM's FoldBatchnormToConv2D does
    not match the bias add between the two, ``workarounds.fold_batch_norms`` does."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16),
                                torch.nn.ReLU())
    with torch.no_grad():
        norm = model[1]
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-1, 1)
    model = prune.magnitude(model, 0.9).eval()
    x = torch.randn(2, 3, 10, 10)
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    assert [(layer["kernel"], layer["epilogue"]) for layer in compiled.layers] == \
        [("escoin", "bias+relu")]
    with torch.no_grad():
        assert_matches(compiled(x), model(x))


@pytest.mark.parametrize("argv, words", [
    (["info", "/nonexistent/m.so"], "no compiled module"),
    (["compile", "/nonexistent/m.pt2", "-o", "x.so"], "no such model file"),
])
def test_cli_errors(argv, words, capsys):
    assert cli(argv) == 2
    assert words in capsys.readouterr().err


def test_corrupt_files_are_named(tmp_path, capsys):
    bad_so, bad_pt2 = tmp_path / "bad.so", tmp_path / "bad.pt2"
    bad_so.write_bytes(b"\x7fELF not really a library")
    bad_pt2.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(EscoinError, match="bad.so.*not a valid escoin-tvm module"):
        escoin_tvm.load(bad_so)
    assert cli(["compile", str(bad_pt2), "-o", str(tmp_path / "o.so")]) == 2
    assert "bad.pt2" in capsys.readouterr().err


def test_untraceable_model_says_what_failed():
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # torch.export cannot trace data-dependent control flow
                return x * 2
            return x

    with pytest.raises(EscoinError, match="torch.export could not trace DataDependent"):
        escoin_tvm.compile(DataDependent(), (torch.randn(1, 3, 4, 4),), target="llvm")


@pytest.mark.parametrize("inputs, words", [
    ((torch.randn(1, 3, 8, 8, dtype=torch.float64),), "float32"),
    ((), "non-empty"),
    (([1, 2],), "torch tensor or numpy array"),
])
def test_bad_example_inputs(inputs, words):
    model = torch.nn.Conv2d(3, 4, 3).eval()
    with pytest.raises(EscoinError, match=words):
        escoin_tvm.compile(model, inputs, target="llvm")


def test_gpu_crashing_adaptive_pool_is_refused_at_compile_time():
    model = models.build("alexnet", num_classes=10, hidden=16)  # 64x64: pool 1x1 -> 6x6
    with pytest.raises(EscoinError, match="adaptive average pool from 1x1 to 6x6"):
        escoin_tvm.compile(model, (torch.randn(1, 3, 64, 64),), target="cuda")


def test_unknown_target():
    with pytest.raises(escoin_tvm.TargetError, match="vulkan"):
        escoin_tvm.compile(torch.nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),),
                           target={"kind": "vulkan"})


def test_wrong_input_at_call_time(resnet18_llvm):
    _, x, compiled = resnet18_llvm
    with pytest.raises(escoin_tvm.ShapeError, match=r"shape \(2, 3, 64, 64\)"):
        compiled(torch.randn(1, 3, 64, 64))
    with pytest.raises(EscoinError, match="takes 1 input"):
        compiled(x, x)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "googlenet", "alexnet", "vgg11"])
def test_models_match_pytorch_on_gpu(name, tmp_path):
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = pruned(name).cuda()
    # AlexNet and VGG at 224: at 64x64 their adaptive pools upsample (1x1 -> 6x6, 2x2 -> 7x7),
    # and TVM's default CUDA code for that crashes (experiments/tvm_bugs/adaptive_pool_gpu_crash.py)
    size = 224 if name in ("alexnet", "vgg11") else 64
    x = torch.randn(2, 3, size, size, device="cuda")
    compiled = escoin_tvm.compile(model, (x,), target="cuda")
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    assert out.is_cuda
    assert_matches(out, ref)
    loaded = escoin_tvm.load(compiled.export_library(tmp_path / "m.so"))
    assert_matches(loaded(x), ref)
    with pytest.raises(ValueError, match="cpu"):
        compiled(x.cpu())  # a CPU tensor for a GPU module is refused, not silently copied


@pytest.mark.gpu
def test_cuda_graph_option_matches_pytorch_and_survives_export(tmp_path):
    torch.backends.cudnn.allow_tf32 = False
    model = pruned("resnet18").cuda()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    compiled = escoin_tvm.compile(model, (x,), target="cuda", cuda_graph=True)
    assert compiled.metadata["cuda_graph"]
    with torch.no_grad():
        ref = model(x)
    for _ in range(3):  # the first call captures the graphs, later ones replay them
        assert_matches(compiled(x), ref)
    x2 = torch.randn(2, 3, 64, 64, device="cuda")  # replay reads the new input
    with torch.no_grad():
        assert_matches(compiled(x2), model(x2))
    assert_matches(escoin_tvm.load(compiled.export_library(tmp_path / "g.so"))(x), ref)


def test_cuda_graph_option_is_ignored_on_cpu():
    model, x = pruned("resnet18"), torch.randn(1, 3, 32, 32)
    compiled = escoin_tvm.compile(model, (x,), target="llvm", cuda_graph=True)
    assert not compiled.metadata["cuda_graph"]
    with torch.no_grad():
        assert_matches(compiled(x), model(x))


def test_layers_left_on_tvms_dense_code_are_announced_in_one_line():
    """A convolution that stays dense runs on TVM's untuned code: the compile says so, names
    the first such layer, and points at the torch.compile backend; plain TVM (dispatch_by=
    "none") was asked for and says nothing."""
    import warnings

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3)).eval()
    prune.magnitude(model[1:], 0.9)  # the first stays dense
    x = torch.randn(1, 3, 10, 10)
    with pytest.warns(UserWarning, match=r"1 of 2 convolutions stay dense .* \(the first: 0, "
                                         r"sparsity 0\.00 < threshold 0\.70\).*backend='escoin'"):
        escoin_tvm.compile(model, (x,), target="llvm")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        escoin_tvm.compile(model, (x,), target="llvm", dispatch_by="none")


def test_info_reads_a_cuda_modules_report_without_loading_it(tmp_path, capsys):
    """The metadata follows the library, so ``info`` needs no runtime for the module's target:
    a CUDA module's report on a machine without a GPU. The metadata is under the checksum."""
    model = prune.magnitude(torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3)).eval(), 0.9)
    x = torch.randn(1, 3, 12, 12)
    so = str(tmp_path / "m.so")
    escoin_tvm.compile(model, (x,), target={"kind": "cuda", "arch": "sm_90"}).export_library(so)
    assert cli(["info", so]) == 0
    out = capsys.readouterr().out
    assert '"kind": "cuda"' in out or "cuda" in out.split("\n")[0]
    assert "2 of 2 convolutions on Escoin kernels" in out
    data = bytearray(open(so, "rb").read())
    data[-RUNTIME.META_RECORD_SIZE - 5] ^= 1  # a byte of the metadata
    open(so, "wb").write(bytes(data))
    assert cli(["info", so]) == 2
    assert "damaged" in capsys.readouterr().err


def test_a_module_exported_without_metadata_after_it_still_loads(tmp_path):
    model = prune.magnitude(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)).eval(), 0.9)
    x = torch.randn(1, 3, 8, 8)
    compiled = escoin_tvm.compile(model, (x,), target="llvm")
    so = str(tmp_path / "old.so")
    compiled.executable.export_library(so)
    RUNTIME.append_integrity_record(so)  # the record of earlier versions: the library only
    assert RUNTIME.read_metadata(so) is None
    loaded = escoin_tvm.load(so)
    np.testing.assert_array_equal(loaded(x.numpy()), compiled(x.numpy()))


def test_cli_bench_checks_and_times_a_model_against_dense_pytorch(tmp_path, capsys):
    model = prune.magnitude(torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3)).eval(), 0.9)
    x = torch.randn(1, 3, 12, 12)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    assert cli(["bench", str(tmp_path / "m.pt2"), "--rounds", "2", "--target", "llvm"]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 convolutions on Escoin kernels" in out
    error = float(out.split("in float64: ")[1].split()[0])
    assert error < 1e-4
    assert "dense PyTorch, eager fp32" in out and "(ms, 2 rounds)" in out
    assert "on the CPU, with" in out  # a CPU result says so
    assert cli(["bench", str(tmp_path / "m.pt2"), "--rounds", "1", "--target", "llvm",
                "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "input 1x3x12x12 bfloat16" in out and "escoin-tvm bfloat16" in out
    assert float(out.split("in float64: ")[1].split()[0]) < 4e-2
    assert cli(["bench", str(tmp_path / "m.pt2"), "--dtype", "float8"]) == 2
