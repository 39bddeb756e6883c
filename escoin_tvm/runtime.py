"""Compiled models at run time: ``CompiledModule`` (call, time, report, export) and ``load``.

An exported module is a shared library that carries everything needed to run: the kernels, the
constants, and a small metadata function (input shapes, output structure, the per-layer
report), so ``load`` needs the TVM runtime and nothing else from the original model.
"""
from __future__ import annotations

import json
import os
import struct
import threading
from typing import List, Sequence

import numpy as np
import tvm
from tvm import relax

from .errors import EscoinError, first_line
from .target import recover_from_out_of_memory, require_device
from .tensors import from_tvm, to_tvm

METADATA_FUNC = "escoin_metadata"
METADATA_VERSION = 1


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
        return [tuple(s) for s, _ in self.metadata["inputs"]]

    def __call__(self, *inputs):
        specs = self.metadata["inputs"]
        if len(inputs) != len(specs):
            raise EscoinError(f"the model takes {len(specs)} input(s), got {len(inputs)}")
        args = [to_tvm(x, self.device, shape, name=f"input {i}", dtype=dtype)
                for i, (x, (shape, dtype)) in enumerate(zip(inputs, specs))]
        try:
            result = self.vm["main"](*args)
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

    def time(self, number: int = 20, repeat: int = 5) -> float:
        """Median end-to-end latency (s) on random inputs, timed by TVM's time_evaluator."""
        rng = np.random.default_rng(0)
        args = [tvm.runtime.tensor(rng.standard_normal(shape).astype(dtype), self.device)
                for shape, dtype in self.metadata["inputs"]]
        timer = self.vm.time_evaluator("main", self.device, number=number, repeat=repeat)
        return float(np.median(timer(*args).results))

    # ---- reporting ----
    @property
    def layers(self) -> List[dict]:
        return self.metadata["layers"]

    def report(self) -> str:
        """Per-layer table: layer, shapes, sparsity, nnz, chosen kernel and why."""
        return format_report(self.layers)

    # ---- export ----
    def export_library(self, path: str) -> str:
        """Writes a shared library that ``escoin_tvm.load`` runs with the TVM runtime alone."""
        path = os.fspath(path)
        self.executable.export_library(path)
        return path


def format_report(layers: Sequence[dict]) -> str:
    header = ["layer", "input", "weight", "sparsity", "nnz", "kernel", "epilogue", "schedule", "why"]
    rows = [[l["name"], "x".join(map(str, l["input_shape"])), "x".join(map(str, l["weight_shape"])),
             f"{l['sparsity']:.3f}", str(l["nnz"]), l["kernel"], l["epilogue"] or "-",
             l.get("schedule") or "-", l["reason"]]
            for l in layers]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    n_escoin = sum(l["kernel"] == "escoin" for l in layers)
    lines.append(f"{n_escoin} of {len(layers)} convolutions on Escoin kernels")
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


def check_library(path: str) -> None:
    """Refuses a file that is not a complete ELF shared library before the dynamic loader maps
    it: a truncated library kills the process with SIGBUS when its missing pages are touched."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:
            raise EscoinError(f"{path!r} is not a valid escoin-tvm module (not a 64-bit ELF "
                              "shared library)")
        endian = "<" if header[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(endian + "QQ", header, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(endian + "HHHH", header, 54)
        truncated = shoff + shnum * shentsize > size or phoff + phnum * phentsize > size
        if not truncated:
            f.seek(phoff)
            for _ in range(phnum):
                entry = f.read(phentsize)
                offset, filesz = struct.unpack_from(endian + "Q", entry, 8)[0], \
                    struct.unpack_from(endian + "Q", entry, 32)[0]
                truncated |= offset + filesz > size
    if truncated:
        raise EscoinError(f"{path!r} is not a valid escoin-tvm module (the library is truncated: "
                          f"{size} bytes)")


def load(path, device=None) -> CompiledModule:
    """Loads a library written by ``CompiledModule.export_library``. ``device`` defaults to
    the first GPU for a CUDA module and the CPU otherwise."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise EscoinError(f"no compiled module at {path!r}")
    check_library(path)
    try:
        lib = tvm.runtime.load_module(path)
    except Exception as err:
        message = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        if "created using {cuda}" in message:
            raise EscoinError(f"{path!r} was compiled for CUDA and this machine's TVM runtime "
                              "cannot load CUDA modules (no GPU runtime)") from None
        raise EscoinError(f"{path!r} is not a valid escoin-tvm module ({message})") from None
    is_cuda = "cuda" in _module_kinds(lib)
    if device is None:
        device = tvm.cuda(0) if is_cuda else tvm.cpu(0)
    if is_cuda:
        require_device(device)
    try:
        executable = relax.VMExecutable(lib)
        vm = relax.VirtualMachine(executable, device)
        metadata = json.loads(vm[METADATA_FUNC]().numpy().tobytes().decode())
    except Exception as err:
        raise EscoinError(f"{path!r} is not a valid escoin-tvm module ({type(err).__name__}: "
                          f"{first_line(err)})") from None
    if metadata.get("version") != METADATA_VERSION:
        raise EscoinError(f"{path!r} was written by an incompatible escoin-tvm version")
    return CompiledModule(executable, device, metadata, vm)
