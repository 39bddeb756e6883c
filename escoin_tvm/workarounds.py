"""Work-arounds for TVM 0.27 bugs that would otherwise crash or return wrong results.

A reduction of extent one fused with an elementwise epilogue (a Linear with one input feature
plus its bias, a one-tap convolution plus bias/ReLU) gets CUDA code from TVM's default GPU
schedule that applies the epilogue twice: ``out = b + (b + x * w)``
(experiments/debug/trivial_reduction_gpu_bug.py; found by the pipeline property tests on an
H100). Matmuls with one contraction element become broadcast multiplies here, which is exact;
one-tap convolutions are sent to the Escoin kernel by the dispatch pass.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

MATMUL = tvm.ir.Op.get("relax.matmul")


def _static(expr):
    shape = getattr(expr.ty, "shape", None)
    if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
        return None
    return [int(d) for d in shape]


@mutator
class _MatmulK1ToMultiply(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if isinstance(call, relax.Call) and call.op.same_as(MATMUL):
            lhs, rhs = _static(call.args[0]), _static(call.args[1])
            if lhs and rhs and len(lhs) >= 2 and len(rhs) >= 2 and lhs[-1] == 1 and rhs[-2] == 1:
                dtype = call.attrs.out_dtype if call.attrs is not None else None
                product = relax.op.multiply(call.args[0], call.args[1])
                if dtype is not None and str(dtype) not in ("", "void", str(call.args[0].ty.dtype)):
                    product = relax.op.astype(product, dtype)
                return product
        return call


@tvm.transform.module_pass(opt_level=0, name="EscoinMatmulK1ToMultiply")
def matmul_k1_to_multiply(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """(..., N, 1) @ (..., 1, M) -> broadcast multiply (the same values, no reduction)."""
    rewriter = _MatmulK1ToMultiply(mod)
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function):
            rewriter.builder_.update_func(gvar, rewriter.visit_expr(func))
    return rewriter.builder_.get()
