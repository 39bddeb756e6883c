"""What the Escoin pass matches: a conv2d with a constant weight and the epilogue it absorbs.

    conv2d(data, const) [+ bias] [+ residual] [relu]

The bias is a constant of the convolution's dtype and of shape (1, O, 1, 1) or (O, 1, 1) (what
FoldBatchnormToConv2D leaves behind), added on either side; the residual is a tensor of the sum's
own shape and dtype (a ResNet shortcut: no broadcasting) computed before the convolution, so that of
two convolutions added together only the later one takes the add; a relu may end the chain.

Each combination is a dataflow pattern (``tvm.relax.dpl``); ``match_chains`` tries them longest
first over the whole function, as ``FuseOpsByPattern`` orders its patterns, so that every
convolution takes the longest chain it can, and it claims a chain only when none of its
intermediate values is used outside it. The module is not changed while matching: the policy's
decisions stay attached to the calls they were made for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Callable, Dict, List, Optional

from tvm import relax
from tvm.ir import Constant
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard

from ..kernels.conv2d.operator import Epilogue
from .matching import FunctionIndex, claim
from .tensor_types import dtype, static_shape


@dataclass
class Chain:
    """A matched conv2d and its epilogue: ``root`` is the var of the chain's last binding,
    ``intermediates`` the vars of the bindings it absorbs (the conv2d's among them)."""

    root: relax.Var
    conv: relax.Call
    layer: int  # the conv2d's index in the pass's report
    epilogue: Epilogue
    bias: Optional[Constant] = None
    residual: Optional[relax.Expr] = None
    intermediates: List[relax.Var] = field(default_factory=list)


@dataclass(frozen=True)
class ChainPattern:
    epilogue: Epilogue
    pattern: DFPattern
    conv: DFPattern
    bias: Optional[DFPattern]
    residual: Optional[DFPattern]


def _chain_pattern(epilogue: Epilogue, residual_first: bool) -> ChainPattern:
    conv = is_op("relax.nn.conv2d")(wildcard(), is_const())
    out, bias, residual = conv, None, None
    if epilogue.bias:
        bias = is_const()
        out = is_op("relax.add")(out, bias) | is_op("relax.add")(bias, out)
    if epilogue.residual:
        residual = wildcard()
        out = is_op("relax.add")(residual, out) if residual_first else \
            is_op("relax.add")(out, residual)
    if epilogue.relu:
        out = is_op("relax.nn.relu")(out)
    return ChainPattern(epilogue, out, conv, bias, residual)


def chain_patterns() -> List[ChainPattern]:
    """Every chain, longest first, a bias before a residual at equal length; a residual add
    once with the chain on its left and once on its right (so that of ``conv_a + conv_b`` the
    later convolution can take the add)."""
    epilogues = sorted((Epilogue(bias, relu, residual)
                        for bias, residual, relu in product((True, False), repeat=3)),
                       key=lambda e: -(e.bias + e.residual + e.relu))
    return [_chain_pattern(epilogue, residual_first) for epilogue in epilogues
            for residual_first in ((False, True) if epilogue.residual else (False,))]


def _is_bias(const, conv) -> bool:
    out_channels = static_shape(conv.args[1])[0]
    return isinstance(const, Constant) and dtype(const) == dtype(conv) and \
        static_shape(const) in ((1, out_channels, 1, 1), (out_channels, 1, 1))


def match_chains(func: relax.Function, layer_of: Callable[[relax.Call], Optional[int]],
                 position: Dict[relax.Var, int]) -> Dict[relax.Var, Chain]:
    """The chains of ``func``, by root var. ``layer_of(conv2d call)`` is the call's index in
    the report when the policy sends it to an Escoin kernel, else None; ``position`` numbers
    the function's bindings in order."""
    index = FunctionIndex.of(func)

    def check(chain_pattern: ChainPattern, matched, root: relax.Var) -> Optional[Chain]:
        """The Chain of a match, or None when it breaks a rule of the module docstring or the
        policy keeps its convolution dense."""
        conv = matched[chain_pattern.conv]
        layer = layer_of(conv)
        intermediates = index.absorbed(matched, root) if layer is not None else None
        if intermediates is None:
            return None
        chain = Chain(root, conv, layer, chain_pattern.epilogue, intermediates=intermediates)
        if chain_pattern.bias is not None:
            chain.bias = matched[chain_pattern.bias]
            if not _is_bias(chain.bias, conv):
                return None
        if chain_pattern.residual is not None:
            other = matched[chain_pattern.residual]
            other_var, conv_var = index.var_of(other), index.var_of(conv)
            if other_var.same_as(conv_var) or dtype(other) != dtype(conv) or \
                    static_shape(other) is None or static_shape(other) != static_shape(conv) or \
                    position.get(other_var, -1) > position[conv_var]:
                return None
            chain.residual = other_var
        return chain

    return claim(index, chain_patterns(), check)
