"""Bad input fails loudly with an error that names the problem; the documented Inf/NaN
difference from dense convolution holds."""
import numpy as np
import pytest
import torch

import escoin_tvm
from escoin_tvm import DTypeError, ShapeError, TargetError
from escoin_tvm.prune import prune_array
from escoin_tvm.support.target import has_gpu
from helpers import assert_conv_close

W = np.ones((4, 2, 3, 3), np.float32)


@pytest.mark.parametrize("weight, shape, kwargs, error, words", [
    (np.ones((4, 2, 3), np.float32), (1, 2, 5, 5), {}, ShapeError, "4-D"),
    (np.ones((4, 2, 3, 3), np.float64), (1, 2, 5, 5), {}, DTypeError, "float32"),
    (np.ones((4, 2, 3, 3), np.float32), (1, 3, 5, 5), {}, ShapeError, "input channels"),
    (np.ones((4, 2, 3, 3), np.float32), (1, 6, 5, 5), {"groups": 4}, ShapeError, "groups=4"),
    (np.ones((6, 2, 3, 3), np.float32), (1, 4, 5, 5), {"groups": 4}, ShapeError, "divide"),
    (W, (1, 2, 5), {}, ShapeError, "NCHW"),
    (W, (1, 2, 2, 2), {}, ShapeError, "spans 3x3 input pixels, more than the padded"),
    (W, (1, 2, 5, 5), {"stride": 0}, ShapeError, "stride"),
    (W, (1, 2, 5, 5), {"padding": (1, 2, 3)}, ShapeError, "padding"),
    (W, (1, 2, 5, 5), {"padding": -1}, ShapeError, "non-negative"),
    (W, (1, 2, 5, 5), {"bias": np.ones(3, np.float32)}, ShapeError, "bias"),
    (W, (1, 2, 5, 5), {"target": "foo"}, TargetError, "foo"),
    (W, (1, 2, 5, 5), {"target": "cuda -arch=sm_90"}, TargetError, "dict"),
    (W, (1, 2, 5, 5), {"target": {"kind": "opencl"}}, TargetError, "opencl"),
    (W, (1, 2, 5, 5), {"target": 7}, TargetError, "target"),
])
def test_build_errors_name_the_problem(weight, shape, kwargs, error, words):
    with pytest.raises(error, match=words):
        escoin_tvm.build_sparse_conv2d(weight, shape, **kwargs)


@pytest.fixture(scope="module")
def kernel():
    return escoin_tvm.build_sparse_conv2d(W, (1, 2, 5, 5), padding=1)


@pytest.mark.parametrize("x, error, words", [
    (np.ones((1, 2, 5, 4), np.float32), ShapeError, r"shape \(1, 2, 5, 5\)"),
    (np.ones((2, 2, 5, 5), np.float32), ShapeError, "shape"),
    (np.ones((1, 2, 5, 5), np.float64), DTypeError, "float32"),
    (torch.ones(1, 2, 5, 5, dtype=torch.float16), DTypeError, "float16"),
    ([[1.0]], TypeError, "numpy array or a torch tensor"),
])
def test_call_errors_name_the_problem(kernel, x, error, words):
    with pytest.raises(error, match=words):
        kernel(x)


def test_error_types_are_escoin_errors():
    assert issubclass(ShapeError, escoin_tvm.EscoinError)
    assert issubclass(DTypeError, escoin_tvm.EscoinError)
    assert issubclass(TargetError, escoin_tvm.EscoinError)


@pytest.mark.skipif(has_gpu(), reason="checks the no-GPU path")
def test_cuda_kernel_without_gpu_says_so():
    kernel = escoin_tvm.build_sparse_conv2d(W, (1, 2, 5, 5), target="cuda")
    with pytest.raises(TargetError, match="no CUDA GPU"):
        kernel(np.ones((1, 2, 5, 5), np.float32))


def _inf_case():
    """Channel 1 of the weight is pruned away entirely; the input's channel 1 holds Inf and NaN.
    Output channel 1 has a shorter row than channel 0, so its ELL padding is exercised too."""
    weight = np.zeros((2, 2, 1, 1), np.float32)
    weight[0, 0] = 2.0
    weight[1, 0] = 3.0
    weight[0, 1] = 0.0
    x = np.ones((1, 2, 3, 3), np.float32)
    x[0, 1, 0, 0] = np.inf
    x[0, 1, 1, 1] = np.nan
    weight2 = weight.copy()
    weight2[0, 1] = 1e-3  # a non-zero weight on the Inf channel keeps Inf/NaN, as dense does
    return weight, weight2, x


