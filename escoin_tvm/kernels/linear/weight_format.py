"""The sparse linear layer's weight format: one CSR row per output feature of a (N, K) Linear
weight, padded to one length (ELL) for the kernel.

Padding entries have value 0 and point at column 0, whose input is real, so they add 0 * x and
never turn an Inf or NaN input into NaN unless that column already meets a non-zero weight of
the row (an empty row's padding reads column 0). Column indices are int16 when the input has at
most 32768 features (VGG-16's fc6 has 25088), else int32: at batch 1 the layer streams its
weight, and the index bytes are a third of it. Values keep the model's dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from ...errors import ShapeError
from ..csr import CsrValues, as_numpy_weight, csr_rows

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
