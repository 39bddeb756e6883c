"""The ``escoin`` backend of ``torch.compile``: sparse convolutions and linear layers on Escoin
kernels, the rest with PyTorch.

    compiled = torch.compile(model, backend="escoin",
                             options={"mode": "reduce-overhead", "threshold": 0.7})

For each conv2d and linear of the graph Dynamo captures whose weight is a parameter or buffer of
the model (``graph.py``), the layer goes to an Escoin kernel when the kernels implement it
(float32, float16 or bfloat16; a batched NCHW or channels-last input, the output in the same
layout, or a (batch, features) one of at most 64 rows; inference) and its weight, batch norm
folded in, is sparse enough; on a GPU (or with dispatch="measure") it is then also timed both
ways (the Escoin kernel of each family that takes it against PyTorch's own operator, same
dtype, same input shape, in the layout the graph runs its convolutions in, from CUDA graphs
when the graph is replayed from them, else as calls) and goes to the fastest family only if
that is ``MEASURED_MARGIN`` faster. A layer timed alone can still gain the graph less than it
measured (in a graph bound by the host at batch 1 the GPU's saving does not show;
docs/findings.md), so the compiled graph is then timed against the same graph with every layer
dense (``whole_graph.py``).
Everything else, and the graph around the Escoin calls, goes to inductor (or runs eagerly), in
the user's precision and settings. ``last_report()`` says what was decided for each layer.

Options (``torch.compile(..., options={...})``; torch.compile takes a ``mode`` or ``options``,
not both, so with options the mode is one of them):
  mode        torch.compile's mode for the rest of the graph ("reduce-overhead": CUDA graphs)
  threshold   sparsity from which a layer is a candidate (default 0.7)
  tuning_log  a log written by ``escoin_tvm.tune``: its best knobs for the kernels it knows
  dispatch    "measure" (default on a GPU), "threshold" (default on the CPU, where a warning
              says that the layers it takes are untimed), or "none";
              a graph replayed from CUDA graphs ("reduce-overhead") is measured so, any
              other as calls, each side's host time included
  dense       "inductor" (default) or "eager": what runs the rest of the graph
  progress    True / False: a progress bar over the kernels and layers on stderr while a
              graph compiles (default: when stderr is a terminal; the candidate layers'
              kernels compile together, in parts in parallel threads, ``kernels/build_together.py``,
              and the binaries are cached on disk, ``kernels/cuda_cache.py``)
  whole_graph True / False: once layers are taken, time the compiled graph against the same
              graph with every layer on PyTorch, compiled the same way, and keep the dense one
              unless the Escoin one is ``whole_graph.GRAPH_MARGIN`` faster (default: when the
              layers are measured; it costs a second compile of the graph)
Any other option goes to inductor, as it would without this backend.
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from ..errors import ArgumentError, first_line
from ..kernels import conv2d, linear, vector_sparse
from ..kernels.build_together import compile_together
from ..kernels.conv2d.operator import Epilogue
from ..kernels.eligibility import (DEFAULT_SPARSITY_THRESHOLD, MEASURED_MARGIN, LayerFacts,
                                   beats_dense, checked_threshold, sparse_enough)
from ..kernels.family import KernelFamily, choose, passed_over, takers
from ..kernels.vector_sparse.weight_format import block_density
from ..runtime import format_report
from ..support import dtypes
from ..support.progress import CompileProgress
from ..support.target import resolve_target
from ..transform.policy import LayerDecision
from . import graph, ops, whole_graph

# The kernel families the backend sends layers to, per operator, in order of preference (the
# tensor-core one takes only vector-pruned half-precision layers on a GPU: its eligibility.py;
# for linear layers it is not measured yet, and is kept only where measured faster).
FAMILIES = {"conv2d": (vector_sparse.FAMILY, conv2d.FAMILY),
            "linear": (linear.FAMILY, vector_sparse.LINEAR_FAMILY)}
OUR_OPTIONS = ("mode", "threshold", "tuning_log", "dispatch", "dense", "progress",
               "whole_graph")
UNTIMED_OFF_THE_GPU = (
    "torch.compile(backend='escoin'): off the GPU, layers go to Escoin kernels by their sparsity "
    "alone, untimed, and Escoin's CPU kernels can be slower than PyTorch's; "
    "options={'dispatch': 'measure'} times each layer and the graph as a whole and keeps what "
    "is faster (options={'dispatch': 'threshold'} keeps this policy without the warning)")
GRADIENTS_ON = ("the backend runs inference (call the model under torch.no_grad() or "
                "torch.inference_mode())")


@dataclass
class GraphReport:
    """What the backend decided for one graph: each candidate layer, and the verdict of the
    whole-graph check ("" when it did not run)."""

    layers: List[LayerDecision] = field(default_factory=list)
    whole_graph: str = ""


REPORTS: List[GraphReport] = []  # one per graph compiled, in order


def last_report() -> str:
    """The per-layer report of the graph the backend compiled last, and what the graph gained
    when it was timed as a whole."""
    if not REPORTS:
        return "the escoin backend has compiled no graph yet"
    layers = REPORTS[-1].layers
    tables = [format_report([vars(d) for d in layers if d.op == op], None, what)
              for op, what in (("conv2d", "convolutions"), ("linear", "linear layers"))
              if any(d.op == op for d in layers)]
    text = "\n\n".join(tables) or "the graph had no convolution or linear layer"
    return text + (f"\n{REPORTS[-1].whole_graph}" if REPORTS[-1].whole_graph else "")


def escoin_backend(gm: torch.fx.GraphModule, example_inputs, mode: Optional[str] = None,
                   options: Optional[dict] = None):
    """The backend function: Dynamo calls it with each graph it captures."""
    options = dict(options or {})
    ours = {key: options.pop(key) for key in OUR_OPTIONS if key in options}
    _check_inductor_options(options)
    if ours.get("tuning_log") is not None:
        from ..compiler import check_tuning_log_argument

        check_tuning_log_argument(ours["tuning_log"], "options['tuning_log']")
    threshold = checked_threshold(ours.get("threshold", DEFAULT_SPARSITY_THRESHOLD),
                                  "options['threshold']")
    dense = ours.get("dense", "inductor")
    if dense not in ("inductor", "eager"):
        raise ArgumentError(f"options['dense'] must be 'inductor' or 'eager', got {dense!r}")
    if "mode" in ours:
        mode = ours["mode"]
        known = tuple(torch._inductor.list_mode_options())
        if mode is not None and mode not in known:
            raise ArgumentError(f"options['mode'] must be one of {', '.join(known)}, got "
                                f"{mode!r}")
    dispatch = ours.get("dispatch")
    if dispatch not in (None, "measure", "threshold", "none"):
        raise ArgumentError(f"options['dispatch'] must be 'measure', 'threshold' or 'none', got "
                            f"{dispatch!r}")
    logs = {}

    def tuning_log(target):
        if ours.get("tuning_log") is None:
            return None
        if target.kind.name not in logs:
            from ..compiler import open_tuning_log

            logs[target.kind.name] = open_tuning_log(ours["tuning_log"], target)[0]
        return logs[target.kind.name]

    progress, check = ours.get("progress"), ours.get("whole_graph")
    for key, value in (("progress", progress), ("whole_graph", check)):
        if value is not None and not isinstance(value, bool):
            raise ArgumentError(f"options[{key!r}] must be True or False, got {value!r}")
    decisions, registered = [], []
    found = graph.candidates(gm, example_inputs)
    inputs = whole_graph.callable_inputs(example_inputs)
    checks = _checks_whole_graph(check, dispatch, found, inputs)
    written = whole_graph.mutated_inputs(gm) if checks else []
    checks = checks and not written
    # the graph as Dynamo captured it, for the whole-graph check: the layers are replaced in gm
    plain = whole_graph.dense_copy(gm) if checks else None
    shown = CompileProgress(progress, stages=4 if checks else 3)
    try:
        shown.stage("Escoin kernels")
        chosen = [_choose(candidate, threshold, dispatch, tuning_log) for candidate in found]
        shapes = [_static_shape(candidate) for candidate in found]
        _build_kernels(found, chosen, shapes, shown.kernels)
        shown.stage("sparse layers", layers=len(found))
        # inductor may run the graph's convolutions channels-last even for an NCHW model on a
        # GPU; a layer measured against PyTorch is then measured in that layout
        channels_last = dense == "inductor" and graph.inductor_uses_channels_last(found)
        graphs = _replays_cuda_graphs(dense, mode, options)
        for candidate, shape, (decision, layers) in zip(found, shapes, chosen):
            layer = layers[0] if layers else None
            if layers and shape is not None and _measures(dispatch, candidate):
                layer = _measure(decision, layers, candidate, shape,
                                 channels_last and candidate.device.type == "cuda", graphs)
            if layer is not None:
                registered.append(ops.register(layer))
                graph.replace(gm, candidate, registered[-1])
            decisions.append(decision)
            shown.layer()
        _warn_if_gradients_kept_every_layer(decisions)
        _warn_if_taken_untimed(dispatch, found, registered)
        shown.stage("the rest" if dense == "eager" else "inductor")
        gm.graph.lint()
        gm.recompile()
        report = GraphReport(decisions)
        if written and registered:
            report.whole_graph = (f"whole graph not timed: it writes {', '.join(written)} in "
                                  "place, which timing it would repeat (the model's state)")
        REPORTS.append(report)
        compiled = _dense_backend(gm, example_inputs, dense, mode, options)
        if registered and checks:
            shown.stage("whole graph against dense")
            plain_compiled = _dense_backend(plain, example_inputs, dense, mode, options)
            if not _escoin_graph_wins(report, compiled, plain_compiled, inputs):
                ops.release(*registered)
                return plain_compiled
        if registered:
            # released when Dynamo drops the graph (torch._dynamo.reset(), a recompile that
            # replaces it): with the graph module, which Dynamo keeps while it can run the
            # graph (the callable inductor returns is not kept)
            weakref.finalize(gm, ops.release, *registered)
        return compiled
    finally:
        shown.close()


def _checks_whole_graph(check: Optional[bool], dispatch: Optional[str], found,
                        inputs: Optional[list]) -> bool:
    """Whether the graph is timed as a whole once its layers are chosen: as asked, else when
    its layers are measured; never for a graph with no candidate layer or no inputs to call it
    on (``inputs``: ``whole_graph.callable_inputs``)."""
    if check is False or not found or inputs is None:
        return False
    return bool(check) or any(_measures(dispatch, candidate) for candidate in found)


def _escoin_graph_wins(report: GraphReport, escoin, dense, example_inputs) -> bool:
    """Times the two compiled graphs (``whole_graph.time_graphs``), writes the verdict into
    ``report`` and, when the dense graph wins, turns each taken layer's decision to dense. A
    graph that cannot be timed (a call fails outside a normal run) keeps the layers measured
    one by one, with a warning that says why."""
    try:
        times = whole_graph.time_graphs(escoin, dense, example_inputs)
    except Exception as err:  # noqa: BLE001 - the graph still runs; the check is what failed
        report.whole_graph = f"whole graph not timed ({type(err).__name__}: {first_line(err)})"
        warnings.warn(f"torch.compile(backend='escoin'): {report.whole_graph}; the layers "
                      "measured one by one run on Escoin kernels (options['whole_graph']=False "
                      "skips the check)")
        return True
    report.whole_graph = times.verdict()
    if times.keeps_escoin:
        return True
    for decision in report.layers:
        if decision.kernel != "dense":
            decision.kernel = "dense"
            decision.reason = f"the whole graph was not faster with it; alone, {decision.reason}"
    return False


def _check_inductor_options(options: dict) -> None:
    """Options that are neither the backend's nor inductor's are an ArgumentError naming them
    (a typo would otherwise fail inside inductor, or not at all)."""
    import difflib

    known = set(torch._inductor.list_options())
    unknown = [key for key in options if key not in known]
    if unknown:
        hints = [f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key)
                 for key in unknown
                 for close in [difflib.get_close_matches(key, [*OUR_OPTIONS, *known], 1)]]
        raise ArgumentError(f"unknown option(s) {', '.join(hints)}: the escoin backend takes "
                            f"{', '.join(OUR_OPTIONS)}, and passes inductor's own "
                            "(torch._inductor.list_options()) on to it")


def _warn_if_gradients_kept_every_layer(decisions: List[LayerDecision]) -> None:
    """A graph whose every sparse-enough layer stayed with PyTorch because gradients are on
    says so: the model runs, and the user sees why nothing got faster."""
    kept = [d for d in decisions if GRADIENTS_ON in d.reason]
    if kept and not any(d.kernel != "dense" for d in decisions):
        warnings.warn(f"torch.compile(backend='escoin'): gradients are on, so none of the "
                      f"graph's {len(kept)} candidate layer(s) runs on an Escoin kernel; "
                      f"{GRADIENTS_ON}")


def _warn_if_taken_untimed(dispatch: Optional[str], found, registered) -> None:
    """Layers taken by the default policy without being timed (a graph on the CPU) say so once:
    Escoin's CPU kernels are often slower than PyTorch's, and only measured dispatch (with the
    whole-graph check it brings) keeps a graph from running slower than without the backend."""
    if dispatch is None and registered and not any(_measures(None, c) for c in found):
        warnings.warn(UNTIMED_OFF_THE_GPU)


def _dense_backend(gm, example_inputs, dense: str, mode: Optional[str], options: dict):
    if dense == "eager":
        if options:
            raise ArgumentError(f"options {sorted(options)} are inductor's; with dense='eager' "
                                "there is no inductor to take them")
        if mode == "reduce-overhead":
            from torch._dynamo.backends.registry import lookup_backend

            return lookup_backend("cudagraphs")(gm, example_inputs)
        return gm.forward
    from torch._inductor.compile_fx import compile_fx

    patches = {**(torch._inductor.list_mode_options(mode) if mode else {}), **options}
    return compile_fx(gm, example_inputs, config_patches=patches or None)


def _choose(candidate: graph.Candidate, threshold: float, dispatch: Optional[str], tuning_log):
    """The candidate's LayerDecision and, when the kernels implement it and its weight is
    sparse enough, its SparseLayer for the preferred family that takes it, or, where the layer
    is measured, one for each family that takes it, in order of preference (measured dispatch
    keeps the fastest, or none)."""
    weight = candidate.weight
    decision = LayerDecision(candidate.name, tuple(_hint(d) for d in candidate.input_shape),
                             tuple(weight.shape) if weight is not None else (),
                             candidate.stride, candidate.padding, candidate.groups,
                             dtypes.name_of(candidate.input_dtype), op=candidate.op)
    linear = candidate.op == "linear"
    if weight is None:
        decision.reason = ("weight is not a parameter or buffer of the model (a tensor passed to "
                           "the call may change from call to call: it stays with PyTorch)")
        return decision, []
    dense = weight.detach().float().cpu().numpy()
    decision.nnz = int(np.count_nonzero(dense))
    decision.sparsity = 1.0 - decision.nnz / max(1, dense.size)
    device = candidate.device
    reason = None
    facts = _facts(candidate, dense)
    family, problem = choose(FAMILIES[candidate.op], facts)
    if dispatch == "none":
        reason = "Escoin off (dispatch='none')"
    elif problem is not None:
        reason = problem
    elif device is None or device.type not in ("cpu", "cuda"):
        reason = f"device {device} (Escoin kernels run on the CPU and CUDA GPUs)"
    elif torch.is_grad_enabled() and (candidate.trainable or candidate.input_requires_grad):
        reason = (f"gradients are on and the {'weight' if candidate.trainable else 'input'} "
                  f"requires them: {GRADIENTS_ON}")
    else:
        taken, why = sparse_enough(decision.sparsity, threshold)
        reason = None if taken else why
    if reason is not None:
        decision.reason = reason
        return decision, []
    target = resolve_target("cuda" if device.type == "cuda" else "llvm")
    # copies: a kernel built later (a new batch size) must see the weights of this compile,
    # as the ones built now do, whatever happens to the parameters in the meantime
    bias = None if candidate.bias is None else \
        candidate.bias.detach().float().cpu().numpy().copy()
    weight = dtypes.to_numpy(weight).copy()

    def layer_for(kernels: KernelFamily):
        if linear:
            return ops.SparseLinearLayer(candidate.name, weight, bias, candidate.relu, target,
                                         tuning_log(target), kernels)
        return ops.SparseLayer(candidate.name, weight, bias, candidate.stride,
                               candidate.padding, candidate.dilation, candidate.groups,
                               candidate.relu, target, tuning_log(target), kernels)

    offered = takers(FAMILIES[candidate.op], facts) if _measures(dispatch, candidate) \
        else (family,)
    decision.epilogue = Epilogue(bias=bias is not None, relu=candidate.relu).name + \
        ("; batch norm folded" if candidate.batch_norm else "")
    decision.kernel = family.name
    decision.reason = sparse_enough(decision.sparsity, threshold)[1]
    if facts.on_gpu:  # where the tensor-core family could have run it
        decision.reason += passed_over(FAMILIES[candidate.op], family, facts)
    return decision, [layer_for(taker) for taker in offered]


def _facts(candidate: graph.Candidate, weight: np.ndarray) -> LayerFacts:
    """The candidate as the kernel families' checks read it: its sizes as Dynamo saw them
    (the backend builds a kernel per input shape), NCHW (a channels-last input is converted
    around the kernel); ``weight`` is its dense weight."""
    on_gpu = candidate.device is not None and candidate.device.type == "cuda"
    blocks = block_density(weight, candidate.groups) if on_gpu else None
    return LayerFacts(candidate.op, tuple(_hint(d) for d in candidate.input_shape),
                      tuple(candidate.weight.shape), dtypes.name_of(candidate.input_dtype),
                      dtypes.name_of(candidate.weight.dtype), on_gpu=on_gpu,
                      block_density=blocks)


def _static_shape(candidate: graph.Candidate) -> Optional[tuple]:
    """The candidate's input shape as ints, or None when a size is symbolic (dynamic)."""
    shape = tuple(_hint(d) for d in candidate.input_shape)
    return shape if all(isinstance(d, int) for d in shape) else None


