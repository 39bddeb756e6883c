"""Work-arounds for TVM 0.27 bugs that would otherwise crash or return wrong results.

Each names the reproduction of its bug under ``experiments/tvm_bugs/``.

**Adaptive average pools that resize** (e.g. 1x1 -> 6x6 or 13x13 -> 6x6): TVM's default CUDA code
for them segfaults at run time (``adaptive_pool_gpu_crash.py``); ``refuse_known_tvm_crashes``
refuses such a model for CUDA at compile time instead of letting the process die.

**Half precision in TVM's PyTorch frontend**: it gives every conv2d, linear and matmul
``out_dtype="float32"``, so a float16 or bfloat16 model's first such layer turns the rest of the
graph into a type error (a half bias added to a float32 result). ``frontend_convert_map``
converts them in the model's own dtype; float32 models convert exactly as before. Relax's
``FoldBatchnormToConv2D`` then adds a float32 epsilon to a half variance and fails, and a
half batch norm it does not fold (after a biased convolution, a ReLU or a flatten) legalizes to
a float32 result: ``fold_batch_norms`` folds every such batch norm first (in float32,
rounded once), and also a float32 batch norm after a biased convolution, which
``FoldBatchnormToConv2D`` does not match.

**Reductions of extent one** (``trivial_reduction_gpu_bug.py``): a reduction of extent one
fused with an elementwise epilogue (a Linear with one input feature plus its bias, a one-tap
convolution plus bias/ReLU) gets CUDA code from TVM's default GPU schedule that applies the
epilogue twice: ``out = b + (b + x * w)``. ``trivial_reductions_to_multiply`` rewrites such
products without a reduction, which is exact: matmuls with one contraction element become
broadcast multiplies, and so do the one-tap convolutions that are still dense after the Escoin
pass (those whose weight is not a constant; the pass sends constant ones to Escoin kernels).

**Cross-thread reductions lose their bounds check** (``cross_thread_reduction_store_bug.py``):
the final store of an rfactor + warp-shuffle reduction is guarded only by ``threadIdx.x == 0``,
not by its block's predicate, so a thread block whose rows run past the output writes into the
next row (a race: wrong on some runs only). The sparse linear GPU schedule reduces into a local
buffer and stores through an epilogue block, which keeps its predicate (``kernels/linear/operator.py``,
``output_block``).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from .errors import EscoinError
from .support.target import is_gpu
from .transform.matching import bindings
from .transform.tensor_types import static_shape

MATMUL = tvm.ir.Op.get("relax.matmul")
CONV2D = tvm.ir.Op.get("relax.nn.conv2d")
ADAPTIVE_POOL = tvm.ir.Op.get("relax.nn.adaptive_avg_pool2d")


def refuse_known_tvm_crashes(mod: tvm.IRModule, target) -> None:
    """Raises an EscoinError, naming the layer's sizes, for a model that TVM's CUDA code
    would crash on: an adaptive average pool that resizes."""
    if not is_gpu(target):
        return
    for _block, binding in bindings(mod):
        call = binding.value
        if isinstance(call, relax.Call) and call.op.same_as(ADAPTIVE_POOL):
            src = [int(d) for d in call.args[0].ty.shape][2:]
            dst = [int(d) for d in binding.var.ty.shape][2:]
            if src != dst:
                raise EscoinError(
                    f"the model has an adaptive average pool from {src[0]}x{src[1]} to "
                    f"{dst[0]}x{dst[1]}, and TVM 0.27's CUDA code for it crashes; use an input "
                    "size at which the pool keeps the size (224x224 for torchvision's AlexNet "
                    "and VGG) or target='llvm'")


def frontend_convert_map() -> dict:
    """``custom_convert_map`` entries for ``from_exported_program``: convolutions (2-D, not
    transposed) of half-precision tensors keep their dtype, linear layers and matrix products
    accumulate in float32 and round to it, a max pool without a stride takes its kernel size,
    a half-precision batch norm with float32 parameters runs in float32; everything else
    converts as TVM converts it."""
    from functools import partial
    import operator

    from torch import fx

    matmul32 = partial(relax.op.linear_algebra.matmul, out_dtype="float32")

    def half(expr) -> bool:
        return str(getattr(expr.ty, "dtype", "float32")) in ("float16", "bfloat16")

    def convolution(node, importer, transposed_at):
        args = importer.retrieve_args(node)
        x = args[0]
        transposed = transposed_at is not None and len(args) > transposed_at and \
            args[transposed_at]
        if not half(x) or len(x.ty.shape) != 4 or transposed:
            return (importer._convolution if transposed_at is not None else
                    importer._conv2d)(node)
        groups_at = 8 if transposed_at is not None else 6
        weight, bias = args[1], args[2] if len(args) > 2 else None
        stride, padding, dilation = (args[i] if len(args) > i else d
                                     for i, d in ((3, 1), (4, 0), (5, 1)))
        groups = args[groups_at] if len(args) > groups_at else 1
        conv = importer.block_builder.emit(relax.op.nn.conv2d(
            x, weight, strides=stride, padding=padding, dilation=dilation, groups=groups,
            data_layout="NCHW", kernel_layout="OIHW", out_dtype=str(x.ty.dtype)))
        if importer._is_no_bias(bias):
            return conv
        return importer.block_builder.emit(
            relax.op.add(conv, relax.op.reshape(bias, (1, -1, 1, 1))))

    def product(importer, lhs, rhs, dtype):
        """``lhs @ rhs`` accumulated in float32 (as cuBLAS does), rounded to ``dtype`` once."""
        wide = importer.block_builder.emit(
            relax.op.linear_algebra.matmul(lhs, rhs, out_dtype="float32"))
        return importer.block_builder.emit(relax.op.astype(wide, dtype))

    def linear(node, importer):
        args = importer.retrieve_args(node)
        if not half(args[0]):
            return importer._linear(node)
        out = product(importer, args[0], relax.op.permute_dims(args[1]), str(args[0].ty.dtype))
        bias = args[2] if len(args) > 2 else None
        return out if bias is None else importer.block_builder.emit(relax.op.add(out, bias))

    def matmul(node, importer):
        lhs, rhs = importer.retrieve_args(node)[:2]
        if not (isinstance(lhs, relax.Expr) and half(lhs)):
            return importer._binary_op(matmul32, operator.matmul)(node)
        return product(importer, lhs, rhs, str(lhs.ty.dtype))

    def addmm(node, importer):
        bias, lhs, rhs = (importer.env[a] for a in node.args[:3])
        alpha, beta = node.kwargs.get("alpha", 1), node.kwargs.get("beta", 1)
        if not half(lhs) or alpha != 1 or beta != 1:
            return importer._addmm(node)
        out = product(importer, lhs, rhs, str(lhs.ty.dtype))
        return importer.block_builder.emit(relax.op.add(bias, out))

    def max_pool2d(node, importer, with_indices=False):
        """As TVM converts it, but an empty stride (what ``F.max_pool2d(x, k)`` exports,
        with ``ceil_mode=True`` among others) is the kernel size, as in PyTorch: TVM passes
        it on empty and its operator fails."""
        args = importer.retrieve_args(node)
        stride = args[2] if len(args) > 2 and len(args[2] or ()) else args[1]
        padding, dilation, ceil_mode = (args[i] if len(args) > i else d
                                        for i, d in ((3, 0), (4, 1), (5, False)))
        out = importer._max_pool2d_impl(args[0], args[1], stride, padding, dilation, ceil_mode)
        if not with_indices:
            return out
        return importer.block_builder.emit(relax.Tuple([out, relax.op.zeros_like(out)]))

    def batch_norm(node, importer):
        """As TVM converts it, but a half-precision input with float32 parameters (a batch
        norm left in float32 after ``model.half()`` of the rest, which PyTorch runs) is
        normalized in float32 and rounded back: TVM's operator refuses mixed dtypes."""
        x = importer.env[node.args[0]]
        params = [importer.env.get(a) for a in node.args[1:5] if isinstance(a, fx.Node)]
        if not half(x) or all(str(p.ty.dtype) == str(x.ty.dtype) for p in params
                              if p is not None):
            return importer._batch_norm_legit_no_training(node)
        importer.env[node.args[0]] = importer.block_builder.emit(relax.op.astype(x, "float32"))
        try:
            out = importer._batch_norm_legit_no_training(node)
        finally:
            importer.env[node.args[0]] = x
        return importer.block_builder.emit(relax.op.astype(out, str(x.ty.dtype)))

    return {"convolution.default": lambda node, importer: convolution(node, importer, 6),
            "conv2d.default": lambda node, importer: convolution(node, importer, None),
            "linear.default": linear, "addmm.default": addmm, "matmul.default": matmul,
            "mm.default": matmul, "bmm.default": matmul, "max_pool2d.default": max_pool2d,
            "max_pool2d_with_indices.default": lambda node, importer: max_pool2d(
                node, importer, with_indices=True),
            "batch_norm.default": batch_norm,
            "_native_batch_norm_legit_no_training.default": batch_norm}


