"""The Relax pass that dispatches sparse convolutions to generated Escoin kernels.

Three steps, as in TVM's own pattern passes: the policy decides for every ``relax.nn.conv2d``
whether it goes sparse (``policy.py``; each decision is recorded in ``pass.report``); the
patterns find the epilogue each accepted convolution absorbs (``patterns.py``: bias, residual
add, relu); the rewriter below replaces each such chain by what the layer's kernel family
emits for it (``FAMILIES``; the family's ``relax_call``: ``call_tir`` of a scheduled PrimFunc
with the weight's arrays as constants). Everything else stays on TVM's normal path. The pass
rewrites dataflow blocks, which is where the PyTorch frontend puts the model.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence

import tvm
from tvm import relax

from ..errors import EscoinError
from ..kernels import conv2d, vector_sparse
from ..kernels.conv_spec import Conv2dSpec
from ..kernels.eligibility import checked_threshold
from ..kernels.family import KernelFamily
from .matching import bindings, decide_calls, rewrite_chains
from .patterns import Chain, match_chains
from .policy import DispatchPolicy, LayerDecision

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
# The kernel families this pass sends convolutions to, in order of preference: the tensor-core
# one takes only the layers it is measured to run faster (its ``eligibility.py``).
FAMILIES = (vector_sparse.FAMILY, conv2d.FAMILY)


@tvm.transform.module_pass(opt_level=0, name="EscoinSparseConv2d")
class SparseConv2dDispatch:
    """``SparseConv2dDispatch(target, threshold)``: a Relax module pass (usable inside
    ``tvm.transform.Sequential``). ``layer_names`` ((name, weight shape) pairs) labels the
    conv2d calls, in program order, in the report; ``config_for`` picks schedule knobs per
    layer; ``tuning_log`` (a ``tuning.TuningLog``) supplies tuned knobs for the kernels it has
    records of; the pre-tuned table, then the heuristic default, cover the rest. With
    ``measure`` (a ``measure.LayerTimer``), a layer that passes the threshold is timed both ways
    on the device and goes sparse only where it is ``MEASURED_MARGIN`` faster. ``report_only``
    keeps every layer dense (a baseline). ``on_layer()`` is called after each conv2d's decision
    (a progress display). ``families``: the kernel families it may use, in order of
    preference (measured dispatch times a layer with each family that takes it)."""

    def __init__(self, target, threshold: float, layer_names: Sequence = (),
                 config_for: Optional[Callable[[Conv2dSpec], object]] = None, tuning_log=None,
                 measure=None, report_only: bool = False,
                 on_layer: Optional[Callable[[], None]] = None,
                 families: Sequence[KernelFamily] = FAMILIES):
        threshold = checked_threshold(threshold, "sparsity threshold")
        self.target = target
        self.on_layer = on_layer  # called after each conv2d's decision (progress)
        self.config_for = config_for
        self.tuning_log = tuning_log
        self.policy = DispatchPolicy(
            target, threshold, families, layer_names, report_only, measure,
            lambda family: SparseConv2dDispatch(target, 0.0, config_for=config_for,
                                                tuning_log=tuning_log, families=(family,)))
        self.report: List[LayerDecision] = []
        self.kernels: list = []  # the families' kernel records (tuning tasks)
        self.error: Optional[EscoinError] = None

    def transform_module(self, mod: tvm.IRModule, ctx) -> tvm.IRModule:
        """The pass. An EscoinError it raises is also kept as ``self.error``: TVM turns it into
        a RuntimeError on its way out of a pass, and the caller can raise the original."""
        self.error = None
        try:
            return self._transform(mod)
        except EscoinError as err:
            self.error = self.error or err
            raise

    def _transform(self, mod: tvm.IRModule) -> tvm.IRModule:
        self.report, self.kernels = [], []
        layer_of, position = self._decide(mod)
        if not layer_of:
            return mod
        kernels = []  # (report index, the family's kernel record)

        def lower(chain: Chain, rewriter) -> relax.Expr:
            decision = self.report[chain.layer]
            residual = None if chain.residual is None else rewriter.visit_expr(chain.residual)
            bias = None if chain.bias is None else chain.bias.value.numpy()
            lowered = self.policy.chosen[chain.layer].relax_call(
                rewriter.builder_, rewriter.visit_expr(chain.conv.args[0]), chain.conv, bias,
                residual, chain.epilogue, decision.name, decision.input_shape, self.target,
                self.config_for, self.tuning_log)
            decision.schedule, decision.config = lowered.schedule, lowered.config
            decision.epilogue = lowered.epilogue
            kernels.append((chain.layer, lowered.kernel))
            return lowered.call

        mod = rewrite_chains(mod, lambda func: match_chains(func, layer_of.get, position), lower)
        self.kernels = [kernel for _, kernel in sorted(kernels, key=lambda p: p[0])]
        return mod

    def _decide(self, mod: tvm.IRModule):
        """The policy's decision for every conv2d, in program order (``self.report``). Returns
        the report index of each conv2d call that goes to a kernel family, and the position of
        every binding of the module."""
        layer_of = decide_calls(mod, CONV2D, self.policy.decide, self.report, self.on_layer)
        position = {binding.var: i for i, (_, binding) in enumerate(bindings(mod))}
        return layer_of, position
