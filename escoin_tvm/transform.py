"""The Relax pass that dispatches sparse convolutions to generated Escoin kernels.

It finds ``relax.nn.conv2d`` calls (NCHW/OIHW, float32, static shapes) whose weight is a constant
with sparsity at or above the threshold, and replaces each by ``call_tir`` of a scheduled Escoin
PrimFunc with the CSR arrays as constants. A following bias ``add`` (a constant of shape
(1, O, 1, 1), which is also what FoldBatchnormToConv2D leaves behind) and ``relu`` are folded into
the kernel's epilogue when nothing else uses the intermediate values, and so is a following
``add`` of a same-shaped tensor (a ResNet shortcut) before the ``relu``. Everything else stays on
TVM's normal path. Each decision is recorded in ``pass.report``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tvm
from tvm import relax
from tvm.ir import Constant

from .errors import EscoinError
from .kernel import schedule_source, scheduled_module
from .target import is_gpu
from .operator import Epilogue, kernel_input_shape, reads_in_place
from .spec import Conv2dSpec
from .weight_format import EscoinWeight

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
ADD = tvm.ir.Op.get("relax.add")
RELU = tvm.ir.Op.get("relax.nn.relu")
OPAQUE = 8  # relay/relax OpPatternKind.kOpaque: FuseOps must leave the scheduled kernel alone


@dataclass
class LayerDecision:
    """One conv2d of the model and what the pass did with it."""

    name: str
    input_shape: tuple
    weight_shape: tuple
    stride: tuple = ()
    padding: tuple = ()
    groups: int = 1
    sparsity: float = 0.0
    nnz: int = 0
    kernel: str = "dense"
    reason: str = ""
    epilogue: str = ""
    schedule: str = ""  # where the kernel's knobs came from: tuned, pre-tuned, default, given
    escoin_us: Optional[float] = None  # measured dispatch: the layer timed both ways
    dense_us: Optional[float] = None
    config: dict = field(default_factory=dict)


@dataclass
class EscoinKernel:
    """A kernel the pass generated (what tuning extracts as a task)."""

    layer: str
    spec: Conv2dSpec
    weight: EscoinWeight
    epilogue: Epilogue


def _static_shape(expr) -> Optional[tuple]:
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _dtype(expr) -> str:
    return str(getattr(expr.ty, "dtype", ""))


@tvm.transform.module_pass(opt_level=0, name="EscoinSparseConv2d")
class SparseConv2dDispatch:
    """``SparseConv2dDispatch(target, threshold)``: a Relax module pass (usable inside
    ``tvm.transform.Sequential``). ``layer_names`` ((name, weight shape) pairs) labels the
    conv2d calls, in program order, in the report; ``choose`` may veto a layer (returns a reason
    string to keep it dense, e.g. the measured dispatch of later issues); ``config_for`` picks
    schedule knobs per layer; ``tuning_log`` (a ``tuning.TuningLog``) supplies tuned knobs for
    the kernels it has records of. The pre-tuned table, then the heuristic default, cover the
    rest. With ``measure`` (a ``measure.LayerTimer``), a layer that passes the threshold is timed
    both ways on the device and takes the faster path. ``report_only`` keeps every layer dense
    (a baseline)."""

    def __init__(self, target, threshold: float, layer_names: Sequence[str] = (),
                 config_for: Optional[Callable[[Conv2dSpec], object]] = None, tuning_log=None,
                 measure=None, report_only: bool = False):
        if not 0.0 <= threshold <= 1.0:
            raise EscoinError(f"sparsity threshold must be in [0, 1], got {threshold}")
        self.target = target
        self.threshold = threshold
        self.layer_names = list(layer_names)
        self.config_for = config_for
        self.tuning_log = tuning_log
        self.measure = measure
        self.report_only = report_only  # the plain-TVM baseline: decide and report, change nothing
        self.report: List[LayerDecision] = []
        self.kernels: List[EscoinKernel] = []

    # ---- the module pass ----
    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        self.report, self.kernels = [], []
        builder = relax.BlockBuilder(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                builder.update_func(gvar, self._rewrite_function(func, builder))
        return builder.get()

    def _rewrite_function(self, func: relax.Function, builder) -> relax.Function:
        if not isinstance(func.body, relax.SeqExpr):
            return func
        uses = Counter()
        for block in func.body.blocks:
            for binding in block.bindings:
                uses.update(relax.analysis.free_vars(binding.value))
        uses.update(relax.analysis.free_vars(func.body.body))
        blocks = [self._rewrite_block(block, uses, builder) for block in func.body.blocks]
        body = relax.SeqExpr(blocks, func.body.body)
        return relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)

    def _rewrite_block(self, block, uses: Counter, builder):
        bindings = list(block.bindings)
        value_of: Dict[relax.Var, relax.Expr] = {b.var: b.value for b in bindings
                                                 if isinstance(b, relax.VarBinding)}
        position = {b.var: i for i, b in enumerate(bindings)}
        replaced: Dict[relax.Var, list] = {}  # binding var -> the bindings that replace it
        dropped = set()  # intermediate vars folded into a kernel
        for binding in bindings:
            value = binding.value
            if not (isinstance(binding, relax.VarBinding) and isinstance(value, relax.Call)
                    and value.op.same_as(CONV2D)):
                continue
            decision = self._decide(value)
            self.report.append(decision)
            if decision.kernel == "escoin" and self.measure is not None \
                    and not self._dense_is_wrong(decision.weight_shape):
                self._measure(value, decision)
            if decision.kernel != "escoin":
                continue
            # Fold a single-use bias add, a single-use add of a same-shaped tensor (a residual
            # shortcut), then a single-use relu, into the epilogue.
            last, bias, residual, relu = binding.var, None, None, False
            consumer = self._single_consumer(last, bindings, uses)
            if consumer is not None and value_of[consumer].op.same_as(ADD):
                bias = self._bias_constant(value_of[consumer], last, decision.weight_shape[0])
                if bias is not None:
                    dropped.add(last)
                    last = consumer
                    consumer = self._single_consumer(last, bindings, uses)
            if consumer is not None and value_of[consumer].op.same_as(ADD):
                residual = self._residual(value_of[consumer], last, position, position[binding.var])
                if residual is not None:
                    dropped.add(last)
                    last = consumer
                    consumer = self._single_consumer(last, bindings, uses)
            if consumer is not None and value_of[consumer].op.same_as(RELU):
                dropped.add(last)
                last, relu = consumer, True
            epilogue = Epilogue(bias is not None, relu, residual is not None)
            decision.epilogue = epilogue.name
            replaced[last] = self._escoin_bindings(last, value, bias, residual, epilogue,
                                                   decision, builder,
                                                   isinstance(block, relax.DataflowBlock))
        if not replaced:
            return block
        new_bindings = []
        for binding in bindings:
            if binding.var in dropped:
                continue
            new_bindings.extend(replaced.get(binding.var, [binding]))
        cls = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        return cls(new_bindings)

    def _dense_is_wrong(self, weight_shape) -> bool:
        """A one-tap convolution on CUDA: TVM 0.27's fused code for a reduction of one element
        applies the epilogue twice (see workarounds.py), so it must not stay dense."""
        return is_gpu(self.target) and int(np.prod(weight_shape[1:])) == 1

    def _measure(self, conv: relax.Call, decision: LayerDecision) -> None:
        escoin_s, dense_s = self.measure(conv, lambda: SparseConv2dDispatch(
            self.target, 0.0, config_for=self.config_for, tuning_log=self.tuning_log))
        decision.escoin_us, decision.dense_us = escoin_s * 1e6, dense_s * 1e6
        if dense_s < escoin_s:
            decision.kernel = "dense"
            decision.reason = (f"measured: dense {dense_s * 1e6:.1f} us < escoin "
                               f"{escoin_s * 1e6:.1f} us")
        else:
            decision.reason = (f"measured: escoin {escoin_s * 1e6:.1f} us, dense "
                               f"{dense_s * 1e6:.1f} us ({dense_s / escoin_s:.2f}x)")

    @staticmethod
    def _single_consumer(var, bindings, uses: Counter):
        """The binding var whose value is the only use of ``var`` (a Call), else None."""
        if uses[var] != 1:
            return None
        for binding in bindings:
            if isinstance(binding, relax.VarBinding) and isinstance(binding.value, relax.Call) \
                    and any(arg.same_as(var) for arg in binding.value.args):
                return binding.var
        return None

    @staticmethod
    def _bias_constant(add: relax.Call, conv_var, out_channels: int) -> Optional[np.ndarray]:
        lhs, rhs = add.args
        const = rhs if lhs.same_as(conv_var) else lhs
        if not isinstance(const, Constant) or _dtype(const) != "float32":
            return None
        value = const.value.numpy()
        if value.shape not in ((1, out_channels, 1, 1), (out_channels, 1, 1)):
            return None
        return value.reshape(out_channels).astype(np.float32)

    @staticmethod
    def _residual(add: relax.Call, conv_var, position, conv_position: int) -> Optional[relax.Expr]:
        """The other operand of ``conv + other`` when it has the sum's own static shape and
        dtype (no broadcasting) and is computed before the convolution, else None. (Of two
        convolutions added together, only the later one takes the add: each would otherwise
        claim it.)"""
        lhs, rhs = add.args
        other = rhs if lhs.same_as(conv_var) else lhs
        if other.same_as(conv_var) or _dtype(other) != "float32" or \
                _static_shape(other) is None or _static_shape(other) != _static_shape(conv_var) or \
                position.get(other, -1) > conv_position:
            return None
        return other

    def _decide(self, call: relax.Call) -> LayerDecision:
        index = len(self.report)
        data, weight = call.args
        attrs = call.attrs
        name = f"conv2d_{index}"
        if index < len(self.layer_names) and self.layer_names[index][1] == _static_shape(weight):
            name = self.layer_names[index][0]
        decision = LayerDecision(name, _static_shape(data) or (), _static_shape(weight) or (),
                                 tuple(int(s) for s in attrs.strides),
                                 tuple(int(p) for p in attrs.padding), int(attrs.groups))
        if not isinstance(weight, Constant):
            decision.reason = "weight is not a constant"
            return decision
        dense = weight.value.numpy()
        decision.nnz = int(np.count_nonzero(dense))
        decision.sparsity = 1.0 - decision.nnz / max(1, dense.size)
        layouts = (attrs.data_layout, attrs.kernel_layout, attrs.out_layout)
        out_dtype = "" if attrs.out_dtype is None else str(attrs.out_dtype)
        if layouts != ("NCHW", "OIHW", "NCHW"):
            decision.reason = f"layout {'/'.join(layouts)} (Escoin kernels are NCHW/OIHW)"
        elif (_dtype(data), _dtype(weight)) != ("float32", "float32") or \
                out_dtype not in ("float32", "", "void", "None"):
            decision.reason = (f"dtype {_dtype(data)} x {_dtype(weight)} -> {out_dtype or 'same'} "
                               "(Escoin kernels are float32)")
        elif not decision.input_shape:
            decision.reason = "input shape is not static"
        elif self.report_only:
            decision.reason = "Escoin pass off (dispatch_by='none')"
        elif self._dense_is_wrong(decision.weight_shape):
            decision.kernel = "escoin"
            decision.reason = "one-tap convolution: TVM 0.27's dense CUDA code for it is wrong"
        elif decision.sparsity < self.threshold:
            decision.reason = f"sparsity {decision.sparsity:.2f} < threshold {self.threshold:.2f}"
        else:
            decision.kernel = "escoin"
            decision.reason = f"sparsity {decision.sparsity:.2f} >= threshold {self.threshold:.2f}"
        return decision

    def _escoin_bindings(self, var: relax.Var, conv: relax.Call, bias, residual,
                         epilogue: Epilogue, decision: LayerDecision, builder,
                         dataflow: bool) -> list:
        """The bindings that compute ``var`` with an Escoin kernel: its call_tir, after a
        (copy-free) flattening reshape of the input when the kernel reads it in place, and a
        subsampling of the input first when the layer is a strided 1x1 convolution."""
        attrs = conv.attrs
        weight = conv.args[1].value.numpy()
        spec = Conv2dSpec.create(decision.input_shape, weight.shape,
                                 stride=tuple(int(s) for s in attrs.strides),
                                 padding=tuple(int(p) for p in attrs.padding),
                                 dilation=tuple(int(d) for d in attrs.dilation),
                                 groups=int(attrs.groups))
        bindings, data = [], conv.args[0]
        Var = relax.DataflowVar if dataflow else relax.Var

        def bind(name: str, value: relax.Expr, shape) -> relax.Var:
            bound = Var(f"{var.name}_{name}", relax.TensorType(shape, "float32"))
            bindings.append(relax.VarBinding(bound, value))
            return bound

        stride_one = spec.subsampled()
        if stride_one is not None:
            data = bind("subsampled", relax.op.strided_slice(
                data, axes=[2, 3], begin=[0, 0], end=[spec.height, spec.width],
                strides=list(spec.stride)), stride_one.input_shape)
            spec = stride_one
        escoin_weight = EscoinWeight.from_dense(weight, spec)
        self.kernels.append(EscoinKernel(decision.name, spec, escoin_weight, epilogue))
        config = self.config_for(spec) if self.config_for else None
        tuned, decision.schedule = False, "given" if config else schedule_source(spec, self.target)
        if config is None and self.tuning_log is not None:
            found = self.tuning_log.lookup(spec, escoin_weight, epilogue, self.target)
            if found is not None:
                (config, seconds), tuned = found, True
                decision.schedule = f"tuned ({seconds * 1e6:.1f} us)"
        mod, offsets, values, config = scheduled_module(spec, escoin_weight, epilogue, self.target,
                                                        config, tuned)
        decision.config = dict(vars(config))
        func = (mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                .with_attr("op_pattern", OPAQUE))
        gvar = builder.add_func(func, "escoin_conv2d")
        if reads_in_place(spec):
            data = bind("input", relax.op.reshape(data, kernel_input_shape(spec)),
                        kernel_input_shape(spec))
        args = [data, relax.const(offsets), relax.const(values)]
        if bias is not None:
            args.append(relax.const(bias))
        if residual is not None:
            args.append(residual)
        call = relax.call_tir(gvar, args, relax.TensorType(spec.output_shape, "float32"))
        return bindings + [relax.VarBinding(var, call)]
