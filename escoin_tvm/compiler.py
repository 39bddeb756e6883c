"""Compile a PyTorch model with the Escoin pass, run it, export it and load it back.

    torch.export -> Relax (parameters bound as constants) -> FoldBatchnormToConv2D + FoldConstant
    -> SparseConv2dDispatch (the Escoin pass) -> TVM's default pipeline for the target
    (legalisation, fusion, dlight GPU schedules for the dense ops, plus our skinny-matmul rule for
    fully-connected layers at small batch: pipeline.py) -> relax VM executable

The exported shared library carries everything needed to run: the kernels, the constants, and a
small metadata function (input shapes, output structure, per-layer report), so ``load`` needs the
TVM runtime and nothing else from the original model.
"""
from __future__ import annotations

import json
import os
import threading
import warnings
from dataclasses import asdict
from typing import List, Optional, Sequence

import numpy as np
import tvm
from tvm import relax

from .errors import EscoinError, first_line
from .pipeline import relax_pipeline
from .target import (TargetLike, device_for, is_gpu, recover_from_out_of_memory, require_device,
                     resolve_target)
from .tensors import from_tvm, is_torch, to_tvm
from .transform import SparseConv2dDispatch

# Where the Escoin kernel starts to beat the dense path in the layer benchmark
# (experiments/results, see README "Layer benchmark"); layers below it stay dense.
DEFAULT_SPARSITY_THRESHOLD = 0.7
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


# ---------------------------------------------------------------------------------------------
def _flatten(result):
    if isinstance(result, tvm.runtime.Tensor):
        return [result]
    return [t for item in result for t in _flatten(item)]


def _unflatten(flat, out_spec):
    if out_spec is None:
        return flat[0] if len(flat) == 1 else tuple(flat)
    from torch.utils import _pytree

    return _pytree.tree_unflatten(flat, _pytree.treespec_loads(out_spec))


def _example_specs(example_inputs):
    if is_torch(example_inputs) or isinstance(example_inputs, np.ndarray):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise EscoinError("example_inputs must be a tensor or a non-empty tuple of tensors")
    import torch

    tensors = []
    for i, x in enumerate(example_inputs):
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        if not is_torch(x):
            raise EscoinError(f"example input {i} must be a torch tensor or numpy array, "
                              f"got {type(x).__name__}")
        if x.dtype != torch.float32:
            raise EscoinError(f"example input {i} must be float32, got {x.dtype}")
        tensors.append(x.detach().cpu())
    return tuple(tensors)


def _on_cpu(model):
    """The model itself if it lives on the CPU, else a CPU copy: tracing and weight extraction
    happen on the host, whatever device the module will run on."""
    import copy

    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


def _export(model, example_inputs):
    import torch

    try:
        return torch.export.export(model, example_inputs)
    except Exception as err:  # torch raises many types; name the failure and the part
        lines = [l for l in str(err).splitlines() if l.strip()]
        detail = "\n  ".join(lines[:6])
        raise EscoinError(f"torch.export could not trace {type(model).__name__} with inputs of "
                          f"shape {[tuple(x.shape) for x in example_inputs]}: "
                          f"{type(err).__name__}:\n  {detail}") from err


def conv_layer_names(exported) -> List[tuple]:
    """(module path, weight shape) of the program's convolutions, in program order."""
    names = []
    for node in exported.graph.nodes:
        target = str(node.target)
        if node.op == "call_function" and ("aten.conv2d" in target or "aten.convolution" in target):
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else node.name
            weight = node.args[1].meta.get("val") if len(node.args) > 1 else None
            names.append((path or node.name, tuple(weight.shape) if weight is not None else None))
    return names


def _to_relax(exported):
    from tvm.relax.frontend.torch import from_exported_program

    try:
        return from_exported_program(exported, keep_params_as_input=False)
    except Exception as err:
        raise EscoinError("TVM's PyTorch frontend could not convert the exported program: "
                          f"{first_line(err)}") from err