@pytest.mark.parametrize("padding", [0, 1], ids=["in_place", "padded_copy"])
@pytest.mark.parametrize("target", ["llvm", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_skipped_zero_weight_never_meets_inf_or_nan(target, padding):
    weight, weight2, x = _inf_case()
    dense = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight)).numpy()
    assert np.isnan(dense).any()  # dense: 0 * Inf = NaN
    inner = (slice(padding, padding + 3), slice(padding, padding + 3))
    out = escoin_tvm.build_sparse_conv2d(weight, x.shape, padding=padding, target=target)(x)
    np.testing.assert_array_equal(out[0, 0][inner], np.full((3, 3), 2.0, np.float32))
    np.testing.assert_array_equal(out[0, 1][inner], np.full((3, 3), 3.0, np.float32))
    assert np.isfinite(out).all()
    out2 = escoin_tvm.build_sparse_conv2d(weight2, x.shape, padding=padding, target=target)(x)
    if padding:
        assert out2[0, 0, 1, 1] == np.inf
    else:  # read in place, the ELL padding repeats the Inf tap with weight 0: may turn NaN
        assert np.isinf(out2[0, 0, 0, 0]) or np.isnan(out2[0, 0, 0, 0])
    assert np.isnan(out2[0, 0, padding + 1, padding + 1])
    np.testing.assert_array_equal(out2[0, 1][inner], np.full((3, 3), 3.0, np.float32))


def test_unaligned_torch_input_is_copied_not_refused():
    """Regression (found by the pipeline property tests): a torch view whose data is not
    64-byte aligned made TVM's DLPack import fail; it is now copied into an aligned buffer."""
    import torch

    rng = np.random.default_rng(3)
    weight = prune_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), 0.8)
    kernel = escoin_tvm.build_sparse_conv2d(weight, (1, 3, 6, 6), padding=1)
    storage = torch.from_numpy(rng.standard_normal(1 + 3 * 36).astype(np.float32))
    x = storage[1:].view(1, 3, 6, 6)  # 4 bytes past an aligned start
    assert x.data_ptr() % 64 != 0
    np.testing.assert_allclose(kernel(x).numpy(), kernel(x.clone()).numpy())
    assert_conv_close(kernel(x).numpy(), x.numpy(), weight, padding=1)


def test_a_kernels_torch_call_names_a_wrong_input_after_good_calls_too():
    """The torch call checks its input against values it makes on the first call; a wrong
    dtype, shape or device is named on the first call and on later ones alike."""
    import torch

    from escoin_tvm import ArgumentError

    rng = np.random.default_rng(4)
    weight = prune_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), 0.8)
    kernel = escoin_tvm.build_sparse_conv2d(weight, (2, 3, 6, 6), padding=1)
    x = torch.randn(2, 3, 6, 6)
    for first in (True, False):
        with pytest.raises(DTypeError, match="input must be float32, got float64"):
            kernel(x.double())
        with pytest.raises(ShapeError, match=r"input must have shape \(2, 3, 6, 6\), got \(1, 3, 6, 6\)"):
            kernel(x[:1])
        with pytest.raises(ArgumentError, match="input is on meta but the module runs on cpu"):
            kernel(x.to("meta"))
        if first:
            assert_conv_close(kernel(x).numpy(), x.numpy(), weight, padding=1)
    out = torch.empty(2, 4, 6, 6)
    assert kernel.run_torch(x, out) is out
    assert_conv_close(out.numpy(), x.numpy(), weight, padding=1)


def test_the_default_gpu_architecture_is_announced_once(monkeypatch):
    """``target="cuda"`` without a visible GPU builds for sm_90, and says so once; an
    architecture with no shipped knobs says that its kernels run untuned."""
    import warnings

    from escoin_tvm.kernels import knob_table
    from escoin_tvm.support import target as target_module

    monkeypatch.setattr(target_module, "local_cuda_arch", lambda: None)
    target_module._announce_default_arch.cache_clear()
    with pytest.warns(UserWarning, match="no GPU is visible: target 'cuda' compiles for sm_90"):
        assert target_module.resolve_target("cuda").attrs["arch"] == "sm_90"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        target_module.resolve_target("cuda")  # said once
    knob_table._table.cache_clear()
    with pytest.warns(UserWarning, match="no pre-tuned knobs for sm_80 .shipped: sm_90.*untuned"):
        knob_table._table("sm_80")
