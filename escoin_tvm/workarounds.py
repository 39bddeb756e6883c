"""Work-arounds for TVM 0.27 bugs that would otherwise crash or return wrong results.

A reduction of extent one fused with an elementwise epilogue (a Linear with one input feature
plus its bias, a one-tap convolution plus bias/ReLU) gets CUDA code from TVM's default GPU
schedule that applies the epilogue twice: ``out = b + (b + x * w)``
(experiments/debug/trivial_reduction_gpu_bug.py; found by the pipeline property tests on an
H100). Such products are rewritten here without a reduction, which is exact: matmuls with one
contraction element become broadcast multiplies, and so do the one-tap convolutions that are
still dense after the Escoin pass (those whose weight is not a constant; the pass sends constant
ones to Escoin kernels).
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

MATMUL = tvm.ir.Op.get("relax.matmul")
CONV2D = tvm.ir.Op.get("relax.nn.conv2d")


def _static(expr):
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


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
