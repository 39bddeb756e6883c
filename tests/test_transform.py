"""The Escoin dispatch pass alone, on hand-built Relax modules."""
import numpy as np
import pytest
import tvm
from tvm import relax

from escoin_tvm import EscoinError
from escoin_tvm.prune import prune_array
from escoin_tvm.support.target import resolve_target
from escoin_tvm.transform import SparseConv2dDispatch
from helpers import reference

LLVM = resolve_target("llvm")
RNG = np.random.default_rng(7)
W = prune_array(RNG.standard_normal((8, 4, 3, 3)).astype(np.float32), 0.9)
B = RNG.standard_normal((1, 8, 1, 1)).astype(np.float32)
X = RNG.standard_normal((2, 4, 9, 9)).astype(np.float32)


def module(body, weight_param=False, data_shape=(2, 4, 9, 9)):
    """main(x[, w]) whose dataflow block is built by ``body(bb, x, w)``."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(data_shape, "float32"))
    w = relax.Var("w", relax.TensorType(W.shape, "float32")) if weight_param else relax.const(W)
    params = [x, w] if weight_param else [x]
    with bb.function("main", params):
        with bb.dataflow():
            out = bb.emit_output(body(bb, x, w))
        bb.emit_func_output(out)
    return bb.get()


def conv(bb, x, w, **kw):
    return bb.emit(relax.op.nn.conv2d(x, w, padding=1, **kw))


def ops_in(mod):
    text = mod["main"].script()
    return {op: text.count(op) for op in ("R.nn.conv2d", "R.call_tir", "R.add", "R.nn.relu")}


def run(mod, *args):
    exe = tvm.compile(mod, target=LLVM)
    vm = relax.VirtualMachine(exe, tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a) for a in args]).numpy()


def apply(mod, threshold=0.5):
    dispatch = SparseConv2dDispatch(LLVM, threshold)
    return dispatch(mod), dispatch.report


def test_conv_bias_relu_becomes_one_kernel():
    mod = module(lambda bb, x, w: bb.emit(relax.op.nn.relu(
        bb.emit(relax.op.add(conv(bb, x, w), relax.const(B))))))
    new, report = apply(mod)
    assert ops_in(new) == {"R.nn.conv2d": 0, "R.call_tir": 1, "R.add": 0, "R.nn.relu": 0}
    assert report[0].kernel == "escoin" and report[0].epilogue == "bias+relu"
    np.testing.assert_allclose(run(new, X), reference(X, W, B.reshape(-1), padding=1, relu=True),
                               rtol=1e-4, atol=1e-4)


def test_bias_on_the_left_and_no_relu():
    mod = module(lambda bb, x, w: bb.emit(relax.op.add(relax.const(B), conv(bb, x, w))))
    new, report = apply(mod)
    assert report[0].epilogue == "bias" and ops_in(new)["R.add"] == 0
    np.testing.assert_allclose(run(new, X), reference(X, W, B.reshape(-1), padding=1), rtol=1e-4, atol=1e-4)


def test_residual_add_is_folded_between_bias_and_relu():
    """relu(conv(x) + b + shortcut), the end of a ResNet block, becomes one kernel."""
    shortcut = RNG.standard_normal((2, 8, 9, 9)).astype(np.float32)

    def body(bb, x, w):
        biased = bb.emit(relax.op.add(conv(bb, x, w), relax.const(B)))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(relax.const(shortcut), biased))))
    new, report = apply(module(body))
    assert report[0].epilogue == "bias+residual+relu"
    assert ops_in(new) == {"R.nn.conv2d": 0, "R.call_tir": 1, "R.add": 0, "R.nn.relu": 0}
    ref = reference(X, W, B.reshape(-1), padding=1) + shortcut
    np.testing.assert_allclose(run(new, X), np.maximum(ref, 0), rtol=1e-4, atol=1e-4)


def test_two_convolutions_added_fold_the_add_once():
    """conv_a(x) + conv_b(x): only the later convolution takes the add (as a downsample
    shortcut does in a ResNet), the earlier one's output is its residual input."""
    w2 = prune_array(RNG.standard_normal(W.shape).astype(np.float32), 0.9)

    def body(bb, x, w):
        a, b = conv(bb, x, w), conv(bb, x, relax.const(w2))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(a, b))))
    new, report = apply(module(body))
    assert [d.epilogue for d in report] == ["", "residual+relu"]
    assert ops_in(new) == {"R.nn.conv2d": 0, "R.call_tir": 2, "R.add": 0, "R.nn.relu": 0}
    ref = reference(X, W, padding=1) + reference(X, w2, padding=1)
    np.testing.assert_allclose(run(new, X), np.maximum(ref, 0), rtol=1e-4, atol=1e-4)


def test_broadcast_add_is_not_a_residual():
    row = RNG.standard_normal((1, 1, 1, 9)).astype(np.float32)
    new, report = apply(module(lambda bb, x, w: bb.emit(relax.op.add(conv(bb, x, w),
                                                                      relax.const(row)))))
    assert report[0].epilogue == "" and ops_in(new)["R.add"] == 1
    np.testing.assert_allclose(run(new, X), reference(X, W, padding=1) + row, rtol=1e-4, atol=1e-4)


