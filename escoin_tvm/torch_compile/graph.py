"""The convolutions and linear layers of a TorchDynamo graph, and the rewrite that sends one to
an Escoin kernel.

Dynamo hands a backend an FX graph of torch-level calls whose parameters and buffers are graph
inputs, with the real tensors among the example inputs. A candidate is a ``conv2d`` whose weight
(and bias) is such an input, followed where possible by an eval-mode ``batch_norm`` of inputs
(folded into the weight and bias with ``torch.nn.utils.fusion.fuse_conv_bn_weights``) and a
``relu`` (fused into the kernel), each the only user of what it consumes. A ``linear`` of such
a weight is a candidate likewise, with a ``relu`` after it.
"""
from __future__ import annotations

from dataclasses import dataclass
from operator import mul
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import fx

from .ops import is_channels_last, operator

CONV2D = (torch.conv2d, F.conv2d, torch.ops.aten.conv2d.default)
BATCH_NORM = (F.batch_norm, torch.batch_norm)
RELU = (torch.relu, torch.relu_, F.relu, torch.ops.aten.relu.default)
LINEAR = (torch._C._nn.linear, F.linear, torch.ops.aten.linear.default)


@dataclass
class Candidate:
    """A conv2d or linear of the graph, with what follows it, its real weights and its input's
    shape."""

    name: str
    nodes: List[fx.Node]  # conv[, batch norm][, relu]: the last one's value is replaced
    input_shape: tuple  # ints, or symbolic sizes
    input_dtype: torch.dtype
    device: torch.device
    weight: Optional[torch.Tensor]  # None when the weight is not a graph input
    bias: Optional[torch.Tensor]
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    op: str = "conv2d"  # or "linear"
    relu: bool = False
    batch_norm: bool = False
    trainable: bool = False  # the weight (or bias) requires gradients
    input_requires_grad: bool = False  # the input does (a gradient would flow through it)
    channels_last: bool = False  # the input is laid out NHWC (``ops.is_channels_last``)


def _pair(value) -> Tuple[int, int]:
    """An int or a sequence of one or two ints (as ``F.conv2d`` takes them) as a pair."""
    values = tuple(int(v) for v in value) if isinstance(value, (list, tuple)) else (int(value),)
    return values * 2 if len(values) == 1 else values


