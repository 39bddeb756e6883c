"""One module that serves several batch sizes: the model exported and dispatched once per size,
the Relax modules merged into one (``main`` for the first size, ``main_b<N>`` for each other,
each with its own kernels), built and exported as one library. The module calls the function of
the input's batch size (``runtime.CompiledModule``); a size it was not compiled for is an error
that names the sizes it serves.

A ``torch.nn.Module`` is exported at each size; an ``ExportedProgram`` must have been exported
with a dynamic batch (``torch.export.Dim`` on the first dimension of its inputs), since a static
export may have its batch size built into its reshapes: its ``module()`` is exported again at
each size.
"""
from __future__ import annotations

import numbers
from typing import Dict, List, Sequence, Tuple

import tvm
from tvm import relax

from .errors import ArgumentError, EscoinError
from .frontend import example_tensors


def checked(batch_sizes) -> Tuple[int, ...]:
    """``batch_sizes`` (a non-empty sequence of positive ints) as a tuple without repeats, in
    the order given, else an ArgumentError naming the bad value."""
    if isinstance(batch_sizes, (str, bytes)) or not isinstance(batch_sizes, Sequence) or \
            not batch_sizes:
        raise ArgumentError(f"batch_sizes must be a non-empty list of batch sizes, got "
                            f"{batch_sizes!r}")
    sizes = []
    for size in batch_sizes:
        if not isinstance(size, numbers.Integral) or isinstance(size, bool) or size < 1:
            raise ArgumentError(f"batch_sizes must hold positive ints, got {size!r}")
        if int(size) not in sizes:
            sizes.append(int(size))
    return tuple(sizes)


def function_name(index: int, size: int) -> str:
    """The Relax function of the ``index``-th batch size: ``main`` for the first."""
    return "main" if index == 0 else f"main_b{size}"


def examples(model, example_inputs, sizes: Sequence[int]):
    """(the model to export at each size, {size: example inputs of that batch})."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        examples = {size: _zeros_like_program(model, size) for size in sizes}
        source = model.module()
        for module in source.modules():  # traced already (its mode is in its graph), and
            module.training = False  # its eval() refuses: no "training mode" warning for it
        return source, examples
    example = example_tensors(example_inputs)
    batch = example[0].shape[0] if example[0].dim() else None
    for i, x in enumerate(example):
        if x.dim() == 0 or x.shape[0] != batch:
            raise ArgumentError(f"batch_sizes needs every input's first dimension to be the "
                                f"batch: example input {i} has shape {tuple(x.shape)}, input 0 "
                                f"{tuple(example[0].shape)}")
    return model, {size: tuple(x.new_zeros((size, *x.shape[1:])) for x in example)
                   for size in sizes}


def _zeros_like_program(exported, size: int) -> tuple:
    """Zeros shaped as the program's user inputs with ``size`` as their batch; an EscoinError
    when an input's batch is static or another of its sizes is dynamic."""
    import torch

    zeros = []
    for node in exported.graph.nodes:
        if node.op != "placeholder" or node.name not in exported.graph_signature.user_inputs:
            continue
        value = node.meta["val"]
        shape = tuple(value.shape)
        if not shape or isinstance(shape[0], int):
            raise EscoinError(f"input {node.name!r} of the exported program has a static batch "
                              f"({shape}): to compile it for several batch sizes, export it "
                              "with a dynamic batch (dynamic_shapes={...: {0: "
                              "torch.export.Dim('batch')}})")
        if not all(isinstance(d, int) for d in shape[1:]):
            raise EscoinError(f"input {node.name!r} of the exported program has dynamic sizes "
                              f"beyond its batch ({tuple(str(d) for d in shape)}): escoin-tvm "
                              "compiles for static shapes but the batch")
        zeros.append(torch.zeros((size, *shape[1:]), dtype=value.dtype))
    return tuple(zeros)


def merge(modules: List[Tuple[int, tvm.IRModule]]) -> tvm.IRModule:
    """One module of the ``(size, module)`` pairs, in order: each size's functions renamed
    (``main`` -> ``function_name``, its kernels suffixed ``_b<size>``) so that they can live
    together, the first size's left as they are."""
    builder = relax.BlockBuilder(modules[0][1])
    for index, (size, mod) in enumerate(modules[1:], start=1):
        renamed: Dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar] = {
            gvar: builder.add_func(func, f"{gvar.name_hint}_b{size}")
            for gvar, func in mod.functions.items() if not isinstance(func, relax.Function)}
        for gvar, func in mod.functions.items():
            if isinstance(func, relax.Function):
                name = function_name(index, size) if gvar.name_hint == "main" else \
                    f"{gvar.name_hint}_b{size}"
                func = _GlobalVarRenamer(renamed).visit_expr(func)
                if func.attrs is not None and "global_symbol" in func.attrs:
                    func = func.with_attr("global_symbol", name)
                builder.add_func(func, name)
    return builder.get()


@relax.expr_functor.mutator
class _GlobalVarRenamer(relax.PyExprMutator):
    """Replaces the GlobalVars of a Relax function (its call_tir targets) by their new ones."""

    def __init__(self, renamed: Dict[tvm.ir.GlobalVar, tvm.ir.GlobalVar]):
        super().__init__()
        self.renamed = renamed

    def visit_global_var_(self, op: tvm.ir.GlobalVar) -> relax.Expr:
        return self.renamed.get(op, op)