def _refuse_known_tvm_crashes(mod) -> None:
    """TVM 0.27's default CUDA code for an adaptive_avg_pool2d that resizes (e.g. 1x1 -> 6x6 or
    13x13 -> 6x6) segfaults at run time (experiments/debug/adaptive_pool_gpu_crash.py, H100):
    refuse it at compile time instead of letting the process die."""
    pool = tvm.ir.Op.get("relax.nn.adaptive_avg_pool2d")
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if isinstance(call, relax.Call) and call.op.same_as(pool):
                    src = [int(d) for d in call.args[0].ty.shape][2:]
                    dst = [int(d) for d in binding.var.ty.shape][2:]
                    if src != dst:
                        raise EscoinError(
                            f"the model has an adaptive average pool from {src[0]}x{src[1]} to "
                            f"{dst[0]}x{dst[1]}, and TVM 0.27's CUDA code for it crashes; use an "
                            "input size at which the pool keeps the size (224x224 for "
                            "torchvision's AlexNet and VGG) or target='llvm'")


def _metadata_func(metadata: dict) -> relax.Function:
    """A Relax function returning the metadata as UTF-8 bytes: it travels inside the library."""
    blob = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8).copy()
    builder = relax.BlockBuilder()
    with builder.function(METADATA_FUNC, []):
        builder.emit_func_output(relax.const(blob))
    return builder.get()[METADATA_FUNC]


