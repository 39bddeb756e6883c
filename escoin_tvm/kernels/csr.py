"""What every sparse weight format shares: the CSR rows of a dense matrix, the non-zero
values with the shape they came from, and the check that a weight has a dtype the kernels
take."""
from __future__ import annotations

from typing import Tuple

import numpy as np

from ..errors import DTypeError
from ..support import dtypes


def as_numpy_weight(weight, name: str = "weight") -> np.ndarray:
    """A torch tensor or array-like -> numpy array of one of the dtypes Escoin kernels take
    (float32, float16, bfloat16), refusing others loudly (``name`` is the argument the message
    names)."""
    if hasattr(weight, "detach"):  # torch.Tensor, without importing torch here
        dtypes.check(weight.dtype, name)
        return dtypes.to_numpy(weight)
    weight = np.asarray(weight)
    dtypes.check(weight.dtype, name)
    return weight


def as_float32_bias(bias, name: str = "bias") -> np.ndarray:
    """A bias (numpy or torch, of any floating dtype: float64 too, as PyTorch takes it) as the
    float32 array the fused epilogues add; other dtypes are refused naming ``name``."""
    if hasattr(bias, "detach"):  # torch.Tensor
        bias = bias.detach().cpu().float().numpy()
    bias = np.asarray(bias)
    if bias.dtype.kind != "f" and dtypes.name_of(bias.dtype) not in dtypes.SUPPORTED:
        raise DTypeError(f"{name} is {dtypes.name_of(bias.dtype)}; a bias is a "
                         "floating-point tensor (added in float32)")
    return bias.astype(np.float32)


def csr_rows(matrix: np.ndarray):
    """(indptr, rows, columns) of the non-zeros of a 2-D ``matrix``, in row-major order."""
    rows, cols = np.nonzero(matrix)
    indptr = np.zeros(matrix.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    return indptr, rows, cols


class CsrValues:
    """What the sparse weight formats share: their non-zero ``values`` and the shape of the
    dense weight they came from (``dense_shape``)."""

    values: np.ndarray
    dense_shape: Tuple[int, ...]

    @property
    def dtype(self) -> str:
        """The weights' element type: float32, float16 or bfloat16."""
        return dtypes.name_of(self.values.dtype)

    @property
    def nnz(self) -> int:
        return int(self.values.size)

    @property
    def sparsity(self) -> float:
        """Fraction of zero weights, in [0, 1]."""
        return 1.0 - self.nnz / float(np.prod(self.dense_shape))

