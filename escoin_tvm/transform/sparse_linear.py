"""The Relax pass that dispatches sparse fully-connected layers to Escoin's sparse linear kernel.

A Linear reaches Relax as ``matmul(x, W.T)`` with the transposed weight a constant after
``FoldConstant`` (a half-precision one as ``astype(matmul(x, W.T, out_dtype="float32"))``),
then a bias ``add`` and perhaps a ``relu``. The policy (``policy.LinearPolicy``) decides per
matmul; the patterns below take the longest chain ``matmul [astype] [+ bias] [relu]`` whose
intermediate values are used nowhere else (``matching.claim``); the rewriter replaces it by
what the layer's kernel family emits for it (``FAMILIES``; the family's ``relax_call``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import product
from typing import Dict, List, Optional, Sequence

import tvm
from tvm import relax
from tvm.ir import Constant
from tvm.relax.dpl import DFPattern, is_const, is_op, wildcard

from ..errors import EscoinError
from ..kernels import linear, vector_sparse
from ..kernels.eligibility import checked_threshold
from .matching import FunctionIndex, claim, decide_calls, rewrite_chains
from .policy import LayerDecision, LinearPolicy
from .tensor_types import dtype, static_shape

MATMUL = tvm.ir.Op.get("relax.matmul")
# The kernel families this pass sends linear layers to, in order of preference (the tensor-core
# one, not yet measured against the CUDA-core one, runs a layer only where measured dispatch
# finds it faster: vector_sparse/eligibility.py).
FAMILIES = (linear.FAMILY, vector_sparse.LINEAR_FAMILY)


@dataclass(frozen=True)
class LinearPattern:
    pattern: DFPattern
    matmul: DFPattern
    bias: Optional[DFPattern]
    relu: bool
    cast: bool


@dataclass
class LinearChain:
    root: relax.Var
    matmul: relax.Call
    layer: int
    relu: bool
    bias: Optional[Constant] = None
    intermediates: List[relax.Var] = field(default_factory=list)


def linear_patterns() -> List[LinearPattern]:
    """Every chain, longest first."""
    found = []
    for cast, bias, relu in sorted(product((True, False), repeat=3), key=lambda c: -sum(c)):
        matmul = is_op("relax.matmul")(wildcard(), is_const())
        out, bias_pattern = matmul, None
        if cast:
            out = is_op("relax.astype")(out)
        if bias:
            bias_pattern = is_const()
            out = is_op("relax.add")(out, bias_pattern) | is_op("relax.add")(bias_pattern, out)
        if relu:
            out = is_op("relax.nn.relu")(out)
        found.append(LinearPattern(out, matmul, bias_pattern, relu, cast))
    return found


def _chain_dtype(call: relax.Call) -> str:
    return dtype(call.args[0])


@tvm.transform.module_pass(opt_level=0, name="EscoinSparseLinear")
class SparseLinearDispatch:
    """``SparseLinearDispatch(target, threshold)``: a Relax module pass; ``layer_names`` labels
    the linear layers, in program order, in ``pass.report``; ``measure`` times each candidate
    both ways; ``report_only`` keeps every layer dense; ``tuning_log`` (a ``tuning.TuningLog``)
    supplies tuned knobs for the layers it has records of; ``families`` are the kernel
    families it may use (``FAMILIES``). ``kernels`` lists the layers it put on sparse kernels
    (the tuning tasks)."""

    def __init__(self, target, threshold: float, layer_names: Sequence = (), measure=None,
                 report_only: bool = False, tuning_log=None, families=FAMILIES):
        threshold = checked_threshold(threshold, "sparsity threshold")
        self.target = target
        self.tuning_log = tuning_log
        self.kernels: list = []  # the families' kernel records (tuning tasks)
        self.policy = LinearPolicy(target, threshold, families, layer_names, report_only,
                                   measure, lambda family: SparseLinearDispatch(
                                       target, 0.0, tuning_log=tuning_log, families=(family,)))
        self.report: List[LayerDecision] = []
        self.error: Optional[EscoinError] = None

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        """The pass; an EscoinError it raises is kept as ``self.error`` (``SparseConv2dDispatch``
        says why)."""
        self.error = None
        try:
            return self._transform(mod)
        except EscoinError as err:
            self.error = err
            raise

    def _transform(self, mod: tvm.IRModule) -> tvm.IRModule:
        self.report, self.kernels = [], []
        layer_of = decide_calls(mod, MATMUL, self.policy.decide, self.report)
        if not layer_of:
            return mod
        return rewrite_chains(mod, lambda func: _match(func, layer_of), lambda chain, rewriter:
                              self.kernel_call(rewriter.builder_, chain,
                                               rewriter.visit_expr(chain.matmul.args[0])))

    def kernel_call(self, builder, chain: LinearChain, data) -> relax.Expr:
        """What computes the chain with the kernel family chosen for its layer."""
        decision = self.report[chain.layer]
        bias = None if chain.bias is None else chain.bias.value.numpy()
        lowered = self.policy.chosen[chain.layer].relax_call(
            builder, data, chain.matmul, bias, chain.relu, decision.name, decision.input_shape,
            self.target, self.tuning_log)
        decision.schedule, decision.config = lowered.schedule, lowered.config
        decision.epilogue = lowered.epilogue
        self.kernels.append(lowered.kernel)
        return lowered.call


def _match(func: relax.Function, layer_of: Dict[relax.Call, int]) -> Dict[relax.Var, LinearChain]:
    index = FunctionIndex.of(func)

    def check(item: LinearPattern, matched, root) -> Optional[LinearChain]:
        matmul = matched[item.matmul]
        layer = layer_of.get(matmul)
        intermediates = index.absorbed(matched, root) if layer is not None else None
        if intermediates is None:
            return None
        # a half product to float32 is taken with its cast back (the kernel's output is half)
        widened = _chain_dtype(matmul) != "float32" and \
            str(matmul.attrs.out_dtype or "") == "float32"
        if item.cast != widened or (item.cast and dtype(root) != _chain_dtype(matmul)):
            return None
        chain = LinearChain(root, matmul, layer, item.relu, intermediates=intermediates)
        if item.bias is not None:
            chain.bias = matched[item.bias]
            out_features = static_shape(matmul.args[1])[1]
            if dtype(chain.bias) != _chain_dtype(matmul) or \
                    static_shape(chain.bias) not in ((out_features,), (1, out_features)):
                return None
        return chain

    return claim(index, linear_patterns(), check)
