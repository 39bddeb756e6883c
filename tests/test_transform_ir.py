"""The Escoin pass as an IR rewrite: Before/After modules compared structurally, as TVM tests its
own passes. The expected kernels are the scheduled PrimFuncs ``kernel.scheduled_module`` makes
(the kernels themselves are checked numerically in test_operator.py and test_transform.py)."""
import numpy as np
import tvm
from tvm import relax

from escoin_tvm.kernels.conv2d.kernel import scheduled_module
from escoin_tvm.kernels.conv2d.operator import Epilogue, kernel_input_shape
from escoin_tvm.prune import prune_array
from escoin_tvm.kernels.conv_spec import Conv2dSpec
from escoin_tvm.support.target import resolve_target
from escoin_tvm.transform import SparseConv2dDispatch
from escoin_tvm.kernels.conv2d.weight_format import EscoinWeight

LLVM = resolve_target("llvm")
RNG = np.random.default_rng(3)
W = prune_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), 0.9)
W2 = prune_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), 0.9)
B = RNG.standard_normal((1, 8, 1, 1)).astype(np.float32)
SHAPE = (2, 4, 9, 9)
OUT = (2, 8, 9, 9)


def tensor(shape):
    return relax.TensorType(shape, "float32")


def build(body, shape=SHAPE):
    """main(x) whose dataflow block is ``body(bb, x)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", tensor(shape))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x))
        bb.emit_func_output(out)
    return bb.get()


def escoin_call(bb, data, weight, spec, epilogue=Epilogue(), bias=None, residual=None):
    """What the pass should emit for one kernel: its PrimFunc and its call_tir."""
    escoin_weight = EscoinWeight.from_dense(weight, spec)
    mod, (offsets, values), _ = scheduled_module(spec, escoin_weight, epilogue, LLVM)
    func = (mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
            .with_attr("op_pattern", 8))
    gvar = bb.add_func(func, "escoin_conv2d")
    args = [data, relax.const(offsets), relax.const(values)]
    if bias is not None:
        args.append(relax.const(bias.reshape(-1)))
    if residual is not None:
        args.append(residual)
    return relax.call_tir(gvar, args, tensor(spec.output_shape))


def conv(x, w, **kw):
    return relax.op.nn.conv2d(x, relax.const(w), **kw)


def rewrite(mod, threshold=0.5):
    return SparseConv2dDispatch(LLVM, threshold)(mod)


def test_conv_bias_relu_becomes_one_call_tir():
    before = build(lambda bb, x: bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(
        bb.emit(conv(x, W, padding=1)), relax.const(B))))))
    spec = Conv2dSpec.create(SHAPE, W.shape, padding=1)
    expected = build(lambda bb, x: bb.emit(escoin_call(bb, x, W, spec, Epilogue(bias=True, relu=True),
                                                       bias=B)))
    tvm.ir.assert_structural_equal(rewrite(before), expected)


def test_layer_below_the_threshold_is_left_as_it_is():
    before = build(lambda bb, x: bb.emit(relax.op.nn.relu(bb.emit(conv(x, W, padding=1)))))
    tvm.ir.assert_structural_equal(rewrite(before, threshold=0.95), before)


def test_a_shared_intermediate_keeps_its_consumers():
    """conv feeds the relu and the add: the kernel computes conv alone, both consumers stay."""
    def body(bb, x):
        c = bb.emit(conv(x, W, padding=1))
        return bb.emit(relax.op.add(bb.emit(relax.op.nn.relu(c)), c))

    spec = Conv2dSpec.create(SHAPE, W.shape, padding=1)

    def expected_body(bb, x):
        c = bb.emit(escoin_call(bb, x, W, spec))
        return bb.emit(relax.op.add(bb.emit(relax.op.nn.relu(c)), c))
    tvm.ir.assert_structural_equal(rewrite(build(body)), build(expected_body))


def test_the_later_of_two_added_convolutions_takes_the_add():
    def body(bb, x):
        a, b = bb.emit(conv(x, W, padding=1)), bb.emit(conv(x, W2, padding=1))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(a, b))))

    spec = Conv2dSpec.create(SHAPE, W.shape, padding=1)

    def expected_body(bb, x):
        a = bb.emit(escoin_call(bb, x, W, spec))
        return bb.emit(escoin_call(bb, x, W2, spec, Epilogue(relu=True, residual=True),
                                   residual=a))
    tvm.ir.assert_structural_equal(rewrite(build(body)), build(expected_body))


def test_strided_pointwise_conv_reads_a_subsampled_input_in_place():
    w = prune_array(RNG.standard_normal((6, 4, 1, 1)).astype(np.float32), 0.5)
    before = build(lambda bb, x: bb.emit(conv(x, w, strides=2)))
    spec = Conv2dSpec.create((2, 4, 5, 5), w.shape)

    def expected_body(bb, x):
        sub = bb.emit(relax.op.strided_slice(x, axes=[2, 3], begin=[0, 0], end=[9, 9],
                                             strides=[2, 2]))
        flat = bb.emit(relax.op.reshape(sub, kernel_input_shape(spec)))
        return bb.emit(escoin_call(bb, flat, w, spec))
    tvm.ir.assert_structural_equal(rewrite(before, threshold=0.4), build(expected_body))


def test_output_var_of_the_block_keeps_its_binding():
    """A chain whose root is the block's output: the output var is bound to the kernel."""
    before = build(lambda bb, x: conv(x, W, padding=1))
    spec = Conv2dSpec.create(SHAPE, W.shape, padding=1)
    expected = build(lambda bb, x: escoin_call(bb, x, W, spec))
    tvm.ir.assert_structural_equal(rewrite(before), expected)


def test_a_sparse_linear_chain_becomes_one_call_tir():
    """matmul(x, W.T) + b, relu (a Linear as the frontend gives it) -> the sparse linear
    kernel's call_tir."""
    from escoin_tvm.kernels.linear.weight_format import SparseLinearWeight
    from escoin_tvm.kernels.linear.kernel import scheduled_linear_module
    from escoin_tvm.transform.sparse_linear import SparseLinearDispatch

    w = prune_array(RNG.standard_normal((12, 20)).astype(np.float32), 0.9)
    b = RNG.standard_normal(12).astype(np.float32)
    before = build(lambda bb, x: bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(
        bb.emit(relax.op.matmul(x, relax.const(w.T.copy()))), relax.const(b))))), shape=(3, 20))

    def expected_body(bb, x):
        mod, columns, values, _ = scheduled_linear_module(
            3, SparseLinearWeight.from_dense(w), True, True, LLVM)
        func = (mod["main"].without_attr("global_symbol").with_attr("tirx.is_scheduled", True)
                .with_attr("op_pattern", 8))
        gvar = bb.add_func(func, "escoin_linear")
        return bb.emit(relax.call_tir(gvar, [x, relax.const(columns), relax.const(values),
                                             relax.const(b)], tensor((3, 12))))
    after = SparseLinearDispatch(LLVM, 0.5)(before)
    tvm.ir.assert_structural_equal(after, build(expected_body, shape=(3, 20)))