def _build_kernels(found, chosen, shapes, on_compiled) -> None:
    """Builds the kernels of the candidate layers whose input shape is known (each family's
    that may take the layer), compiled together
    (``build_together``: a CUDA compile costs about a second, much of it whatever it holds),
    calling ``on_compiled(count, total)`` as they compile. A layer with a dynamic size builds
    its kernel when a shape first reaches it."""
    with compile_together(on_compiled):
        for candidate, (_, layers), shape in zip(found, chosen, shapes):
            for layer in layers if shape is not None else ():
                layer.kernel(shape, candidate.device)


def _measures(dispatch: Optional[str], candidate: graph.Candidate) -> bool:
    """Whether a layer with a known input shape is timed both ways: when the dispatch policy
    asks for it, and by default on a GPU (a candidate whose device is unknown is on none)."""
    on_gpu = candidate.device is not None and candidate.device.type == "cuda"
    return dispatch == "measure" or (dispatch is None and on_gpu)


def _replays_cuda_graphs(dense: str, mode: Optional[str], options: dict) -> bool:
    """Whether the compiled graph's launches are replayed from CUDA graphs (inductor's
    ``triton.cudagraphs``, on in "reduce-overhead" and "max-autotune"; the cudagraphs backend
    under dense="eager"), so that a call's host time costs the graph nothing."""
    if dense == "eager":
        return mode == "reduce-overhead"
    from torch._inductor import config

    patches = {**(torch._inductor.list_mode_options(mode) if mode else {}), **options}
    return bool(patches.get("triton.cudagraphs", config.triton.cudagraphs))


