"""PyTorch -> Relax: ``torch.export``, TVM's PyTorch frontend, the layers' names.

The model is exported on the host (a CPU copy when it lives on a GPU) with its parameters bound
as Relax constants, which is what lets the Escoin pass read the weights. Every failure of the
two steps becomes an EscoinError naming the model and the inputs.
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from typing import List

import numpy as np

from .errors import EscoinError, first_line
from .support import dtypes
from .support.tensors import is_torch
from .support.tvm_logs import without_tvm_noise
from .workarounds import frontend_convert_map, refuse_known_tvm_crashes


def example_tensors(example_inputs) -> tuple:
    """``example_inputs`` (a tensor, an array, or a non-empty tuple/list of them) as a tuple
    of CPU torch tensors of a dtype a compiled model takes (``dtypes.check_model_input``)."""
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
        dtypes.check_model_input(x.dtype, f"example input {i}")
        if x.numel() == 0:
            raise EscoinError(f"example input {i} is empty (shape {tuple(x.shape)}): give "
                              "inputs of the shape the model will run on")
        tensors.append(x.detach().cpu())
    return tuple(tensors)


def _on_cpu(model):
    """The model itself if it lives on the CPU, else a CPU copy: tracing and weight extraction
    happen on the host, whatever device the module will run on."""
    tensors = list(model.parameters()) + list(model.buffers())
    if all(t.device.type == "cpu" for t in tensors):
        return model
    return copy.deepcopy(model).cpu()


@contextmanager
def quiet_torch():
    """Leaves out a deprecation warning that torch's own pytree code gives on every export and
    every copy of an exported program (``LeafSpec``): it concerns torch, not the user's model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        yield


@contextmanager
def eval_mode(model):
    """The model in eval mode while it is traced, and as it was afterwards: compiling does not
    change the caller's model."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
    except NotImplementedError:  # an ExportedProgram's module(): traced already, mode fixed
        pass
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def export(model, example_inputs):
    """``torch.export.export`` of the model in eval mode, its failures named."""
    import torch

    try:
        with quiet_torch(), eval_mode(model):
            return torch.export.export(model, example_inputs)
    except Exception as err:  # torch raises many types; name the failure and the part
        lines = [l for l in str(err).splitlines() if l.strip()]
        detail = "\n  ".join(lines[:6])
        raise EscoinError(f"torch.export could not trace {type(model).__name__} with inputs of "
                          f"shape {[tuple(x.shape) for x in example_inputs]}: "
                          f"{type(err).__name__}:\n  {detail}") from err


def _layer_names(exported, targets) -> List[tuple]:
    names = []
    for node in exported.graph.nodes:
        if node.op == "call_function" and any(t in str(node.target) for t in targets):
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else node.name
            weight = node.args[1].meta.get("val") if len(node.args) > 1 else None
            names.append((path or node.name, tuple(weight.shape) if weight is not None else None))
    return names


def conv_layer_names(exported) -> List[tuple]:
    """(module path, weight shape) of the program's convolutions, in program order."""
    return _layer_names(exported, ("aten.conv2d", "aten.convolution"))


def linear_layer_names(exported) -> List[tuple]:
    """(module path, weight shape) of the program's linear layers, in program order."""
    return _layer_names(exported, ("aten.linear",))


def to_relax(exported):
    """TVM's PyTorch frontend, parameters as constants."""
    from tvm.relax.frontend.torch import from_exported_program

    try:
        with quiet_torch(), without_tvm_noise():
            return from_exported_program(exported, keep_params_as_input=False,
                                         custom_convert_map=frontend_convert_map())
    except Exception as err:
        raise EscoinError("TVM's PyTorch frontend could not convert the exported program: "
                          f"{first_line(err)}") from err


def refuse_dynamic_shapes(exported) -> None:
    """An EscoinError naming the input and dimension of an exported program exported with a
    dynamic size (``torch.export.Dim``): escoin-tvm compiles a model for static shapes."""
    for node in exported.graph.nodes:
        if node.op == "placeholder" and node.name in exported.graph_signature.user_inputs:
            shape = getattr(node.meta.get("val"), "shape", ())
            dynamic = [i for i, d in enumerate(shape) if not isinstance(d, int)]
            if dynamic:
                raise EscoinError(
                    f"input {node.name!r} of the exported program has dynamic size(s) in "
                    f"dimension(s) {dynamic} ({tuple(str(d) for d in shape)}): escoin-tvm "
                    "compiles for static shapes; export with example inputs of the shape it "
                    "will run on and no dynamic_shapes, compile it with batch_sizes=[...] "
                    "(CLI: --batch-sizes) for one module that serves those batch sizes, or "
                    "use torch.compile(backend='escoin'), which builds a kernel per shape")


def example_zeros(exported) -> tuple:
    """Zeros shaped and typed as ``exported``'s user inputs (an EscoinError first if one has a
    dynamic size)."""
    import torch

    refuse_dynamic_shapes(exported)
    return tuple(torch.zeros(tuple(n.meta["val"].shape), dtype=n.meta["val"].dtype)
                 for n in exported.graph.nodes
                 if n.op == "placeholder" and n.name in exported.graph_signature.user_inputs)


def prepare(model, example_inputs, target):
    """torch.export and conversion to Relax, checked against the example inputs.
    Returns (exported program, example tensors, Relax module)."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        exported = model
        refuse_dynamic_shapes(exported)
        example = example_tensors(example_inputs) if example_inputs is not None else \
            example_zeros(exported)
    else:
        if not isinstance(model, torch.nn.Module):
            raise EscoinError(f"model must be a torch.nn.Module or an ExportedProgram, got "
                              f"{type(model).__name__}")
        example = example_tensors(example_inputs)
        if any(module.training for module in model.modules()):
            warnings.warn(f"{type(model).__name__} is in training mode; it is compiled for "
                          "inference, as in eval mode (dropout off, batch norm with its running "
                          "statistics). The model itself is left in training mode.",
                          stacklevel=3)
        exported = export(_on_cpu(model), example)
    mod = to_relax(exported)
    refuse_known_tvm_crashes(mod, target)
    params = [p for p in mod["main"].params]
    if len(params) != len(example):
        raise EscoinError(f"the exported program takes {len(params)} tensor inputs, "
                          f"example_inputs has {len(example)}")
    for i, (param, x) in enumerate(zip(params, example)):
        if tuple(int(d) for d in param.ty.shape) != tuple(x.shape):
            raise EscoinError(f"example input {i} has shape {tuple(x.shape)} but the program "
                              f"expects {tuple(int(d) for d in param.ty.shape)}")
    return exported, example, mod
