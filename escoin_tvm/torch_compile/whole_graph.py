"""The backend's check of its result as a whole: the graph with its Escoin layers against the
same graph with every layer on PyTorch, both compiled the same way and timed on the graph's own
inputs.

Layers measured one by one can still lose together: at batch 1 a graph bound by the host does not
show a kernel's saving on the GPU, each Escoin call adds a custom operator's dispatch, and a
layer's time alone leaves out what inductor would have fused around it (docs/findings.md). So once
the layers are chosen the backend times both compiled graphs, call after call as the user's program
runs them (host time and CUDA-graph replays included), in alternating rounds, and keeps the Escoin
graph only when its fastest round is ``GRAPH_MARGIN`` faster than the dense graph's. Of the ways
to read such rounds, the fastest of each spread identical compiles least (docs/findings.md): a
busy host or a slow clock only ever adds time to a round.
"""
from __future__ import annotations

import contextlib
import copy
import operator
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

GRAPH_MARGIN = 0.02  # the Escoin graph must be this much faster than the dense one to be kept
ROUNDS = 5  # alternating rounds of each graph's calls
ROUND_S = 0.02  # about how long a round of calls lasts


@dataclass
class GraphTimes:
    """Seconds per call of the two compiled graphs, each the fastest of its rounds."""

    escoin_s: float
    dense_s: float

    @property
    def keeps_escoin(self) -> bool:
        return self.escoin_s <= (1.0 - GRAPH_MARGIN) * self.dense_s

    def verdict(self) -> str:
        """One line for the report: both times, the gain, and which graph runs."""
        times = (f"escoin {self.escoin_s * 1e3:.3f} ms, dense {self.dense_s * 1e3:.3f} ms "
                 f"per call ({self.dense_s / max(self.escoin_s, 1e-12):.2f}x)")
        if self.keeps_escoin:
            return f"whole graph: {times}: the Escoin layers run"
        return (f"whole graph: {times}, not {GRAPH_MARGIN:.0%} faster: every layer runs on "
                "PyTorch")


