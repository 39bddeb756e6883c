"""Faults and hostile inputs: damaged files, a tuning job killed mid-way, concurrent use from
threads, GPU memory running out. Each ends in a clear error or a correct result."""
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import zipfile

import numpy as np
import pytest
import torch
import tvm

import escoin_tvm
from escoin_tvm import EscoinError, prune
from escoin_tvm.cli import main as cli
from helpers import outcomes_in_children


def net(seed, channels=8):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, channels, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(channels, channels, 3, padding=1),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(channels, 5))
    return prune.magnitude(model, 0.9).eval()


@pytest.fixture(scope="module")
def exported_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    model, x = net(0), torch.randn(1, 3, 12, 12)
    torch.export.save(torch.export.export(model, (x,)), root / "model.pt2")
    escoin_tvm.compile(model, (x,), target="llvm").export_library(root / "model.so")
    return root


def test_truncated_and_adversarial_model_files(exported_files, tmp_path, capsys):
    pt2 = (exported_files / "model.pt2").read_bytes()
    (tmp_path / "half.pt2").write_bytes(pt2[: len(pt2) // 2])
    with zipfile.ZipFile(tmp_path / "evil.pt2", "w") as archive:  # a zip, not an export
        archive.writestr("model/data.pkl", b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    for name in ("half.pt2", "evil.pt2"):
        assert cli(["compile", str(tmp_path / name), "-o", str(tmp_path / "o.so")]) == 2
        assert name in capsys.readouterr().err
    so = (exported_files / "model.so").read_bytes()
    (tmp_path / "half.so").write_bytes(so[: len(so) // 2])
    with pytest.raises(EscoinError, match="half.so"):
        escoin_tvm.load(tmp_path / "half.so")
    (tmp_path / "empty.so").write_bytes(b"")
    with pytest.raises(EscoinError, match="empty.so"):
        escoin_tvm.load(tmp_path / "empty.so")


def test_two_modules_from_many_threads():
    """Two compiled models called from 8 threads at once give the same results as one by one."""
    models = [net(1), net(2, channels=12)]
    inputs = [torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(i))
              for i in range(4)]
    compiled = [escoin_tvm.compile(m, (inputs[0],), target="llvm") for m in models]
    expected = {(m, i): compiled[m](x).numpy() for m in range(2) for i, x in enumerate(inputs)}
    errors, results = [], []

    def work(worker):
        try:
            for step in range(25):
                m, i = (worker + step) % 2, step % len(inputs)
                results.append(((m, i), compiled[m](inputs[i]).numpy()))
        except Exception as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 200
    for key, out in results:
        np.testing.assert_array_equal(out, expected[key])


KILLED_JOB = textwrap.dedent("""
    import sys, torch
    from escoin_tvm import prune
    from escoin_tvm.tuning.relax_integration import tune
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 3, padding=1))
    prune.magnitude(model, 0.9)
    tune(model.eval(), (torch.randn(1, 4, 10, 10),), log=sys.argv[1], target="llvm",
         trials=int(sys.argv[2]), trials_per_iter=2)
""")


def test_killed_tuning_job_leaves_a_log_that_resumes(tmp_path):
    from escoin_tvm.tuning import TuningLog
    from escoin_tvm.tuning.log import RECORDS

    log = tmp_path / "log"
    script = tmp_path / "job.py"
    script.write_text(KILLED_JOB)
    job = subprocess.Popen([sys.executable, str(script), str(log), "8"], start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and job.poll() is None:
        records = log / RECORDS
        if records.exists() and len(records.read_text().splitlines()) >= 3:
            break
        time.sleep(0.5)
    assert job.poll() is None, "the job ended before it could be killed"
    os.killpg(job.pid, signal.SIGKILL)  # the job and its builder/runner workers
    job.wait()
    survived = len((log / RECORDS).read_text().splitlines())
    assert 3 <= survived < 16
    resumed = subprocess.run([sys.executable, str(script), str(log), "4"], capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    checked = TuningLog(log)
    assert checked.size >= max(survived, 8)  # nothing lost; both tasks have at least 4 trials


@pytest.mark.gpu
@pytest.mark.gpu_exclusive
def test_out_of_gpu_memory_is_an_error_the_process_survives():
    """With the GPU's memory taken, a run fails with a clear error; once memory is free again
    the same module runs correctly."""
    # Activations of several MiB: what the hog below leaves free (under one of torch's 2 MiB
    # segments) can still hold small buffers, and then the run succeeds (seen in a full-suite run).
    model, x = net(3), torch.randn(4, 3, 192, 192)
    compiled = escoin_tvm.compile(model, (x,), target="cuda")
    xd = x.cuda()
    # Empty TVM's memory pool first: buffers cached by earlier tests would let the run succeed
    # without allocating (seen when the whole GPU suite runs in one process).
    tvm.get_global_func("vm.builtin.memory_manager.clear")()
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    hog = [torch.empty(max(free - (64 << 20), 1 << 20), dtype=torch.uint8, device="cuda")]
    while True:  # take what is left, down to the last MiB
        try:
            hog.append(torch.empty(1 << 20, dtype=torch.uint8, device="cuda"))
        except torch.OutOfMemoryError:
            break
    try:
        with pytest.raises(EscoinError, match="out of memory"):
            compiled(xd)
    finally:
        del hog
        torch.cuda.empty_cache()
    # Regression: TVM left CUDA's "last error" set, so PyTorch's next launch raised "out of
    # memory" (seen as failures of later GPU tests in the same process).
    torch.cuda.synchronize()
    assert float((torch.ones(3, device="cuda") * 2).sum()) == 6.0
    torch.backends.cudnn.allow_tf32 = False
    with torch.no_grad():
        np.testing.assert_allclose(compiled(xd).cpu().numpy(), model(x).numpy(),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_inputs_on_the_wrong_device_are_refused():
    model, x = net(4), torch.randn(1, 3, 12, 12)
    on_cpu = escoin_tvm.compile(model, (x,), target="llvm")
    with pytest.raises(ValueError, match="module runs on cpu"):
        on_cpu(x.cuda())
    on_gpu = escoin_tvm.compile(model, (x,), target="cuda")
    with pytest.raises(ValueError, match="module runs on cuda"):
        on_gpu(x)


def one_tap_model():
    torch.manual_seed(5)
    return torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1, groups=2), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 9, 3), torch.nn.ReLU(),
                               torch.nn.Linear(3, 1), torch.nn.Linear(1, 3)).eval()


def cuda_source(compiled):
    sources = []

    def walk(module):
        for imported in module.imports:
            if imported.kind == "cuda":
                sources.append(imported.inspect_source())
            walk(imported)

    walk(compiled.executable.mod)
    return "\n".join(sources)


def test_trivial_reductions_avoid_the_tvm_cuda_bug():
    """Regression (found by the pipeline property tests on the H100): TVM 0.27's CUDA code for a
    one-element reduction fused with its epilogue applies the epilogue twice. A Linear with one
    input feature becomes a broadcast multiply; a one-tap convolution goes to Escoin."""
    x = torch.randn(1, 2, 3, 3)
    compiled = escoin_tvm.compile(one_tap_model(), (x,), target={"kind": "cuda", "arch": "sm_90"},
                                  sparsity_threshold=1.0)
    assert compiled.layers[0]["kernel"] == "escoin"
    assert "one-tap" in compiled.layers[0]["reason"]
    source = cuda_source(compiled)
    assert source.count("matmul") and "fused_matmul_add_kernel" not in source.replace(
        "fused_matmul_add_relu", "")  # the K=3 and K=36 matmuls remain, K=1 does not
    with torch.no_grad():  # and the rewrite is exact on the CPU path too
        llvm = escoin_tvm.compile(one_tap_model(), (x,), target="llvm", sparsity_threshold=1.0)
        np.testing.assert_allclose(llvm(x).numpy(), one_tap_model()(x).numpy(), rtol=1e-5, atol=1e-6)


class OneTapConv(torch.nn.Module):
    """A one-tap convolution whose weight is an input (not a constant the pass can encode)."""

    def __init__(self, stride, padding, groups):
        super().__init__()
        self.stride, self.padding, self.groups = stride, padding, groups

    def forward(self, x, w, b):
        return torch.relu(torch.nn.functional.conv2d(x, w, b, self.stride, self.padding,
                                                     groups=self.groups))


ONE_TAP_CASES = [((1, 3, 5, 7), 3, 1, 0), ((2, 2, 6, 5), 6, 2, (1, 2)), ((1, 1, 4, 4), 4, (1, 3), 1)]


def one_tap_inputs(shape, out_channels):
    torch.manual_seed(len(shape) + out_channels)
    return (torch.randn(shape), torch.randn(out_channels, 1, 1, 1), torch.randn(out_channels))


@pytest.mark.parametrize("shape, out_channels, stride, padding", ONE_TAP_CASES)
def test_one_tap_conv_with_an_input_weight_becomes_a_multiply(shape, out_channels, stride, padding):
    """The same TVM bug for a one-tap convolution the pass cannot take (its weight is not a
    constant): rewritten to pad/slice/repeat and a broadcast multiply, checked on the CPU."""
    from escoin_tvm.frontend import prepare
    from escoin_tvm.support.target import resolve_target
    from escoin_tvm.workarounds import trivial_reductions_to_multiply

    model, args = OneTapConv(stride, padding, shape[1]), one_tap_inputs(shape, out_channels)
    _, _, mod = prepare(model, args, resolve_target("llvm"))
    mod = trivial_reductions_to_multiply(mod)
    assert "conv2d" not in mod.script()
    vm = tvm.relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    out = vm["main"](*(tvm.runtime.tensor(a.numpy()) for a in args))
    out = out[0] if not hasattr(out, "numpy") else out
    np.testing.assert_allclose(out.numpy(), model(*args).numpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("shape, out_channels, stride, padding", ONE_TAP_CASES)
def test_one_tap_conv_with_an_input_weight_on_gpu(shape, out_channels, stride, padding):
    model, args = OneTapConv(stride, padding, shape[1]), one_tap_inputs(shape, out_channels)
    compiled = escoin_tvm.compile(model, args, target="cuda")
    np.testing.assert_allclose(compiled(*(a.cuda() for a in args)).cpu().numpy(),
                               model(*args).numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.gpu
def test_trivial_reductions_on_gpu():
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    x = torch.randn(2, 2, 3, 3)
    compiled = escoin_tvm.compile(one_tap_model(), (x,), target="cuda", sparsity_threshold=1.0)
    with torch.no_grad():
        np.testing.assert_allclose(compiled(x.cuda()).cpu().numpy(), one_tap_model()(x).numpy(),
                                   rtol=1e-4, atol=1e-5)


LOAD_EACH = textwrap.dedent("""
    import sys, numpy as np, escoin_tvm
    x, expected = np.load(sys.argv[1]), np.load(sys.argv[2])
    for path in sys.stdin.read().split():
        print("start", path, flush=True)
        try:
            out = escoin_tvm.load(path)(x)
        except escoin_tvm.EscoinError as err:
            print("refused", path, flush=True)
            continue
        except Exception as err:
            print("other", path, type(err).__name__, flush=True)
            continue
        print("right" if np.array_equal(out, expected) else "wrong", path, flush=True)
""")


def outcomes(paths, x, expected, tmp_path):
    """{path: outcome} of loading and running each library in a child process: refused, right,
    wrong, other (an exception that is not an EscoinError) or crash (the child died)."""
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", expected)
    return outcomes_in_children(LOAD_EACH, paths, tmp_path / "x.npy", tmp_path / "expected.npy")


def test_corrupted_libraries_are_refused_or_right_never_a_crash(exported_files, tmp_path):
    """Random 16-byte overwrites (same size), truncations and a foreign ELF: each one is refused
    by load (its integrity record) or runs correctly; none crashes or gives a wrong result."""
    so = (exported_files / "model.so").read_bytes()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(24):
        damaged = bytearray(so)
        start = int(rng.integers(0, len(so) - 16))
        damaged[start:start + 16] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        paths.append(tmp_path / f"bytes{i}.so")
        paths[-1].write_bytes(bytes(damaged))
    for i, cut in enumerate((1, 17, 64, len(so) // 3, len(so) - 1)):
        paths.append(tmp_path / f"cut{i}.so")
        paths[-1].write_bytes(so[:cut])
    foreign = tmp_path / "foreign.so"
    foreign.write_bytes(open(np.core._multiarray_umath.__file__, "rb").read())
    paths += [foreign, exported_files / "model.so"]
    x = torch.randn(1, 3, 12, 12).numpy()
    expected = escoin_tvm.load(exported_files / "model.so")(x)
    results = outcomes(paths, x, expected, tmp_path)
    assert results.pop(str(exported_files / "model.so")) == "right"
    assert set(results.values()) <= {"refused", "right"}, results
