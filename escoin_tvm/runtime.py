"""Compiled models at run time: ``CompiledModule`` (call, time, report, export) and ``load``.

An exported module is a shared library that carries everything needed to run: the kernels, the
constants, and a small metadata function (input shapes, output structure, the per-layer
report), so ``load`` needs the TVM runtime and nothing else from the original model. After the
library come the metadata again, as JSON (``read_metadata`` reads it without loading the
library: ``escoin info`` on a machine that cannot run it, a CUDA module without a GPU), and an
integrity record (a SHA-256 of the library and the metadata, and their lengths): ``load``
verifies it on a private copy before the dynamic loader maps anything, because a damaged
library can crash the process or run and return wrong results.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
from typing import List, Optional, Sequence

import numpy as np
import tvm
from tvm import relax

from .errors import ArgumentError, EscoinError, ShapeError, first_line
from .support import dtypes
from .support.target import recover_from_out_of_memory, require_device, resolve_device
from .support.tensors import from_tvm, is_torch, to_tvm
from .support.tvm_logs import without_tvm_noise

METADATA_FUNC = "escoin_metadata"
METADATA_VERSION = 2  # 2: libraries end with an integrity record
RECORD_MAGIC = b"ESCOIN-TVM-SUM01"  # then the SHA-256 (32 bytes), then the length (8, LE)
RECORD_SIZE = len(RECORD_MAGIC) + 32 + 8
# the record of a library followed by its metadata: the SHA-256 of both, then the library's
# length and the metadata's (8 bytes each, LE); a RECORD_MAGIC file has no metadata after it
META_RECORD_MAGIC = b"ESCOIN-TVM-SUM02"
META_RECORD_SIZE = len(META_RECORD_MAGIC) + 32 + 16


class CompiledModule:
    """A compiled model: call it with torch tensors or numpy arrays shaped like the example
    inputs; it returns the same kind, in the model's output structure."""

    def __init__(self, executable, device, metadata: dict, vm=None):
        self.executable = executable
        self.device = device
        self.metadata = metadata
        self._local = threading.local()  # a VM per thread: one VM used by two threads crashes
        self._local.vm = vm

    # ---- running ----
    @property
    def vm(self):
        vm = getattr(self._local, "vm", None)
        if vm is None:
            require_device(self.device)
            vm = self._local.vm = relax.VirtualMachine(self.executable, self.device)
        return vm

    @property
    def input_shapes(self) -> List[tuple]:
        """The input shapes (of the first batch size, for a module that serves several)."""
        return [tuple(s) for s, _ in self.metadata["inputs"]]

    @property
    def batch_sizes(self) -> List[int]:
        """The batch sizes the module serves: several when compiled with ``batch_sizes``, else
        its inputs' first dimension."""
        variants = self.metadata.get("variants")
        if variants:
            return [int(size) for size in variants]
        shape = self.input_shapes[0] if self.input_shapes else ()
        return [shape[0]] if shape else []

    def _function_for(self, batch: Optional[int]) -> tuple:
        """(the Relax function that runs inputs of batch ``batch``, their [shape, dtype]
        specs): for a module that serves several batch sizes, the one of that batch (an error
        naming the sizes it serves if there is none); else ``main``."""
        variants = self.metadata.get("variants")
        if not variants:
            return "main", self.metadata["inputs"]
        variant = variants.get(str(batch))
        if variant is None:
            raise ShapeError(f"the module serves batch sizes {', '.join(variants)}, not a batch "
                             f"of {batch} (compile it with batch_sizes including {batch})")
        return variant["function"], variant["inputs"]

    def __call__(self, *inputs):
        specs = self.metadata["inputs"]
        if len(inputs) != len(specs):
            raise EscoinError(f"the model takes {len(specs)} input(s), got {len(inputs)}")
        given = tuple(getattr(inputs[0], "shape", ()) or ())
        function, specs = self._function_for(given[0] if given else None)
        args = [to_tvm(x, self.device, shape, name=f"input {i}", dtype=dtype)
                for i, (x, (shape, dtype)) in enumerate(zip(inputs, specs))]
        try:
            result = self._run(function, args, inputs[0])
        except Exception as err:  # TVM reports CUDA allocation failures as generic errors
            text = str(err).lower()
            if any(s in text for s in ("out of memory", "out_of_memory", "memoryallocation")):
                recover_from_out_of_memory()
                raise EscoinError(f"out of memory on {self.device} running the model on inputs "
                                  f"of shape {self.input_shapes} (use a smaller batch or free "
                                  f"memory): {first_line(err)}") from None
            raise
        flat = [from_tvm(t, inputs[0]) for t in _flatten(result)]
        return _unflatten(flat, self.metadata.get("out_spec"))

    def _run(self, function: str, args, like):
        """The VM's ``function``, on PyTorch's current CUDA stream when called with CUDA
        torch tensors (so that it orders with the caller's work and joins CUDA graphs)."""
        if is_torch(like) and like.device.type == "cuda":
            import tvm_ffi

            with tvm_ffi.use_torch_stream():
                return self.vm[function](*args)
        return self.vm[function](*args)

    def time(self, number: int = 20, repeat: int = 5, batch: Optional[int] = None) -> float:
        """Median end-to-end latency (s) on random inputs, timed by TVM's time_evaluator (at
        ``batch``, one of ``batch_sizes``; the first by default)."""
        function, specs = ("main", self.metadata["inputs"]) if batch is None else \
            self._function_for(batch)
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(_random_input(rng, shape, dtype), self.device)
                for shape, dtype in specs]
        timer = self.vm.time_evaluator(function, self.device, number=number, repeat=repeat)
        return float(np.median(timer(*args).results))

    # ---- reporting ----
    @property
    def layers(self) -> List[dict]:
        """The convolutions, each with what the pass decided (``transform.LayerDecision``)."""
        return self.metadata["layers"]

    @property
    def linear_layers(self) -> List[dict]:
        """The fully-connected layers, likewise."""
        return self.metadata.get("linear_layers", [])

    def report(self) -> str:
        """Per-layer tables (convolutions, then linear layers): shapes, sparsity, nnz, the
        kernel chosen and why."""
        return report_of(self.metadata)

    # ---- export ----
    def export_library(self, path) -> str:
        """Writes a shared library (a ``.so`` path) that ``escoin_tvm.load`` runs with the TVM
        runtime alone."""
        path = check_output_path(path, ".so", "export_library writes a shared library")
        with without_tvm_noise():
            self.executable.export_library(path)
        append_integrity_record(path, self.metadata)
        return path


