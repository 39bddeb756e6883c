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

What is read is checked before it is used, because a binary loaded from here is what runs (and
what an exported module embeds, under its own integrity record): an entry holds its key and a
SHA-256 of the binary, and one that is truncated, altered, empty, another key's, a link, not
a plain file or not the user's own is dropped with a warning and compiled again. The key holds
the compiler's identity (nvcc's path and version, or nvrtc's version), so another compiler
never reuses a binary. Entries are written private (0600, in 0700 folders), and a folder that
another user owns or others may write to is not used.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import stat
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Optional

# the compiler settings TVM reads from the environment (tvm/support/nvcc.py)
COMPILER_SETTINGS = ("TVM_CUDA_COMPILE_MODE", "TVM_CUDA_PTXAS_REG_LEVEL",
                     "TVM_CUDA_PTXAS_EXTRA_OPTS", "TVM_CUDA_NVRTC_EXTRA_OPTS",
                     "TVM_CUDA_NVCC_NO_FAST_MATH", "TVM_KERNEL_DUMP")
_ACTIVE = threading.local()  # the cache folder of this thread's current build, if any
_INSTALLED = threading.Lock()
_original = None
MAGIC = b"escoin-tvm cuda cache 2\n"  # then the key, a NUL, the binary's SHA-256, the binary
DIGEST = 32


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
             tvm.__version__, {name: os.environ.get(name) for name in COMPILER_SETTINGS},
             compiler_identity(compiler, os.environ.get("PATH", ""))]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@functools.lru_cache(maxsize=None)
def compiler_identity(compiler: str, path: str) -> str:
    """What tells one CUDA compiler from another: nvcc's resolved path and ``--version``
    (``path``: the PATH it is looked up on), or nvrtc's version and its bindings'."""
    if compiler == "nvcc":
        found = shutil.which("nvcc", path=path)
        if found is None:
            return "nvcc: not found"
        try:
            version = subprocess.run([found, "--version"], capture_output=True, text=True,
                                     timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as err:
            version = f"unknown ({err})"
        return f"nvcc {os.path.realpath(found)}: {version}"
    try:
        from cuda import bindings
        from cuda.bindings import nvrtc

        return f"nvrtc {nvrtc.nvrtcVersion()[1:]} (cuda-bindings {bindings.__version__})"
    except Exception as err:  # no bindings here (the compile will say so), or another layout
        return f"nvrtc: unknown ({type(err).__name__})"


def _private_folder(folder: Path) -> bool:
    """Creates ``folder`` (0700) where missing; whether it is safe to read binaries from: a
    folder (not a link) of this user's that no one else may write to."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode) or info.st_mode & 0o022 or \
            (hasattr(os, "getuid") and info.st_uid != os.getuid()):
        _warn_once(f"the CUDA binary cache {folder} is not a folder of this user's that only "
                   "it may write to: it is not used (set ESCOIN_TVM_CACHE_DIR to another one)")
        return False
    return True


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message)


def _read_entry(path: Path, key: str) -> Optional[bytearray]:
    """The binary of a valid entry, else None; an entry that exists and is not valid is
    removed, with a warning saying why."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as err:  # a link (O_NOFOLLOW), or not readable
        return _drop(path, f"cannot be opened as a file ({err.strerror})")
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return _drop(path, "is not a plain file")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        os.close(fd)
        return _drop(path, "belongs to another user")
    with os.fdopen(fd, "rb") as entry:
        data = entry.read()
    head = MAGIC + key.encode() + b"\0"
    if not data.startswith(head) or len(data) < len(head) + DIGEST:
        return _drop(path, "is not this cache's entry for its key (truncated, foreign or "
                           "another kernel's)")
    digest, binary = data[len(head):len(head) + DIGEST], data[len(head) + DIGEST:]
    if not binary or hashlib.sha256(binary).digest() != digest:
        return _drop(path, "does not match its SHA-256 (truncated or altered)")
    return bytearray(binary)


def _drop(path: Path, why: str) -> None:
    warnings.warn(f"dropping the CUDA binary cache entry {path}: it {why}; compiling again")
    try:
        path.unlink()
    except OSError:
        pass
    return None


def _write_entry(path: Path, key: str, binary: bytes) -> None:
    """Writes an entry privately and atomically (a concurrent reader sees all of it or
    none); a cache that cannot be written is skipped."""
    partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as entry:
            entry.write(MAGIC + key.encode() + b"\0" + hashlib.sha256(binary).digest() + binary)
        os.replace(partial, path)
    except OSError:
        try:
            partial.unlink()
        except OSError:
            pass


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
    if not _private_folder(folder):
        return _original(code, target_format, arch, options, path_target, compiler)
    path = folder / f"{key}.bin"
    cached = _read_entry(path, key)
    if cached is not None:
        return cached
    binary = _original(code, target_format, arch, options, path_target, compiler)
    _write_entry(path, key, bytes(binary))
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
