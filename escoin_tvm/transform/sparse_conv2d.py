"""The Relax pass that dispatches sparse convolutions to generated Escoin kernels.

Three steps, as in TVM's own pattern passes: the policy decides for every ``relax.nn.conv2d``
whether it goes sparse (``policy.py``; each decision is recorded in ``pass.report``); the
patterns find the epilogue each accepted convolution absorbs (``patterns.py``: bias, residual
add, relu); the rewriter below replaces each such chain by ``call_tir`` of a scheduled Escoin
PrimFunc, with the ELL arrays as constants. Everything else stays on TVM's normal path. The pass
rewrites dataflow blocks, which is where the PyTorch frontend puts the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import tvm
from tvm import relax

from ..errors import EscoinError
from ..kernel import schedule_choice, scheduled_module
from ..operator import Epilogue, kernel_input_shape, reads_in_place
from ..spec import Conv2dSpec
from ..weight_format import EscoinWeight
from .matching import bindings, decide_calls, rewrite_chains
from .patterns import Chain, match_chains
from .policy import DispatchPolicy, LayerDecision

CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
OPAQUE = 8  # relax OpPatternKind.kOpaque: FuseOps must leave the scheduled kernel alone


@dataclass
class EscoinKernel:
    """A kernel the pass generated (what tuning extracts as a task)."""

    layer: str
    spec: Conv2dSpec
    weight: EscoinWeight
    epilogue: Epilogue


@tvm.transform.module_pass(opt_level=0, name="EscoinSparseConv2d")
class SparseConv2dDispatch:
    """``SparseConv2dDispatch(target, threshold)``: a Relax module pass (usable inside
    ``tvm.transform.Sequential``). ``layer_names`` ((name, weight shape) pairs) labels the
    conv2d calls, in program order, in the report; ``config_for`` picks schedule knobs per
    layer; ``tuning_log`` (a ``tuning.TuningLog``) supplies tuned knobs for the kernels it has
    records of; the pre-tuned table, then the heuristic default, cover the rest. With
    ``measure`` (a ``measure.LayerTimer``), a layer that passes the threshold is timed both ways
    on the device and takes the faster path. ``report_only`` keeps every layer dense (a
    baseline). ``on_layer()`` is called after each conv2d's decision (a progress display)."""

    def __init__(self, target, threshold: float, layer_names: Sequence = (),
                 config_for: Optional[Callable[[Conv2dSpec], object]] = None, tuning_log=None,
                 measure=None, report_only: bool = False,
                 on_layer: Optional[Callable[[], None]] = None):
        if not 0.0 <= threshold <= 1.0:
            raise EscoinError(f"sparsity threshold must be in [0, 1], got {threshold}")
        self.target = target
        self.on_layer = on_layer  # called after each conv2d's decision (progress)
        self.config_for = config_for
        self.tuning_log = tuning_log
        self.policy = DispatchPolicy(
            target, threshold, layer_names, report_only, measure,
            lambda: SparseConv2dDispatch(target, 0.0, config_for=config_for,
                                         tuning_log=tuning_log))
        self.report: List[LayerDecision] = []
        self.kernels: List[EscoinKernel] = []
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
        kernels = []  # (report index, EscoinKernel)

        def lower(chain: Chain, rewriter) -> relax.Expr:
            residual = None if chain.residual is None else rewriter.visit_expr(chain.residual)
            call, kernel = self.kernel_call(
                rewriter.builder_, rewriter.visit_expr(chain.conv.args[0]), chain.conv,
                chain.bias, residual, chain.epilogue, self.report[chain.layer])
            kernels.append((chain.layer, kernel))
            return call

        mod = rewrite_chains(mod, lambda func: match_chains(func, layer_of.get, position), lower)
        self.kernels = [kernel for _, kernel in sorted(kernels, key=lambda p: p[0])]
        return mod

    def _decide(self, mod: tvm.IRModule):
        """The policy's decision for every conv2d, in program order (``self.report``). Returns
        the report index of each conv2d call that goes to an Escoin kernel, and the position of
        every binding of the module."""
        layer_of = decide_calls(mod, CONV2D, self.policy.decide, self.report, self.on_layer)
        position = {binding.var: i for i, (_, binding) in enumerate(bindings(mod))}
        return layer_of, position

    def kernel_call(self, builder, data, conv: relax.Call, bias, residual, epilogue: Epilogue,
                    decision: LayerDecision):
        """Emits what computes ``conv`` + epilogue with an Escoin kernel: a strided slice of
        the input first when the layer is a strided 1x1 convolution (``Conv2dSpec.subsampled``),
        a copy-free flattening reshape when the kernel reads its input in place, then the
        kernel's call_tir (returned, not emitted). Returns (call, the EscoinKernel)."""
        attrs = conv.attrs
        weight = conv.args[1].value.numpy()
        spec = Conv2dSpec.create(decision.input_shape, weight.shape,
                                 stride=tuple(int(s) for s in attrs.strides),
                                 padding=tuple(int(p) for p in attrs.padding),
                                 dilation=tuple(int(d) for d in attrs.dilation),
                                 groups=int(attrs.groups))
        stride_one = spec.subsampled()
        if stride_one is not None:
            data = builder.emit(relax.op.strided_slice(
                data, axes=[2, 3], begin=[0, 0], end=[spec.height, spec.width],
                strides=list(spec.stride)), "subsampled")
            spec = stride_one
        escoin_weight = EscoinWeight.from_dense(weight, spec)
        config, tuned, decision.schedule = schedule_choice(
            spec, escoin_weight, epilogue, self.target,
            self.config_for(spec) if self.config_for else None, self.tuning_log)
        mod, offsets, values, config = scheduled_module(spec, escoin_weight, epilogue, self.target,
                                                        config, tuned)
        decision.epilogue, decision.config = epilogue.name, dict(vars(config))
        func = (mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                .with_attr("op_pattern", OPAQUE))
        gvar = builder.add_func(func, "escoin_conv2d")
        if reads_in_place(spec):
            data = builder.emit(relax.op.reshape(data, kernel_input_shape(spec)), "input")
        args = [data, relax.const(offsets), relax.const(values)]
        if bias is not None:  # the epilogue adds it in float32
            args.append(relax.const(bias.value.numpy().reshape(spec.out_channels)
                                    .astype("float32")))
        if residual is not None:
            args.append(residual)
        call = relax.call_tir(gvar, args, relax.TensorType(spec.output_shape, escoin_weight.dtype))
        return call, EscoinKernel(decision.name, spec, escoin_weight, epilogue)