def prepare(model, example_inputs, target):
    """torch.export and conversion to Relax, checked against the example inputs.
    Returns (exported program, example tensors, Relax module)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        exported = model
        example = _example_specs(example_inputs) if example_inputs is not None else tuple(
            torch.zeros(tuple(n.meta["val"].shape)) for n in exported.graph.nodes
            if n.op == "placeholder" and n.name in exported.graph_signature.user_inputs)
    else:
        if not isinstance(model, torch.nn.Module):
            raise EscoinError(f"model must be a torch.nn.Module or an ExportedProgram, got "
                              f"{type(model).__name__}")
        example = _example_specs(example_inputs)
        exported = _export(_on_cpu(model).eval(), example)
    mod = _to_relax(exported)
    if is_gpu(target):
        _refuse_known_tvm_crashes(mod)
    params = [p for p in mod["main"].params]
    if len(params) != len(example):
        raise EscoinError(f"the exported program takes {len(params)} tensor inputs, "
                          f"example_inputs has {len(example)}")
    for i, (param, x) in enumerate(zip(params, example)):
        if tuple(int(d) for d in param.ty.shape) != tuple(x.shape):
            raise EscoinError(f"example input {i} has shape {tuple(x.shape)} but the program "
                              f"expects {tuple(int(d) for d in param.ty.shape)}")
    return exported, example, mod


def dispatch(mod, exported, target, threshold: float, **options):
    """Folds batch norms into the convolutions and runs the Escoin pass.
    Returns (Relax module, the pass with its report and kernels)."""
    from .workarounds import trivial_reductions_to_multiply

    escoin = SparseConv2dDispatch(target, threshold, conv_layer_names(exported), **options)
    passes = [relax.transform.FoldBatchnormToConv2D(), relax.transform.FoldConstant(), escoin]
    if is_gpu(target):
        passes.append(trivial_reductions_to_multiply)
    mod = tvm.transform.Sequential(passes)(mod)
    return mod, escoin


def open_tuning_log(tuning_log, target):
    """``(TuningLog, foreign)`` for ``tuning_log`` (a path or a TuningLog), checked, ``foreign``
    when it was recorded for other targets only (already warned about); ``(None, False)`` for
    None."""
    if tuning_log is None:
        return None, False
    from .tuning.log import TuningLog

    log = tuning_log if isinstance(tuning_log, TuningLog) else TuningLog(tuning_log)
    return log, log.warn_if_foreign(target)


def compile(model, example_inputs, *, target: TargetLike = "cuda",
            sparsity_threshold: Optional[float] = None, tuning_log=None,
            dispatch_by: str = "threshold", config_for=None,
            cuda_graph: bool = False) -> CompiledModule:  # noqa: A001
    """Compiles ``model`` (a ``torch.nn.Module`` or a ``torch.export.ExportedProgram``) for
    inputs shaped like ``example_inputs``. Convolutions with constant weights at or above
    ``sparsity_threshold`` (default DEFAULT_SPARSITY_THRESHOLD) run on Escoin kernels, with the
    best schedules of ``tuning_log`` (a directory written by ``escoin_tvm.tune``) where it has
    them, else the pre-tuned or default ones. ``dispatch_by="measure"`` also times each such
    layer both ways on the target's device (which must be present) and keeps the faster;
    ``dispatch_by="none"`` leaves every layer dense (plain TVM, the baseline). ``cuda_graph``
    (CUDA only) has TVM capture the kernel sequence into CUDA graphs on the first call and
    replay them: less launch overhead, most useful at batch 1 (README, "Whole networks")."""
    import torch

    target = resolve_target(target)
    cuda_graph = bool(cuda_graph) and is_gpu(target)
    threshold = DEFAULT_SPARSITY_THRESHOLD if sparsity_threshold is None else float(sparsity_threshold)
    if dispatch_by not in ("threshold", "measure", "none"):
        raise EscoinError(f"dispatch_by must be 'threshold', 'measure' or 'none', got "
                          f"{dispatch_by!r}")
    log, foreign = open_tuning_log(tuning_log, target)
    exported, example, mod = prepare(model, example_inputs, target)
    measure = None
    if dispatch_by == "measure":
        from .measure import LayerTimer

        measure = LayerTimer(target)
    mod, escoin = dispatch(mod, exported, target, threshold, config_for=config_for,
                           tuning_log=log, measure=measure, report_only=dispatch_by == "none")
    if log is not None and not foreign and escoin.kernels and not any(
            d.schedule.startswith("tuned") for d in escoin.report):
        warnings.warn(f"tuning log {log.path} has no records for this model's kernels on "
                      f"{target.kind.name}: they use the pre-tuned or default schedules")
    metadata = {
        "version": METADATA_VERSION,
        "target": str(target.kind.name),
        "target_json": str(target),
        "threshold": threshold,
        "dispatch_by": dispatch_by,
        "cuda_graph": cuda_graph,
        "tuning_log": str(log.path) if log is not None else None,
        "inputs": [[list(x.shape), "float32"] for x in example],
        "out_spec": torch.utils._pytree.treespec_dumps(exported.call_spec.out_spec)
        if exported.call_spec.out_spec is not None else None,
        "layers": [asdict(d) for d in escoin.report],
    }
    metadata = json.loads(json.dumps(metadata))  # the same plain form that load() reads back
    mod[METADATA_FUNC] = _metadata_func(metadata)
    pipeline = relax_pipeline(target, stock=dispatch_by == "none")
    outer = tvm.transform.PassContext.current()  # keep a caller's context, add the graph flag
    config = {**dict(outer.config), "relax.backend.use_cuda_graph": cuda_graph}
    with target, tvm.transform.PassContext(opt_level=outer.opt_level, config=config):
        executable = tvm.compile(mod, target=target, relax_pipeline=pipeline)
    return CompiledModule(executable, device_for(target), metadata)


def _module_kinds(module) -> set:
    kinds = {module.kind}
    for imported in module.imports:
        kinds |= _module_kinds(imported)
    return kinds


def _check_library(path: str) -> None:
    """Refuses a file that is not a complete ELF shared library before the dynamic loader maps
    it: a truncated library kills the process with SIGBUS when its missing pages are touched."""
    import struct

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
    _check_library(path)
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