def _padding(padding, weight_shape, dilation) -> Optional[Tuple[int, int, int, int]]:
    """PyTorch's conv2d padding as (top, left, bottom, right); "same" puts the odd pixel at the
    bottom/right as PyTorch does."""
    if padding == "valid":
        return (0, 0, 0, 0)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
        return (total[0] // 2, total[1] // 2, total[0] - total[0] // 2, total[1] - total[1] // 2)
    ph, pw = _pair(padding)
    return (ph, pw, ph, pw)


def _conv_arguments(node: fx.Node):
    names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
    defaults = dict(bias=None, stride=1, padding=0, dilation=1, groups=1)
    args = {**defaults, **dict(zip(names, node.args)), **node.kwargs}
    return args


def _only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return path.replace("L['self'].", "").replace("L['fn'].", "") or node.name
    return node.name


def is_model_state(node: fx.Node, value) -> bool:
    """Whether a graph input is a parameter or a buffer of a module (what stays the same from
    call to call, and what Dynamo treats as the model's), not a tensor the caller passes (a
    weight given as an argument, or ``torch.func.functional_call``'s plain tensors: another
    call may pass other values to the same graph)."""
    if isinstance(value, torch.nn.Parameter):
        return True
    source = getattr(node.meta.get("grapharg"), "source", None)
    return isinstance(value, torch.Tensor) and source is not None and \
        "._buffers[" in source.name


MULTIPLY = (mul, torch.mul, torch.ops.aten.mul.Tensor)


def state_value(node, inputs: Dict[fx.Node, object]) -> Optional[torch.Tensor]:
    """The value of a graph value computed from the model's state alone: a parameter or buffer
    (``inputs``), or the product of two such values, each perhaps converted with ``.to`` (the
    weight of a layer pruned with ``torch.nn.utils.prune``: ``weight_orig * weight_mask``,
    which its hook computes before each call); None for anything else."""
    if not isinstance(node, fx.Node):
        return None
    if node in inputs:
        return inputs[node]
    if node.op == "call_method" and node.target == "to" and node.args:
        value = state_value(node.args[0], inputs)
        rest = node.args[1:]
        if value is None or any(isinstance(a, fx.Node) for a in (*rest, *node.kwargs.values())):
            return None
        return value.to(*rest, **node.kwargs)
    if node.op == "call_function" and node.target in MULTIPLY and len(node.args) == 2 and \
            not node.kwargs:
        left, right = (state_value(a, inputs) for a in node.args)
        if left is None or right is None:
            return None
        with torch.no_grad():
            return left.detach() * right.detach()
    return None


def candidates(gm: fx.GraphModule, example_inputs: Sequence) -> List[Candidate]:
    """The conv2d and linear calls of ``gm``, in graph order. The weights, biases and batch-norm
    values a candidate folds in must be the model's state (``is_model_state``); a layer whose
    weight is passed in another way has none (it stays with PyTorch)."""
    inputs: Dict[fx.Node, object] = {}
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node, value in zip(placeholders, example_inputs):
        if is_model_state(node, value):
            inputs[node] = value
    found = []
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in LINEAR:
            found.append(_linear_candidate(node, inputs))
        if node.op != "call_function" or node.target not in CONV2D:
            continue
        args = _conv_arguments(node)
        example = args["input"].meta.get("example_value") if isinstance(args["input"], fx.Node) \
            else None
        weight, bias = state_value(args["weight"], inputs), state_value(args["bias"], inputs)
        if example is None or not isinstance(weight, torch.Tensor) or weight.ndim != 4:
            weight = None
        if args["bias"] is not None and not isinstance(bias, torch.Tensor):
            weight = None  # a computed bias: not a constant either
        dilation = _pair(args["dilation"])
        candidate = Candidate(
            _module_path(node), [node],
            tuple(example.shape) if example is not None else (),
            example.dtype if example is not None else None,
            example.device if example is not None else None, weight, bias,
            _pair(args["stride"]),
            _padding(args["padding"], weight.shape if weight is not None else (0, 0, 1, 1),
                     dilation),
            dilation, int(args["groups"]))
        if weight is not None:
            candidate.trainable = weight.requires_grad or bool(
                bias is not None and bias.requires_grad)
            candidate.input_requires_grad = bool(example.requires_grad)
            candidate.channels_last = is_channels_last(example)
            _absorb_followers(candidate, inputs)
        found.append(candidate)
    return found


def _linear_arguments(node: fx.Node):
    return {"bias": None, **dict(zip(("input", "weight", "bias"), node.args)), **node.kwargs}


def _linear_candidate(node: fx.Node, inputs) -> Candidate:
    args = _linear_arguments(node)
    example = args["input"].meta.get("example_value") if isinstance(args["input"], fx.Node) \
        else None
    weight, bias = state_value(args["weight"], inputs), state_value(args["bias"], inputs)
    if example is None or not isinstance(weight, torch.Tensor) or weight.ndim != 2 or \
            (args["bias"] is not None and not isinstance(bias, torch.Tensor)):
        weight = None
    candidate = Candidate(_module_path(node), [node],
                          tuple(example.shape) if example is not None else (),
                          example.dtype if example is not None else None,
                          example.device if example is not None else None,
                          None if weight is None else weight.detach(),
                          None if bias is None else bias.detach(), op="linear")
    if weight is not None:
        candidate.trainable = weight.requires_grad or bool(bias is not None and
                                                           bias.requires_grad)
        candidate.input_requires_grad = bool(example.requires_grad)
        user = _only_user(node)
        if user is not None and user.op == "call_function" and user.target in RELU:
            candidate.nodes.append(user)
            candidate.relu = True
    return candidate


def _absorb_followers(candidate: Candidate, inputs) -> None:
    """Adds an eval-mode batch norm of graph inputs, then a relu, that follow the conv2d; a
    batch norm whose folded weight or bias would not be finite in the layer's dtype (Inf in
    float16 where PyTorch's own batch norm stays finite) is left in the graph, and the relu
    after it with it."""
    user = _only_user(candidate.nodes[-1])
    if user is not None and user.op == "call_function" and user.target in BATCH_NORM:
        names = ("input", "running_mean", "running_var", "weight", "bias", "training",
                 "momentum", "eps")
        args = {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5,
                **dict(zip(names, user.args)), **user.kwargs}
        values = {k: inputs.get(args[k]) if isinstance(args[k], fx.Node) else args[k]
                  for k in ("running_mean", "running_var", "weight", "bias")}
        eps = _known_float(args["eps"])
        if not args["training"] and eps is not None and all(isinstance(values[k], torch.Tensor)
                                        for k in ("running_mean", "running_var")) \
                and all(values[k] is None or isinstance(values[k], torch.Tensor)
                        for k in ("weight", "bias")):
            def wide(t):  # folded in float32, rounded once to the weight's dtype
                return None if t is None else t.detach().float()

            folded = torch.nn.utils.fusion.fuse_conv_bn_weights(
                wide(candidate.weight), wide(candidate.bias), wide(values["running_mean"]),
                wide(values["running_var"]), eps, wide(values["weight"]),
                wide(values["bias"]))
            dtype = candidate.weight.dtype
            weight, bias = (t.detach().to(dtype) for t in folded)
            if not (weight.isfinite().all() and bias.isfinite().all()):
                return  # the folded weight overflows the dtype: the batch norm stays after it
            candidate.weight, candidate.bias = weight, bias
            candidate.nodes.append(user)
            candidate.batch_norm = True
            user = _only_user(user)
    if user is not None and user.op == "call_function" and user.target in RELU:
        candidate.nodes.append(user)
        candidate.relu = True


def _known_float(value) -> Optional[float]:
    """A float argument's value: a number, or a graph value Dynamo traced as a symbolic float
    (batch norm's ``eps`` under ``dynamic=True``) with the value it saw; None when unknown."""
    if isinstance(value, fx.Node):
        value = value.meta.get("example_value")
        if isinstance(value, torch.SymFloat):
            value = value.node.hint
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def replace(gm: fx.GraphModule, candidate: Candidate, layer: int) -> None:
    """Replaces the candidate's nodes by ``torch.ops.escoin.sparse_conv2d(input, layer)`` (or
    ``sparse_linear``; importing ``ops`` above registered them)."""
    last, first = candidate.nodes[-1], candidate.nodes[0]
    # the input as it is now: an earlier replace may have rewired it
    data = (_linear_arguments if candidate.op == "linear" else _conv_arguments)(first)["input"]
    op = operator(candidate.op)
    with gm.graph.inserting_after(last):
        call = gm.graph.call_function(op.default, (data, layer))
    call.meta.update({k: v for k, v in last.meta.items() if k != "example_value"})
    if "example_value" in last.meta:
        call.meta["example_value"] = last.meta["example_value"]
    last.replace_all_uses_with(call)
    for node in reversed(candidate.nodes):
        gm.graph.erase_node(node)


def inductor_uses_channels_last(found: Sequence[Candidate]) -> bool:
    """Whether inductor will lay this graph's convolutions out channels-last on a GPU (its
    "layout optimization", on by default for inference graphs of convolutions that it expects
    to gain from it). Asked of inductor's own heuristic, on a graph of just the convolutions;
    False when inductor's internals do not answer."""
    try:
        from torch._inductor import config
        from torch._inductor.graph import GraphLowering
    except ImportError:
        return False
    if not config.layout_optimization:
        return False
    convs = [c for c in found if c.op == "conv2d" and c.weight is not None and
             all(isinstance(d, int) for d in c.input_shape)]
    if not convs:
        return False
    g = fx.Graph()
    for i, c in enumerate(convs):
        x, w = g.placeholder(f"x{i}"), g.placeholder(f"w{i}")
        # meta tensors: not a CPU device, so inductor answers as it does for a GPU
        x.meta["val"] = torch.empty(c.input_shape, dtype=c.input_dtype, device="meta")
        w.meta["val"] = torch.empty(tuple(c.weight.shape), dtype=c.input_dtype, device="meta")
        g.call_function(torch.ops.aten.convolution.default,
                        (x, w, None, list(c.stride), list(c.padding[:2]), list(c.dilation),
                         False, [0, 0], c.groups))
    try:
        return bool(GraphLowering.decide_layout_opt(fx.GraphModule({}, g), is_inference=True))
    except Exception:  # an internal API: its absence or a change must not break compiling
        return False