@tvm.transform.module_pass(opt_level=0, name="EscoinFoldBatchNorms")
def fold_batch_norms(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    """Inference batch norms of half-precision tensors with constant statistics, and those
    after a float32 convolution with a bias (TVM's ``FoldBatchnormToConv2D`` matches a
    conv2d followed by its batch norm only, not with the bias add between them, which a
    ``Conv2d(bias=True)`` gives: the batch norm, and the ReLU after it, would stay unfused),
    computed in float32 and stored in the tensor's dtype (rounded once):
    ``batch_norm(conv2d(x, W) [+ b])[0]`` -> ``conv2d(x, W * s) + (b - mean) * s + beta`` and
    any other ``batch_norm(y)[0]`` -> ``y * s + (beta - mean * s)``, ``s = gamma / sqrt(var +
    eps)``. A convolution whose folded weight or shift would not be finite in its dtype (a
    large weight over a tiny variance: 300 / sqrt(1e-5) is Inf in float16) keeps its weight,
    and its batch norm becomes the scale and shift after it; a scale or shift that is not
    finite itself is applied in float32. Float32 graphs' other batch norms are left to
    ``FoldBatchnormToConv2D`` and TVM's own legalization."""
    from tvm.relax.dpl import TupleGetItemPattern, is_const, is_op, rewrite_call, wildcard

    data, weight, conv_bias, other = wildcard(), is_const(), is_const(), wildcard()
    conv = is_op("relax.nn.conv2d")(data, weight)
    # the frontend's bias: a constant, reshaped to (1, C, 1, 1)
    biased = is_op("relax.add")(conv, conv_bias | is_op("relax.reshape")(conv_bias, wildcard()))
    stats = [is_const() for _ in range(4)]
    conv_norm = is_op("relax.nn.batch_norm")(conv | biased, *stats)
    other_norm = is_op("relax.nn.batch_norm")(other, *stats)
    on_conv, on_other = TupleGetItemPattern(conv_norm, 0), TupleGetItemPattern(other_norm, 0)

    def scale_and_shift(norm_call, channels):
        gamma, beta, mean, var = (_float32(norm_call.args[i]) for i in range(1, 5))
        scale = gamma / np.sqrt(var + float(norm_call.attrs.epsilon))
        return scale.reshape(channels), (beta - mean * scale).reshape(channels)

    def folded_conv(expr, matches):
        conv_call, norm_call = matches[conv], matches[conv_norm]
        biased_float32 = biased in matches and str(conv_call.ty.dtype) == "float32"
        if (_half(conv_call) is None and not biased_float32) or \
                conv_call.attrs.kernel_layout != "OIHW" or int(norm_call.attrs.axis) != 1:
            return expr
        scale, shift = scale_and_shift(norm_call, (-1,))
        if biased in matches:
            bias = _float32(matches[conv_bias])
            if bias.size != scale.size and bias.size != 1:
                return expr
            shift = shift + bias.reshape(-1) * scale
        like = matches[weight].value.numpy().dtype
        folded = (_float32(matches[weight]) * scale.reshape(-1, 1, 1, 1)).astype(like)
        shift = shift.reshape(1, -1, 1, 1).astype(like)
        if not (np.isfinite(folded).all() and np.isfinite(shift).all()):
            return expr  # left to ``affine``, after the convolution
        new_conv = relax.Call(conv_call.op, [matches[data], relax.const(folded)],
                              conv_call.attrs)
        return relax.op.add(new_conv, relax.const(shift))

    def affine(expr, matches):
        norm_call = matches[other_norm]
        dtype = _half(norm_call.args[0])
        rank = len(static_shape(norm_call.args[0]) or ())
        axis = int(norm_call.attrs.axis) % max(rank, 1)
        if dtype is None or rank == 0:
            return expr
        channels = tuple(-1 if i == axis else 1 for i in range(rank))
        scale, shift = scale_and_shift(norm_call, channels)
        if np.isfinite(scale.astype(dtype)).all() and np.isfinite(shift.astype(dtype)).all():
            return relax.op.add(relax.op.multiply(matches[other],
                                                  relax.const(scale.astype(dtype))),
                                relax.const(shift.astype(dtype)))
        wide = relax.op.astype(matches[other], "float32")
        return relax.op.astype(relax.op.add(relax.op.multiply(wide, relax.const(scale)),
                                            relax.const(shift)), dtype)

    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = rewrite_call(on_conv, folded_conv, func)
            mod[gvar] = rewrite_call(on_other, affine, func)
    return mod


def _half(expr):
    """The expression's dtype if it is float16 or bfloat16, else None."""
    dtype = str(getattr(expr.ty, "dtype", ""))
    return dtype if dtype in ("float16", "bfloat16") else None


def _float32(const) -> np.ndarray:
    return const.value.numpy().astype("float32")


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