def test_shared_intermediate_is_not_folded():
    """conv feeds both the relu and the output: folding the relu would compute conv twice."""
    def body(bb, x, w):
        c = conv(bb, x, w)
        return bb.emit(relax.op.add(bb.emit(relax.op.nn.relu(c)), c))
    new, report = apply(module(body))
    assert report[0].kernel == "escoin" and report[0].epilogue == ""
    assert ops_in(new) == {"R.nn.conv2d": 0, "R.call_tir": 1, "R.add": 1, "R.nn.relu": 1}
    ref = reference(X, W, padding=1)
    np.testing.assert_allclose(run(new, X), np.maximum(ref, 0) + ref, rtol=1e-4, atol=1e-4)


def test_non_constant_weight_stays_dense():
    mod = module(lambda bb, x, w: conv(bb, x, w), weight_param=True)
    new, report = apply(mod)
    assert ops_in(new)["R.nn.conv2d"] == 1 and ops_in(new)["R.call_tir"] == 0
    assert report[0].kernel == "dense" and report[0].reason == "weight is not a constant"


def test_below_threshold_and_other_layouts_stay_dense():
    new, report = apply(module(lambda bb, x, w: conv(bb, x, w)), threshold=0.95)
    assert report[0].kernel == "dense" and "< threshold 0.95" in report[0].reason
    nhwc = module(lambda bb, x, w: bb.emit(relax.op.nn.conv2d(x, w, padding=1, data_layout="NHWC")),
                  data_shape=(2, 9, 9, 4))
    new, report = apply(nhwc)
    assert report[0].kernel == "dense" and "layout NHWC" in report[0].reason
    assert ops_in(new)["R.nn.conv2d"] == 1


def test_pass_composes_in_a_sequential():
    mod = module(lambda bb, x, w: conv(bb, x, w, strides=2))
    seq = tvm.transform.Sequential([relax.transform.FoldConstant(), SparseConv2dDispatch(LLVM, 0.5)])
    new = seq(mod)
    assert ops_in(new)["R.call_tir"] == 1
    np.testing.assert_allclose(run(new, X), reference(X, W, padding=1, stride=2), rtol=1e-4, atol=1e-4)


def test_bad_threshold():
    with pytest.raises(EscoinError, match="threshold"):
        SparseConv2dDispatch(LLVM, 1.5)


@pytest.mark.parametrize("stride, shape", [((2, 2), (2, 4, 9, 9)), ((2, 3), (1, 4, 10, 11)),
                                           ((3, 1), (3, 4, 7, 8))])
def test_strided_pointwise_conv_runs_stride_one_on_the_subsampled_input(stride, shape):
    """A strided 1x1 convolution (a ResNet downsample) becomes a strided slice of its input
    and a stride-1 Escoin kernel that reads it in place, with the residual add and ReLU folded."""
    w = prune_array(RNG.standard_normal((6, 4, 1, 1)).astype(np.float32), 0.5)
    x = RNG.standard_normal(shape).astype(np.float32)
    out_hw = ((shape[2] - 1) // stride[0] + 1, (shape[3] - 1) // stride[1] + 1)
    shortcut = RNG.standard_normal((shape[0], 6, *out_hw)).astype(np.float32)

    def body(bb, x_, _w):
        y = bb.emit(relax.op.nn.conv2d(x_, relax.const(w), strides=stride))
        return bb.emit(relax.op.nn.relu(bb.emit(relax.op.add(y, relax.const(shortcut)))))
    dispatch = SparseConv2dDispatch(LLVM, 0.4)
    new = dispatch(module(body, data_shape=shape))
    assert dispatch.report[0].kernel == "escoin" and dispatch.report[0].epilogue == "residual+relu"
    assert dispatch.kernels[0].spec.stride == (1, 1)
    assert dispatch.kernels[0].spec.input_shape == (shape[0], 4, *out_hw)
    text = new["main"].script()
    assert "R.strided_slice" in text and "R.reshape" in text
    ref = np.maximum(reference(x, w, stride=stride) + shortcut, 0)
    np.testing.assert_allclose(run(new, x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight, stride, padding", [((6, 4, 3, 3), 2, 0), ((6, 4, 1, 1), 2, 1),
                                                     ((6, 4, 1, 1), 1, 0)])
def test_only_unpadded_strided_pointwise_convs_are_subsampled(weight, stride, padding):
    from escoin_tvm.kernels.conv_spec import Conv2dSpec

    assert Conv2dSpec.create((1, 4, 9, 9), weight, stride=stride, padding=padding).subsampled() is None


@pytest.mark.parametrize("escoin_us, taken", [(99.0, False), (96.0, False), (94.0, True)])
def test_measured_dispatch_keeps_a_layer_dense_unless_it_wins_beyond_noise(escoin_us, taken):
    """A layer measured within ``MEASURED_MARGIN`` of its dense time stays dense (a near tie
    is noise, and many add up to a loss); the report gives both times."""
    from escoin_tvm.kernels.eligibility import MEASURED_MARGIN

    assert MEASURED_MARGIN == 0.05
    dispatch = SparseConv2dDispatch(LLVM, 0.5, measure=lambda call, make, family: (
        escoin_us * 1e-6, 100e-6))
    new, report = dispatch(module(conv)), dispatch.report
    assert (report[0].kernel == "escoin") == taken
    assert (ops_in(new)["R.call_tir"] == 1) == taken
    assert report[0].escoin_us == pytest.approx(escoin_us)
    assert report[0].dense_us == pytest.approx(100.0)
    if not taken:
        assert "not 5% under dense 100.0 us" in report[0].reason
