"""Which convolutions go sparse: the dispatch policy of the Escoin pass.

A conv2d goes to an Escoin kernel when its weight is a constant, the kernels implement it (the
family's ``problem``: NCHW/OIHW; float32, float16 or bfloat16; static shapes) and its weight's
sparsity reaches the threshold (``kernels/eligibility.py``, shared with the torch.compile
backend). With a
``measure`` timer, such a layer is also timed both ways on the device and goes sparse only where
it is ``MEASURED_MARGIN`` faster (``kernels/eligibility.py``), and a layer that stays dense is
timed on TVM's dense code, so that the report says what it costs.
Every convolution gets a ``LayerDecision``, taken or not: the pass's report.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
from tvm import relax
from tvm.ir import Constant

from ..kernels.eligibility import MEASURED_MARGIN, LayerFacts, beats_dense, sparse_enough
from ..kernels.family import KernelFamily, choose, passed_over, takers
from ..kernels.vector_sparse.weight_format import block_density
from ..support.target import is_gpu
from .tensor_types import dtype, static_shape


@dataclass
class LayerDecision:
    """One conv2d of the model and what the pass did with it."""

    name: str
    input_shape: tuple
    weight_shape: tuple  # OIHW for a convolution, (out_features, in_features) for a linear
    stride: tuple = ()
    padding: tuple = ()
    groups: int = 1
    dtype: str = "float32"
    sparsity: float = 0.0
    nnz: int = 0
    kernel: str = "dense"
    reason: str = ""
    epilogue: str = ""
    schedule: str = ""  # where the kernel's knobs came from: tuned, pre-tuned, default, given
    escoin_us: Optional[float] = None  # measured dispatch: the layer timed both ways, or
    dense_us: Optional[float] = None  # only dense where it stays dense
    config: dict = field(default_factory=dict)
    op: str = "conv2d"  # or "linear"


def _count_zeros(decision: LayerDecision, weight: Constant) -> None:
    dense = weight.value.numpy()
    decision.nnz = int(np.count_nonzero(dense))
    decision.sparsity = 1.0 - decision.nnz / max(1, dense.size)


def _out_dtype(call: relax.Call) -> str:
    return "" if call.attrs.out_dtype is None else str(call.attrs.out_dtype)


def dense_is_wrong(target, weight_shape) -> bool:
    """A one-tap convolution on CUDA: TVM 0.27's fused code for a reduction of one element
    applies the epilogue twice (see workarounds.py), so it must not stay dense."""
    return is_gpu(target) and int(np.prod(weight_shape[1:])) == 1


class DispatchPolicy:
    """``policy.decide(conv_call, index)`` -> the LayerDecision of the ``index``-th conv2d.

    ``families`` are the kernel families the layers may go to, in order of preference: a layer
    goes to the first that takes it (``chosen[index]``). ``layer_names`` ((module path, weight
    shape) pairs, in program order) names the layers; ``report_only`` keeps every layer dense
    (the plain-TVM baseline); ``measure`` (a ``measure.LayerTimer``) times a layer that passes
    the threshold both ways for each family that takes it, the Escoin side built by the pass
    ``make_escoin_pass(family)`` returns (one that sends layers to ``family`` alone), and the
    layer goes to the fastest family if that one is ``MEASURED_MARGIN`` faster than dense."""

    def __init__(self, target, threshold: float, families: Sequence[KernelFamily],
                 layer_names: Sequence = (), report_only: bool = False, measure=None,
                 make_escoin_pass: Optional[Callable] = None):
        self.target = target
        self.threshold = threshold
        self.families = tuple(families)
        self.layer_names = list(layer_names)
        self.report_only = report_only
        self.measure = measure
        self.make_escoin_pass = make_escoin_pass
        self.chosen: Dict[int, KernelFamily] = {}
        self.takers: Dict[int, Tuple[KernelFamily, ...]] = {}  # every family that takes it

    def decide(self, call: relax.Call, index: int) -> LayerDecision:
        decision = self._static_decision(call, index)
        if self.measure is None or self._must_take(decision):
            return decision
        if decision.kernel != "dense":
            self._measure(call, decision, index)
        elif isinstance(call.args[1], Constant) and decision.input_shape:
            # what the layer costs on TVM's dense code, for the report
            decision.dense_us = self.measure.dense(call) * 1e6
        return decision

    def _name(self, index: int, weight_shape, prefix: str = "conv2d") -> str:
        if index < len(self.layer_names) and self.layer_names[index][1] == weight_shape:
            return self.layer_names[index][0]
        return f"{prefix}_{index}"

    def _family_decision(self, decision: LayerDecision, index: int,
                         facts: LayerFacts) -> LayerDecision:
        """The path's and the families' checks, then the threshold."""
        family, problem = choose(self.families, facts)
        if family is None:
            decision.reason = problem
        elif self.report_only:
            decision.reason = "Escoin pass off (dispatch_by='none')"
        elif self._must_take(decision):
            decision.kernel = family.name
            decision.reason = "one-tap convolution: TVM 0.27's dense CUDA code for it is wrong"
        else:
            taken, decision.reason = sparse_enough(decision.sparsity, self.threshold)
            if taken:
                decision.kernel = family.name
                if facts.on_gpu:  # where the tensor-core family could have run it
                    decision.reason += passed_over(self.families, family, facts)
        if decision.kernel != "dense":
            self.chosen[index] = family
            self.takers[index] = takers(self.families, facts)
        return decision

    def _must_take(self, decision: LayerDecision) -> bool:
        """A layer that must not stay dense (``dense_is_wrong``)."""
        return dense_is_wrong(self.target, decision.weight_shape)

    def _static_decision(self, call: relax.Call, index: int) -> LayerDecision:
        data, weight = call.args
        attrs = call.attrs
        decision = LayerDecision(self._name(index, static_shape(weight)),
                                 static_shape(data) or (), static_shape(weight) or (),
                                 tuple(int(s) for s in attrs.strides),
                                 tuple(int(p) for p in attrs.padding), int(attrs.groups),
                                 dtype(data))
        if not isinstance(weight, Constant):
            decision.reason = "weight is not a constant"
            return decision
        _count_zeros(decision, weight)
        on_gpu = is_gpu(self.target)  # the tensor-core family's platform: its facts then
        blocks = block_density(weight.value.numpy(), int(attrs.groups)) \
            if on_gpu and len(decision.weight_shape) == 4 else None
        return self._family_decision(decision, index, LayerFacts(
            "conv2d", static_shape(data), decision.weight_shape, dtype(data), dtype(weight),
            _out_dtype(call), (attrs.data_layout, attrs.kernel_layout, attrs.out_layout),
            on_gpu, blocks))

    def _measure(self, call: relax.Call, decision: LayerDecision, index: int) -> None:
        """Times the layer both ways for each family that takes it; the fastest family (the
        preferred one on a tie) keeps it if it beats dense by ``MEASURED_MARGIN``."""
        times = {family: self.measure(call, lambda family=family: self.make_escoin_pass(family),
                                      family.name)
                 for family in self.takers[index]}
        best = min(times, key=lambda family: times[family][0])
        escoin_s, dense_s = times[best]
        decision.escoin_us, decision.dense_us = escoin_s * 1e6, dense_s * 1e6
        others = "".join(f"; {family.name} {seconds * 1e6:.1f} us"
                         for family, (seconds, _) in times.items() if family is not best)
        if not beats_dense(escoin_s, dense_s):
            decision.kernel = "dense"
            del self.chosen[index]
            decision.reason = (f"measured: {best.name} {escoin_s * 1e6:.1f} us, not "
                               f"{MEASURED_MARGIN:.0%} under dense {dense_s * 1e6:.1f} us"
                               f"{others}")
        else:
            self.chosen[index], decision.kernel = best, best.name
            decision.reason = (f"measured: {best.name} {escoin_s * 1e6:.1f} us, dense "
                               f"{dense_s * 1e6:.1f} us ({dense_s / escoin_s:.2f}x){others}")


class LinearPolicy(DispatchPolicy):
    """The policy for ``relax.matmul(x, W.T)`` with a constant (K, N) right-hand side (what a
    Linear becomes), the layers the sparse linear family implements (``linear.problem``)."""

    def _must_take(self, decision: LayerDecision) -> bool:
        return False

    def _static_decision(self, call: relax.Call, index: int) -> LayerDecision:
        data, weight_t = call.args
        shape_t = static_shape(weight_t)
        weight_shape = (shape_t[1], shape_t[0]) if shape_t and len(shape_t) == 2 else ()
        decision = LayerDecision(self._name(index, weight_shape, "linear"),
                                 static_shape(data) or (), weight_shape, dtype=dtype(data),
                                 op="linear")
        if not isinstance(weight_t, Constant):
            decision.reason = "weight is not a constant"
            return decision
        _count_zeros(decision, weight_t)
        on_gpu = is_gpu(self.target)  # the tensor-core family's platform: its facts then
        blocks = block_density(weight_t.value.numpy().T) if on_gpu and weight_shape else None
        return self._family_decision(decision, index, LayerFacts(
            "linear", static_shape(data), weight_shape, dtype(data), dtype(weight_t),
            _out_dtype(call), on_gpu=on_gpu, block_density=blocks))
