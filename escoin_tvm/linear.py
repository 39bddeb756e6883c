"""Sparse fully-connected layers: the weight format and the operator.

    out[m, n] = epilogue( sum_j values[n, j] * x[m, columns[n, j]] )

The weight of ``y = x @ W.T + b`` (W of shape (N, K), PyTorch's Linear) is stored as one CSR row
per output feature, padded to one length (ELL) so that the reduction has a static extent:
padding entries have value 0 and point at column 0, whose input is real, so they add 0 * x and
never turn an Inf or NaN input into NaN unless that column already meets a non-zero weight of
the row (an empty row's padding reads column 0). Column indices are int16 when the input has at
most 32768 features (VGG-16's fc6 has 25088), else int32: at batch 1 the layer streams its
weight, and the index bytes are a third of it. Values keep the model's dtype; the sum is float32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from tvm import te, tirx

from .errors import ShapeError
from .weight_format import CsrValues

SUM_BLOCK = "sparse_linear"
EPILOGUE_BLOCK = "linear_epilogue"
TRANSPOSE_BLOCK = "x_transposed"
INT16_COLUMNS = 1 << 15


@dataclass(frozen=True, eq=False)
class SparseLinearWeight(CsrValues):
    """A (N, K) Linear weight in CSR form, one row per output feature."""

    indptr: np.ndarray  # int64, (N + 1,)
    columns: np.ndarray  # (nnz,), column of each non-zero
    values: np.ndarray  # (nnz,), in the weight's dtype
    shape: Tuple[int, int]  # (out_features, in_features)

    @staticmethod
    def from_dense(weight) -> "SparseLinearWeight":
        from .weight_format import as_numpy_weight, csr_rows

        weight = as_numpy_weight(weight)
        if weight.ndim != 2 or min(weight.shape) < 1:
            raise ShapeError(f"a linear weight is (out_features, in_features), got shape "
                             f"{weight.shape}")
        indptr, rows, cols = csr_rows(weight)
        return SparseLinearWeight(indptr, cols, weight[rows, cols], tuple(weight.shape))

    @property
    def dense_shape(self) -> Tuple[int, int]:
        return self.shape

    @property
    def index_dtype(self) -> str:
        return "int16" if self.shape[1] <= INT16_COLUMNS else "int32"

    def ell_width(self, multiple: int = 1) -> int:
        longest = max(1, int(np.diff(self.indptr).max(initial=0)))
        return -(-longest // multiple) * multiple

    def to_ell(self, multiple: int = 1) -> Tuple[np.ndarray, np.ndarray]:
        """(columns, values) of shape (N, L), rows padded to ``ell_width(multiple)``."""
        lengths = np.diff(self.indptr)
        width = self.ell_width(multiple)
        columns = np.zeros((self.shape[0], width), dtype=self.index_dtype)
        values = np.zeros((self.shape[0], width), dtype=self.values.dtype)
        rows = np.repeat(np.arange(self.shape[0]), lengths)
        slots = np.arange(self.nnz) - np.repeat(self.indptr[:-1], lengths)
        columns[rows, slots] = self.columns
        values[rows, slots] = self.values
        return columns, values

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.shape, dtype=self.values.dtype)
        rows = np.repeat(np.arange(self.shape[0]), np.diff(self.indptr))
        dense[rows, self.columns] = self.values
        return dense


def sparse_linear_te(batch: int, weight: SparseLinearWeight, row_length: int, bias: bool = False,
                     relu: bool = False, output_block: bool = False,
                     transposed_input: bool = False):
    """The TE graph. Returns (inputs, output): inputs are ``[x, columns, values]`` and ``bias``
    (float32) when there is one. The sum is written by its own epilogue block when there is
    an epilogue or ``output_block`` asks for one (the GPU schedule does: TVM's cross-thread
    reduction drops the bounds check of its final store, see ``workarounds``).
    ``transposed_input``: the sum reads a (in_features, batch) copy of x, so that the batch
    rows a non-zero meets are adjacent in memory (one load for a register tile of them)."""
    out_features, in_features = weight.shape
    dtype = weight.dtype
    if batch < 1:
        raise ShapeError(f"batch must be >= 1, got {batch}")
    x = te.placeholder((batch, in_features), dtype, name="x")
    columns = te.placeholder((out_features, row_length), weight.index_dtype, name="columns")
    values = te.placeholder((out_features, row_length), dtype, name="values")
    j = te.reduce_axis((0, row_length), name="j")
    half = dtype != "float32"

    def wide(value):
        return value.astype("float32") if half else value

    if transposed_input:
        xt = te.compute((in_features, batch), lambda k, m: x[m, k], name=TRANSPOSE_BLOCK)

        def read(m, column):
            return xt[column, m]
    else:
        def read(m, column):
            return x[m, column]

    total = te.compute((batch, out_features), lambda m, n: te.sum(
        wide(values[n, j]) * wide(read(m, columns[n, j].astype("int32"))), axis=j),
        name=SUM_BLOCK)
    inputs = [x, columns, values]
    if not (bias or relu or half or output_block):
        return inputs, total
    bias_t = te.placeholder((out_features,), "float32", name="bias") if bias else None

    def finish(m, n):
        value = total[m, n]
        if bias_t is not None:
            value = value + bias_t[n]
        if relu:
            value = tirx.max(value, tirx.const(0.0, "float32"))
        return value.astype(dtype) if half else value

    out = te.compute((batch, out_features), finish, name=EPILOGUE_BLOCK)
    return inputs + ([bias_t] if bias_t is not None else []), out


def sparse_linear_primfunc(batch: int, weight: SparseLinearWeight, row_length: int,
                           bias: bool = False, relu: bool = False, output_block: bool = False,
                           transposed_input: bool = False):
    inputs, out = sparse_linear_te(batch, weight, row_length, bias, relu, output_block,
                                   transposed_input)
    return te.create_prim_func([*inputs, out])
