"""Work-arounds for TVM 0.27 bugs that would otherwise crash or return wrong results.

Each names the reproduction of its bug under ``experiments/tvm_bugs/``.

**Adaptive average pools that resize** (e.g. 1x1 -> 6x6 or 13x13 -> 6x6): TVM's default CUDA code
for them segfaults at run time (``adaptive_pool_gpu_crash.py``); ``refuse_known_tvm_crashes``
refuses such a model for CUDA at compile time instead of letting the process die.

**Reductions of extent one** (``trivial_reduction_gpu_bug.py``): a reduction of extent one
fused with an elementwise epilogue (a Linear with one input feature plus its bias, a one-tap
convolution plus bias/ReLU) gets CUDA code from TVM's default GPU schedule that applies the
epilogue twice: ``out = b + (b + x * w)``. ``trivial_reductions_to_multiply`` rewrites such
products without a reduction, which is exact: matmuls with one contraction element become
broadcast multiplies, and so do the one-tap convolutions that are still dense after the Escoin
pass (those whose weight is not a constant; the pass sends constant ones to Escoin kernels).
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .errors import EscoinError
from .target import is_gpu
from .transform.tensor_types import static_shape

MATMUL = tvm.ir.Op.get("relax.matmul")
CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
ADAPTIVE_POOL = tvm.ir.Op.get("relax.nn.adaptive_avg_pool2d")


def refuse_known_tvm_crashes(mod: tvm.IRModule, target) -> None:
    """Raises an EscoinError, naming the layer's sizes, for a model that TVM's CUDA code
    would crash on: an adaptive average pool that resizes."""
    if not is_gpu(target):
        return
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                if isinstance(call, relax.Call) and call.op.same_as(ADAPTIVE_POOL):
                    src = [int(d) for d in call.args[0].ty.shape][2:]
                    dst = [int(d) for d in binding.var.ty.shape][2:]
                    if src != dst:
                        raise EscoinError(
                            f"the model has an adaptive average pool from {src[0]}x{src[1]} to "
                            f"{dst[0]}x{dst[1]}, and TVM 0.27's CUDA code for it crashes; use an "
                            "input size at which the pool keeps the size (224x224 for "
                            "torchvision's AlexNet and VGG) or target='llvm'")


def _static(expr):
    shape = static_shape(expr)
    return None if shape is None else list(shape)


def _cast(product, dtype, like):
    if dtype is not None and str(dtype) not in ("", "void", str(like.ty.dtype)):
        return relax.op.astype(product, dtype)
    return product


def _matmul_as_multiply(call):
    lhs, rhs = _static(call.args[0]), _static(call.args[1])
    if lhs and rhs and len(lhs) >= 2 and len(rhs) >= 2 and lhs[-1] == 1 and rhs[-2] == 1:
        dtype = call.attrs.out_dtype if call.attrs is not None else None
        return _cast(relax.op.multiply(call.args[0], call.args[1]), dtype, call.args[0])
    return None


def _conv_as_multiply(call):
    """A one-tap NCHW/OIHW conv2d (weight (K, 1, 1, 1), so groups == in_channels):
    out[n, k, y, x] = padded[n, k // m, y * sh, x * sw] * w[k], m = K / groups."""
    attrs = call.attrs
    data, weight = call.args
    shape, wshape = _static(data), _static(weight)
    if (shape is None or wshape is None or attrs.data_layout != "NCHW"
            or attrs.kernel_layout != "OIHW" or attrs.out_layout not in ("", "NCHW")
            or wshape[1:] != [1, 1, 1]):
        return None
    top, left, bottom, right = (int(p) for p in attrs.padding)
    sh, sw = (int(s) for s in attrs.strides)
    x = data
    if top or left or bottom or right:
        x = relax.op.nn.pad(x, [0, 0, 0, 0, top, bottom, left, right])
    if sh > 1 or sw > 1:
        x = relax.op.strided_slice(x, [2, 3], [0, 0], [shape[2] + top + bottom,
                                                        shape[3] + left + right], [sh, sw])
    if wshape[0] != shape[1]:  # channel multiplier m: each input channel feeds m outputs
        x = relax.op.repeat(x, wshape[0] // shape[1], axis=1)
    w = relax.op.reshape(weight, [1, wshape[0], 1, 1])
    return _cast(relax.op.multiply(x, w), attrs.out_dtype, data)


@mutator
class _TrivialReductionsToMultiply(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call, relax.Call):
            rewrite = (_matmul_as_multiply if call.op.same_as(MATMUL) else
                       _conv_as_multiply if call.op.same_as(CONV2D) else None)
            product = rewrite(call) if rewrite else None
            if product is not None:
                return product
        return call


@tvm.transform.module_pass(opt_level=0, name="EscoinTrivialReductionsToMultiply")
def trivial_reductions_to_multiply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Matmuls with one contraction element and one-tap convolutions -> broadcast multiplies
    (the same values, no reduction)."""
    rewriter = _TrivialReductionsToMultiply(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()