def _random_input(rng, shape, dtype: str) -> np.ndarray:
    """A timing input: normal values, or zeros for an integer input (token ids, indices must
    stay in range)."""
    if dtype in dtypes.SUPPORTED:
        return rng.standard_normal(shape).astype(dtypes.numpy_dtype(dtype))
    return np.zeros(shape, dtypes.numpy_dtype(dtype))


def check_output_path(path, suffix: str = "", what: str = "the output") -> str:
    """``path`` as a string when a file can be written there (its folder exists; it ends in
    ``suffix``), else an ArgumentError naming it: checked before work whose result would be
    lost."""
    path = os.fspath(path)
    if suffix and not path.endswith(suffix):
        raise ArgumentError(f"{what}: give a path ending in {suffix!r}, not {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ArgumentError(f"cannot write {path!r}: the folder {folder!r} does not exist")
    if os.path.isdir(path):
        raise ArgumentError(f"cannot write {path!r}: it is a folder")
    return path


def append_integrity_record(path: str, metadata: Optional[dict] = None) -> None:
    """Appends the record ``load`` verifies: with ``metadata``, the metadata as JSON, then
    META_RECORD_MAGIC, the SHA-256 of the file so far and the two lengths; without,
    RECORD_MAGIC, the SHA-256 and length of the library."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    with open(path, "ab") as f:
        if metadata is None:
            f.write(RECORD_MAGIC + digest.digest() + struct.pack("<Q", size))
            return
        blob = json.dumps(metadata).encode()
        digest.update(blob)
        f.write(blob + META_RECORD_MAGIC + digest.digest() + struct.pack("<QQ", size, len(blob)))


def _record(path: str, size: int):
    """(library length, metadata length, expected SHA-256) of the record at the end of
    ``path``, else an EscoinError saying what the file is instead."""
    with open(path, "rb") as f:
        f.seek(max(0, size - META_RECORD_SIZE))
        tail = f.read()
    if len(tail) >= META_RECORD_SIZE and tail[-META_RECORD_SIZE:].startswith(META_RECORD_MAGIC):
        record = tail[-META_RECORD_SIZE:]
        library, meta = struct.unpack("<QQ", record[-16:])
        recorded = library + meta
        expected = record[len(META_RECORD_MAGIC):-16]
        body = size - META_RECORD_SIZE
    elif len(tail) >= RECORD_SIZE and tail[-RECORD_SIZE:].startswith(RECORD_MAGIC):
        record = tail[-RECORD_SIZE:]
        library, meta = struct.unpack("<Q", record[-8:])[0], 0
        recorded, expected, body = library, record[len(RECORD_MAGIC):-8], size - RECORD_SIZE
    else:
        why = _elf_problem(path, size) or (
            "a shared library, but not one written by escoin-tvm's export_library: it has no "
            "integrity record (a module exported by an earlier version needs exporting again)")
        raise _invalid(path, why)
    if recorded != body:
        raise _invalid(path, f"damaged: {body} bytes where its integrity record says "
                             f"{recorded}")
    return library, meta, expected


def _checked_bytes(path: str, size: int, sink=None):
    """Reads the library and metadata of ``path`` through the checksum (the library's bytes
    also to ``sink``); returns the metadata's bytes, or raises if the checksum differs."""
    library, meta, expected = _record(path, size)
    digest, left = hashlib.sha256(), library
    with open(path, "rb") as src:
        while left:
            chunk = src.read(min(left, 1 << 20))
            digest.update(chunk)
            if sink is not None:
                sink.write(chunk)
            left -= len(chunk)
        blob = src.read(meta)
    digest.update(blob)
    if digest.digest() != expected:
        raise _invalid(path, "damaged: its bytes do not match the checksum written when it "
                             "was exported; export it again")
    return blob


def read_metadata(path) -> Optional[dict]:
    """The metadata of a module written by ``export_library`` (verified, without loading the
    library: no TVM runtime for its target needed), or None for a module exported before the
    metadata followed the library."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EscoinError(f"no compiled module at {path!r}")
    blob = _checked_bytes(path, os.path.getsize(path))
    if not blob:
        return None
    try:
        metadata = json.loads(blob.decode())
    except ValueError as err:
        raise _invalid(path, f"its metadata is not JSON: {err}") from None
    if metadata.get("version") != METADATA_VERSION:
        raise EscoinError(f"{path!r} was written by an incompatible escoin-tvm version")
    return metadata


def report_of(metadata: dict) -> str:
    """A module's per-layer tables from its metadata (``CompiledModule.report``); for a module
    that serves several batch sizes, the tables of each."""
    threshold = metadata.get("threshold")

    def tables(part: dict) -> str:
        text = format_report(part["layers"], threshold)
        if part.get("linear_layers"):
            text += "\n\n" + format_report(part["linear_layers"], threshold, "linear layers")
        return text

    variants = metadata.get("variants")
    if not variants:
        return tables(metadata)
    return "\n\n".join(f"batch {size}:\n{tables(part)}" for size, part in variants.items())


def format_report(layers: Sequence[dict], threshold: Optional[float] = None,
                  what: str = "convolutions") -> str:
    """The report as a table; sparsities get the digits that tell them from ``threshold``."""
    from .kernels.eligibility import distinct

    def sparsity(value: float) -> str:
        return distinct(value, threshold, 3)[0] if threshold is not None else f"{value:.3f}"

    def microseconds(value) -> str:
        return "-" if value is None else f"{value:.1f}"

    header = ["layer", "input", "weight", "dtype", "sparsity", "nnz", "kernel", "epilogue",
              "schedule", "why"]
    rows = [[l["name"], "x".join(map(str, l["input_shape"])), "x".join(map(str, l["weight_shape"])),
             l.get("dtype", "float32"), sparsity(l["sparsity"]), str(l["nnz"]), l["kernel"],
             l["epilogue"] or "-",
             l.get("schedule") or "-", l["reason"]]
            for l in layers]
    timed = any(l.get(side) is not None for l in layers for side in ("escoin_us", "dense_us"))
    if timed:  # measured dispatch: each layer's times, the dense one where it stays dense
        header[-1:-1] = ["escoin us", "dense us"]
        for row, l in zip(rows, layers):
            row[-1:-1] = [microseconds(l.get("escoin_us")), microseconds(l.get("dense_us"))]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_escoin = sum(l["kernel"] != "dense" for l in layers)
    lines.append(f"{n_escoin} of {len(layers)} {what} on Escoin kernels")
    left = [l["dense_us"] for l in layers if l["kernel"] == "dense" and l.get("dense_us")]
    if left:
        lines[-1] += (f"; the {len(left)} timed dense one(s) take {sum(left):.1f} us per call "
                      "together")
    return "\n".join(lines)


def metadata_function(metadata: dict) -> relax.Function:
    """A Relax function returning the metadata as UTF-8 bytes: it travels inside the library."""
    blob = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8).copy()
    builder = relax.BlockBuilder()
    with builder.function(METADATA_FUNC, []):
        builder.emit_func_output(relax.const(blob))
    return builder.get()[METADATA_FUNC]


def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    return [t for item in result for t in _flatten(item)]


def _unflatten(flat, out_spec):
    if out_spec is None:
        return flat[0] if len(flat) == 1 else tuple(flat)
    from torch.utils import _pytree

    return _pytree.tree_unflatten(flat, _pytree.treespec_loads(out_spec))


def _module_kinds(module) -> set:
    kinds = {module.kind}
    for imported in module.imports:
        kinds |= _module_kinds(imported)
    return kinds


def _invalid(path: str, why: str) -> EscoinError:
    return EscoinError(f"{path!r} is not a valid escoin-tvm module ({why})")


def _elf_problem(path: str, size: int) -> str:
    """Why ``path`` (``size`` bytes of it) is not a complete ELF shared library, else ""."""
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            return "not a 64-bit ELF shared library"
        endian = "<" if header[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(endian + "QQ", header, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", header, 54)
        truncated = shoff + shnum * shentsize > size or phoff + phnum * phentsize > size
        if not truncated:
            f.seek(phoff)
            for _ in range(phnum):
                entry = f.read(phentsize)
                if len(entry) < 40:
                    return f"the library is truncated: {size} bytes"
                offset, filesz = struct.unpack_from(endian + "Q", entry, 8)[0], \
                    struct.unpack_from(endian + "Q", entry, 32)[0]
                truncated |= offset + filesz > size
    return f"the library is truncated: {size} bytes" if truncated else ""


def verified_copy(path: str, folder: str) -> str:
    """A copy of the library in ``path`` under ``folder``, written only if its integrity record
    matches: the file to hand to the dynamic loader. Refuses anything else, saying why."""
    copy = os.path.join(folder, "module.so")
    with open(copy, "wb") as dst:
        _checked_bytes(path, os.path.getsize(path), dst)
    return copy


def load(path, device=None) -> CompiledModule:
    """Loads a library written by ``CompiledModule.export_library`` to run on ``device``
    ("cpu", "cuda", "cuda:N", a torch.device or a TVM device; by default the first GPU for a
    CUDA module and the CPU otherwise)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EscoinError(f"no compiled module at {path!r}")
    folder = tempfile.mkdtemp(prefix="escoin-load-")
    try:
        with without_tvm_noise():
            lib = tvm.runtime.load_module(verified_copy(path, folder))
    except EscoinError:
        raise
    except Exception as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if "created using {cuda}" in message:
            raise EscoinError(f"{path!r} was compiled for CUDA and this machine's TVM runtime "
                              "cannot load CUDA modules (no GPU runtime)") from None
        raise _invalid(path, message) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    is_cuda = "cuda" in _module_kinds(lib)
    device = resolve_device(device, "cuda" if is_cuda else "cpu")
    require_device(device)
    try:
        with without_tvm_noise():
            executable = relax.VMExecutable(lib)
            vm = relax.VirtualMachine(executable, device)
        metadata = json.loads(vm[METADATA_FUNC]().numpy().tobytes().decode())
    except Exception as err:
        raise _invalid(path, f"{type(err).__name__}: {first_line(err)}") from None
    if metadata.get("version") != METADATA_VERSION:
        raise EscoinError(f"{path!r} was written by an incompatible escoin-tvm version")
    return CompiledModule(executable, device, metadata, vm)