def dense_copy(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of the graph Dynamo captured, to compile with every layer dense while ``gm``'s
    layers are replaced, carrying what Dynamo hands its backends beside the graph: the module's
    ``meta`` (its compile id), its parameters' sources and each input's source. Without them
    AOTAutograd takes the copy for a graph of unknown origin and marks none of its inputs
    static, so CUDA graphs copy every parameter and buffer into their own memory before each
    replay (hundreds of copies at batch 1, more time than the graph's kernels) and the dense
    graph would be timed far slower than it runs."""
    copied = torch.fx.GraphModule(gm, copy.deepcopy(gm.graph))
    copied.meta = dict(gm.meta)
    for name in ("_param_name_to_source", "_source_to_user_stacks"):
        if hasattr(gm, name):
            setattr(copied, name, getattr(gm, name))
    sources = {node.name: node._dynamo_source for node in gm.graph.find_nodes(op="placeholder")
               if hasattr(node, "_dynamo_source")}
    for node in copied.graph.find_nodes(op="placeholder"):
        if node.name in sources:
            node._dynamo_source = sources[node.name]
    return copied


def device_type(inputs: Sequence) -> str:
    """"cuda" when any of the graph's inputs is on a GPU, else "cpu"."""
    return "cuda" if any(isinstance(x, torch.Tensor) and x.is_cuda for x in inputs) else "cpu"


def callable_inputs(inputs: Sequence) -> Optional[list]:
    """The graph's example inputs as it can be called on them: real tensors and numbers, a
    dynamic-shape graph's symbolic size as the value Dynamo saw for it; None when one has no
    such value."""
    values = []
    for x in inputs:
        if isinstance(x, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            hint = x.node.hint
            if hint is None:
                return None
            x = hint
        if not isinstance(x, (torch.Tensor, int, float, bool)):
            return None
        values.append(x)
    return values


# what may return a view of its first argument: an in-place op on it writes its source too
VIEWS = {"view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "squeeze",
         "unsqueeze", "transpose", "permute", "t", "expand", "expand_as", "narrow", "select",
         "unfold", "as_strided", "detach", "contiguous", "getitem", "chunk", "split", "unbind"}
IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv,
                      operator.ifloordiv, operator.imod, operator.ipow, operator.iand,
                      operator.ior, operator.ixor, operator.ilshift, operator.irshift,
                      operator.imatmul, operator.setitem}


def mutated_inputs(gm: torch.fx.GraphModule) -> List[str]:
    """The graph's inputs (a model's buffers among them) that it writes in place, directly or
    through a view: calling such a graph to time it would change the model's state."""
    written = []
    for node in gm.graph.nodes:
        target = _written_argument(node)
        while isinstance(target, torch.fx.Node) and target.op != "placeholder" and \
                _name(target) in VIEWS and target.args:
            target = target.args[0]
        if isinstance(target, torch.fx.Node) and target.op == "placeholder" and \
                target.name not in written:
            written.append(target.name)
    return written


def _name(node: torch.fx.Node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", "")
    return name.split(".")[0]


def _written_argument(node: torch.fx.Node):
    """What ``node`` writes in place (its first argument, or its ``out``), else None."""
    if node.op not in ("call_function", "call_method"):
        return None
    if "out" in node.kwargs:
        return node.kwargs["out"]
    first = node.args[0] if node.args else None
    if node.target in IN_PLACE_OPERATORS or node.kwargs.get("inplace") is True:
        return first
    schema = getattr(node.target, "_schema", None)
    if schema is not None:
        return first if any(arg.alias_info is not None and arg.alias_info.is_write
                            for arg in schema.arguments) else None
    name = _name(node)
    in_place = name.endswith("_") and not name.startswith("_")
    return first if in_place else None


def time_graphs(escoin: Callable, dense: Callable, inputs: Sequence,
                timer: Optional[Callable] = None) -> GraphTimes:
    """Times the two compiled graphs on ``inputs`` under no_grad, in ``ROUNDS`` rounds of
    back-to-back calls, each round about ``ROUND_S`` long and each starting with the graph the
    last one ended with, so that neither is always timed first. ``timer(fn, device, calls)``
    (seconds per call) defaults to ``timing.call_time`` over one loop."""
    from ..support.timing import call_time

    device = device_type(inputs)
    timer = timer or (lambda fn, on, calls: call_time(fn, on, warmup=1, calls=calls, repeats=1))
    runs = [_one_step(escoin, inputs), _one_step(dense, inputs)]
    with torch.no_grad(), _own_cuda_graph_steps():
        # the first calls compile, record CUDA graphs or autotune: not timed
        one = max(timer(run, device, 3) for run in runs)
        calls = int(min(200, max(1, ROUND_S / max(one, 1e-9))))
        times = [[], []]
        for round_ in range(ROUNDS):
            for side in (0, 1) if round_ % 2 == 0 else (1, 0):
                times[side].append(timer(runs[side], device, calls))
    return GraphTimes(float(np.min(times[0])), float(np.min(times[1])))


def _one_step(fn: Callable, inputs: Sequence) -> Callable:
    """A call of ``fn`` on ``inputs`` that is an iteration of its own for inductor's CUDA-graph
    trees. The check runs inside Dynamo's compile of the user's frame, where the trees see every
    call as one iteration: without a step mark each call would record a new CUDA graph on top of
    the last instead of replaying its own, and the time would be that of recording."""
    from torch._inductor import cudagraph_trees

    def call():
        cudagraph_trees.mark_step_begin()
        return fn(*inputs)
    return call


@contextlib.contextmanager
def _own_cuda_graph_steps():
    """Restores the trees' step counter after the check: a counter left marked would make them
    wait for the user's program to mark its own steps, which it never does."""
    from torch._inductor.cudagraph_trees import MarkStepBox

    counter = MarkStepBox.mark_step_counter
    try:
        yield
    finally:
        MarkStepBox.mark_step_counter = counter
