"""Escoin's CSR weight format: encoding, lossless round trip, ELL padding."""
import numpy as np
import pytest

from escoin_tvm import Conv2dSpec, EscoinWeight
from escoin_tvm.prune import prune_array


def make(shape, input_shape, sparsity, seed=0, **conv):
    rng = np.random.default_rng(seed)
    weight = prune_array(rng.standard_normal(shape).astype(np.float32), sparsity)
    spec = Conv2dSpec.create(input_shape, shape, **conv)
    return weight, spec, EscoinWeight.from_dense(weight, spec)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("conv", [dict(padding=1), dict(padding=(2, 0, 1, 3), dilation=(2, 1)),
                                  dict(groups=4), dict(groups=8, padding=1)])
def test_round_trip_is_lossless(sparsity, conv):
    weight, spec, ew = make((8, 8 // conv.get("groups", 1), 3, 3), (2, 8, 11, 9), sparsity, **conv)
    assert np.array_equal(ew.to_dense(), weight)
    assert ew.nnz == np.count_nonzero(weight)
    assert ew.sparsity == pytest.approx(1 - np.count_nonzero(weight) / weight.size)
    assert ew.indptr.dtype == np.int32 and ew.offsets.dtype == np.int32
    assert ew.values.dtype == np.float32 and ew.indptr[-1] == ew.nnz


def test_offsets_encode_the_tap_in_the_padded_input():
    weight = np.zeros((2, 3, 3, 3), np.float32)
    weight[0, 2, 1, 2] = 5.0  # c=2, r=1, s=2
    weight[1, 0, 2, 0] = -1.0  # c=0, r=2, s=0
    spec = Conv2dSpec.create((1, 3, 10, 12), weight.shape, padding=(1, 2), dilation=2)
    ew = EscoinWeight.from_dense(weight, spec)
    hp, wp = 10 + 2, 12 + 4
    assert (spec.padded_h, spec.padded_w) == (hp, wp)
    assert ew.offsets.tolist() == [2 * hp * wp + 1 * 2 * wp + 2 * 2, 0 * hp * wp + 2 * 2 * wp + 0]
    assert ew.indptr.tolist() == [0, 1, 2] and ew.values.tolist() == [5.0, -1.0]


def test_ell_rows_are_padded_into_the_zero_channel():
    weight, spec, ew = make((6, 2, 3, 3), (1, 4, 7, 7), 0.6, groups=2, padding=1)
    weight[1] = 0
    ew = EscoinWeight.from_dense(weight, spec)
    offsets, values = ew.to_ell(spec.in_channels, multiple=8)
    plane = spec.padded_h * spec.padded_w
    assert offsets.shape[1] % 8 == 0 and offsets.shape[1] >= ew.row_lengths.max()
    assert (values[1] == 0).all() and (offsets[1] == spec.in_channels * plane).all()
    for k in range(6):  # group base added: channels 3..5 read input channels 2..3
        n = ew.row_lengths[k]
        base = (k // 3) * 2 * plane
        assert (offsets[k, :n] == ew.offsets[ew.indptr[k]:ew.indptr[k + 1]] + base).all()
        assert (offsets[k, n:] == spec.in_channels * plane).all() and (values[k, n:] == 0).all()


def test_in_place_ell_rows_are_padded_with_their_last_tap():
    """A kernel that reads its input in place has no zero channel: padding entries (weight 0)
    repeat the row's last tap, an empty row its group's first tap, always inside the input."""
    weight, spec, ew = make((6, 2, 1, 1), (1, 4, 7, 7), 0.5, groups=2)
    weight[1] = 0
    ew = EscoinWeight.from_dense(weight, spec)
    offsets, values = ew.to_ell(spec.in_channels, multiple=8, in_place=True)
    plane = spec.padded_h * spec.padded_w
    assert offsets.max() < spec.in_channels * plane and offsets.min() >= 0
    for k in range(6):
        n = ew.row_lengths[k]
        base = (k // 3) * 2 * plane
        row = ew.offsets[ew.indptr[k]:ew.indptr[k + 1]] + base
        assert (offsets[k, :n] == row).all() and (values[k, n:] == 0).all()
        assert (offsets[k, n:] == (row[-1] if n else base)).all()
