"""The disk cache of compiled CUDA binaries: a compile is looked up by everything it depends on,
only inside escoin-tvm's builds, and a cache that cannot be written does not fail a build."""
import numpy as np
import pytest

from escoin_tvm import prune
from escoin_tvm.kernels import cuda_cache


@pytest.fixture
def compiles(monkeypatch, tmp_path):
    """The CUDA compiler replaced by a counting fake, the cache in a fresh folder."""
    import tvm.support.nvcc as nvcc

    cuda_cache._install()
    calls = []

    def fake(code, target_format=None, arch=None, options=None, path_target=None,
             compiler="nvrtc"):
        calls.append(code)
        return bytearray(f"binary of {code} for {arch}".encode())

    monkeypatch.setattr(cuda_cache, "_original", fake)
    monkeypatch.setenv("ESCOIN_TVM_CACHE_DIR", str(tmp_path))
    return calls, nvcc.compile_cuda


def test_a_second_compile_of_the_same_source_comes_from_the_cache(compiles, tmp_path):
    calls, compile_cuda = compiles
    with cuda_cache.cached_cuda_compiles():
        first = compile_cuda("kernel a", target_format="cubin", arch="sm_90")
        again = compile_cuda("kernel a", target_format="cubin", arch="sm_90")
    assert first == again == bytearray(b"binary of kernel a for sm_90")
    assert calls == ["kernel a"]
    assert len(list((tmp_path / "cuda").glob("*.bin"))) == 1


@pytest.mark.parametrize("change", [
    {"code": "kernel b"}, {"arch": "sm_80"}, {"target_format": "ptx"}, {"compiler": "nvcc"},
    {"options": ["-O1"]}, {"env": ("TVM_CUDA_PTXAS_EXTRA_OPTS", "-O1")}])
def test_anything_the_binary_depends_on_misses_the_cache(compiles, monkeypatch, change):
    calls, compile_cuda = compiles
    base = {"code": "kernel a", "target_format": "cubin", "arch": "sm_90", "compiler": "nvrtc"}
    with cuda_cache.cached_cuda_compiles():
        compile_cuda(**base)
        if "env" in change:
            monkeypatch.setenv(*change["env"])
            compile_cuda(**base)
        else:
            compile_cuda(**{**base, **change})
    assert len(calls) == 2


def test_compiles_outside_escoin_builds_are_not_cached(compiles, tmp_path):
    calls, compile_cuda = compiles
    compile_cuda("kernel a", arch="sm_90")
    compile_cuda("kernel a", arch="sm_90")
    with cuda_cache.cached_cuda_compiles():  # one that writes its own file is left alone too
        compile_cuda("kernel a", arch="sm_90", path_target=str(tmp_path / "k.cubin"))
    assert len(calls) == 3 and not (tmp_path / "cuda").exists()


def test_an_architecture_known_only_to_the_gpu_is_not_cached(compiles, tmp_path):
    import tvm

    calls, compile_cuda = compiles
    with cuda_cache.cached_cuda_compiles():
        compile_cuda("kernel a")  # no arch, no target: the compiler asks the GPU
        compile_cuda("kernel a")
        with tvm.target.Target({"kind": "cuda", "arch": "sm_90"}):
            compile_cuda("kernel a")
            compile_cuda("kernel a")
    assert len(calls) == 3


def test_the_cache_can_be_turned_off(compiles, monkeypatch, tmp_path):
    calls, compile_cuda = compiles
    monkeypatch.setenv("ESCOIN_TVM_CACHE_DIR", "off")
    assert cuda_cache.cache_dir() is None
    with cuda_cache.cached_cuda_compiles():
        compile_cuda("kernel a", arch="sm_90")
        compile_cuda("kernel a", arch="sm_90")
    assert len(calls) == 2


def test_a_cache_that_cannot_be_written_still_compiles(compiles, monkeypatch, tmp_path):
    calls, compile_cuda = compiles
    blocked = tmp_path / "a file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ESCOIN_TVM_CACHE_DIR", str(blocked))
    with cuda_cache.cached_cuda_compiles():
        assert compile_cuda("kernel a", arch="sm_90") == bytearray(b"binary of kernel a for sm_90")
        compile_cuda("kernel a", arch="sm_90")
    assert len(calls) == 2


def test_the_default_folder_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("ESCOIN_TVM_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cuda_cache.cache_dir() == tmp_path / "escoin-tvm" / "cuda"


@pytest.mark.gpu
def test_rebuilding_a_kernel_skips_the_cuda_compiler(monkeypatch, tmp_path):
    import escoin_tvm

    cuda_cache._install()
    calls = []
    original = cuda_cache._original

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cuda_cache, "_original", counting)
    monkeypatch.setenv("ESCOIN_TVM_CACHE_DIR", str(tmp_path))
    weight = prune.prune_array(np.random.default_rng(0).standard_normal((8, 4, 3, 3),
                                                                        np.float32), 0.9)
    x = np.random.default_rng(1).standard_normal((2, 4, 9, 9)).astype(np.float32)
    outputs = []
    for _ in range(2):
        kernel = escoin_tvm.build_sparse_conv2d(weight, x.shape, padding=1,
                                                target={"kind": "cuda", "arch": "sm_90"})
        outputs.append(kernel(x))
    assert len(calls) == 1
    np.testing.assert_array_equal(outputs[0], outputs[1])
