"""A disk cache of the CUDA binaries TVM compiles for escoin-tvm's kernels.

Compiling one kernel's CUDA source (TVM's ``tvm_callback_cuda_compile``: nvrtc, or nvcc) costs
about a second, most of a kernel's build; a ResNet-50 under the torch.compile backend builds
one per candidate layer (docs/findings.md). The compiler is a pure function of the source, the
architecture, the options and the compiler's settings, so inside ``cached_cuda_compiles()`` each
compile is looked up by a hash of all of them first, and a rerun of the same model skips the
compiler. The cache holds only what escoin-tvm's own builds compile (a kernel, a model), never
tuning candidates, and is safe to delete.

Where: ``$ESCOIN_TVM_CACHE_DIR/cuda``, else ``$XDG_CACHE_HOME/escoin-tvm/cuda``, else
``~/.cache/escoin-tvm/cuda``; ``ESCOIN_TVM_CACHE_DIR=off`` turns it off. A cache that cannot
be written is skipped (the compile runs as without it).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Optional

# the compiler settings TVM reads from the environment (tvm/support/nvcc.py)
COMPILER_SETTINGS = ("TVM_CUDA_COMPILE_MODE", "TVM_CUDA_PTXAS_REG_LEVEL",
                     "TVM_CUDA_PTXAS_EXTRA_OPTS", "TVM_CUDA_NVRTC_EXTRA_OPTS",
                     "TVM_CUDA_NVCC_NO_FAST_MATH", "TVM_KERNEL_DUMP")
_ACTIVE = threading.local()  # the cache folder of this thread's current build, if any
_INSTALLED = threading.Lock()
_original = None


def cache_dir() -> Optional[Path]:
    """The folder compiled binaries go to, or None when the cache is off."""
    root = os.environ.get("ESCOIN_TVM_CACHE_DIR")
    if root is not None and root.strip().lower() in ("", "0", "off", "none", "false"):
        return None
    if root:
        return Path(root) / "cuda"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "escoin-tvm" / "cuda"


def cache_key(code: str, target_format, arch, options, compiler) -> Optional[str]:
    """The hash a compile is cached under: everything its output depends on; None when the
    architecture is not known here (the compiler would ask the GPU it runs on)."""
    import tvm

    current = tvm.target.Target.current(allow_none=True)  # gives the arch when ``arch`` is None
    if arch is None and (current is None or not current.attrs.get("arch")):
        return None
    parts = [code, target_format, arch, options, compiler, str(current) if current else None,
             tvm.__version__, {name: os.environ.get(name) for name in COMPILER_SETTINGS}]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _cached_compile(code, target_format=None, arch=None, options=None, path_target=None,
                    compiler="nvrtc"):
    """``tvm.support.nvcc.compile_cuda`` with the cache in front of it (for the calls made
    inside ``cached_cuda_compiles``; a compile that writes its own output file, or whose
    architecture is not known, is left alone)."""
    folder = getattr(_ACTIVE, "folder", None)
    key = None if folder is None or path_target is not None else \
        cache_key(code, target_format, arch, options, compiler)
    if key is None:
        return _original(code, target_format, arch, options, path_target, compiler)
    path = folder / f"{key}.bin"
    try:
        return bytearray(path.read_bytes())
    except OSError:
        pass
    binary = _original(code, target_format, arch, options, path_target, compiler)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        partial.write_bytes(bytes(binary))
        os.replace(partial, path)  # atomic: a concurrent reader sees all of it or nothing
    except OSError:
        pass
    return binary


def _install() -> None:
    global _original
    import tvm.support.nvcc as nvcc

    with _INSTALLED:
        if _original is None:
            _original = nvcc.compile_cuda
            nvcc.compile_cuda = _cached_compile


@contextlib.contextmanager
def cached_cuda_compiles():
    """Within it, this thread's CUDA compiles go through the disk cache (when it is on)."""
    folder = cache_dir()
    if folder is None:
        yield
        return
    _install()
    previous = getattr(_ACTIVE, "folder", None)
    _ACTIVE.folder = folder
    try:
        yield
    finally:
        _ACTIVE.folder = previous
