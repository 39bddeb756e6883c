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


def one_entry(tmp_path):
    [entry] = (tmp_path / "cuda").glob("*.bin")
    return entry


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty", "foreign", "other key",
                                    "link", "folder"])
def test_a_bad_entry_is_dropped_with_a_warning_and_compiled_again(compiles, tmp_path, damage):
    """What the cache reads is what runs, and what an exported module embeds: an entry that is
    not exactly the binary its key compiled is never used."""
    calls, compile_cuda = compiles
    with cuda_cache.cached_cuda_compiles():
        compile_cuda("kernel b", target_format="cubin", arch="sm_90")
        other = one_entry(tmp_path).read_bytes()
        one_entry(tmp_path).unlink()
        compile_cuda("kernel a", target_format="cubin", arch="sm_90")
    entry = one_entry(tmp_path)
    data = entry.read_bytes()
    entry.unlink()
    if damage == "truncated":
        entry.write_bytes(data[:-3])
    elif damage == "flipped":
        entry.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    elif damage == "empty":
        entry.write_bytes(b"")
    elif damage == "foreign":
        entry.write_bytes(b"\x7fELF" + bytes(200))
    elif damage == "other key":  # another kernel's valid entry under this key's name
        entry.write_bytes(other)
    elif damage == "link":
        (tmp_path / "elsewhere").write_bytes(data)
        entry.symlink_to(tmp_path / "elsewhere")
    else:
        entry.mkdir()
    with pytest.warns(UserWarning, match="dropping the CUDA binary cache entry"):
        with cuda_cache.cached_cuda_compiles():
            again = compile_cuda("kernel a", target_format="cubin", arch="sm_90")
    assert again == bytearray(b"binary of kernel a for sm_90")
    assert calls == ["kernel b", "kernel a", "kernel a"]
    if damage != "folder":  # rewritten valid: the next compile reads it
        with cuda_cache.cached_cuda_compiles():
            compile_cuda("kernel a", target_format="cubin", arch="sm_90")
        assert len(calls) == 3


def test_entries_are_private_and_a_folder_others_can_write_is_not_used(compiles, tmp_path):
    import stat

    calls, compile_cuda = compiles
    with cuda_cache.cached_cuda_compiles():
        compile_cuda("kernel a", target_format="cubin", arch="sm_90")
    assert stat.S_IMODE(one_entry(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cuda").stat().st_mode) == 0o700
    (tmp_path / "cuda").chmod(0o777)  # a shared folder: anyone could plant a binary
    with pytest.warns(UserWarning, match="not a folder of this user's that only it may write"):
        with cuda_cache.cached_cuda_compiles():
            compile_cuda("kernel a", target_format="cubin", arch="sm_90")
    assert len(calls) == 2


def test_another_compiler_misses_the_cache(compiles, monkeypatch):
    calls, compile_cuda = compiles
    with cuda_cache.cached_cuda_compiles():
        compile_cuda("kernel a", target_format="cubin", arch="sm_90", compiler="nvcc")
        monkeypatch.setattr(cuda_cache, "compiler_identity", lambda *_: "nvcc 99.9")
        compile_cuda("kernel a", target_format="cubin", arch="sm_90", compiler="nvcc")
    assert len(calls) == 2