def _measure(decision: LayerDecision, layers: list, candidate: graph.Candidate, shape: tuple,
             graph_channels_last: bool, graphs: bool):
    """The fastest of ``layers`` (the same layer on each family that takes it; the preferred
    family on a tie) if its kernel beats PyTorch's operator by ``MEASURED_MARGIN``, else None;
    the times and the verdict go into ``decision``. ``graph_channels_last``: inductor lays the
    graph's convolutions out channels-last; ``graphs``: the graph is replayed from CUDA graphs
    (else each side is timed as calls, its host time included)."""
    replayed = graphs and candidate.device.type == "cuda"
    escoin_times, dense_s = _time_layers(layers, shape, candidate.device,
                                         candidate.op != "linear" and (
                                             candidate.channels_last or graph_channels_last),
                                         replayed)
    best = min(range(len(layers)), key=lambda i: escoin_times[i])
    layer, escoin_s = layers[best], escoin_times[best]
    decision.escoin_us, decision.dense_us = escoin_s * 1e6, dense_s * 1e6
    how = "measured" if replayed else "measured as calls"
    name = layer.family.name
    others = "".join(f"; {other.family.name} {seconds * 1e6:.1f} us"
                     for other, seconds in zip(layers, escoin_times) if other is not layer)
    if not beats_dense(escoin_s, dense_s):
        decision.kernel = "dense"
        decision.reason = (f"{how}: {name} {escoin_s * 1e6:.1f} us, not "
                           f"{MEASURED_MARGIN:.0%} under PyTorch's {dense_s * 1e6:.1f} us"
                           f"{others}")
        return None
    decision.kernel = name
    decision.reason = (f"{how}: {name} {escoin_s * 1e6:.1f} us, PyTorch "
                       f"{dense_s * 1e6:.1f} us ({dense_s / escoin_s:.2f}x){others}")
    return layer


def _hint(size):
    """A size as an int (the value Dynamo saw, for a symbolic one), else itself."""
    if isinstance(size, torch.SymInt):
        hint = size.node.hint
        return int(hint) if hint is not None else size
    return int(size)


def _time_layers(layers: list, shape, device, channels_last: bool = False,
                 graphs: bool = True):
    """([Escoin seconds of each of ``layers``], PyTorch seconds) at ``shape``: the same layer
    on each family that takes it, and PyTorch's operator in its current settings (TF32 and
    cuDNN as the user has them), all on an input in the graph's memory format: a
    channels-last one costs the Escoin path its copies to NCHW and back (``ops.apply_conv``).
    With ``graphs`` (a GPU graph replayed from CUDA graphs) each side is captured in a CUDA
    graph and replayed (``timing.graph_time``): launches cost nothing there. Otherwise each is
    timed as calls made back to back (``timing.call_time``), the Escoin side through its custom
    operator as the compiled graph calls it, PyTorch's dispatch and the operator's included."""
    from ..support.timing import call_time, graph_time

    first = layers[0]
    dtype = dtypes.torch_dtype(dtypes.name_of(first.weight.dtype))
    x = torch.randn(shape, device=device, dtype=dtype)
    weight = dtypes.to_torch(first.weight).to(device)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
        weight = weight.to(memory_format=torch.channels_last)
    bias = None if first.bias is None else torch.from_numpy(first.bias).to(device, dtype)

    def dense():
        return first.torch_equivalent(x, weight, bias)

    with torch.no_grad():
        if not graphs:
            return ([_call_time_through_operator(layer, x, device) for layer in layers],
                    call_time(dense, device.type))
        return [graph_time(_escoin_call(layer, x, shape, device, dtype))
                for layer in layers], graph_time(dense)


def _call_time_through_operator(layer, x, device) -> float:
    """Seconds per call of the layer through its custom operator, as a compiled graph calls
    it (registered for the timing, then released)."""
    from ..support.timing import call_time

    index = ops.register(layer)
    op = ops.operator("conv2d" if isinstance(layer, ops.SparseLayer) else "linear")
    try:
        return call_time(lambda: op(x, index), device.type)
    finally:
        ops.release(index)


def _escoin_call(layer, x, shape, device, dtype):
    """The layer's kernel on ``x`` as a callable, for a CUDA graph to capture."""
    if isinstance(layer, ops.SparseLayer):
        return lambda: ops.apply_conv(layer, x)
    kernel = layer.kernel(shape, device)
    out = torch.empty(layer.output_shape(shape), device=device, dtype=dtype)
    return lambda: kernel.run_torch(x, out)
