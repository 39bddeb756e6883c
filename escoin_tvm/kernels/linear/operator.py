"""The sparse linear layer (a pruned fully-connected layer) as a TVM tensor expression.

    out[m, n] = epilogue( sum_j values[n, j] * x[m, columns[n, j]] )

The weight of ``y = x @ W.T + b`` (W of shape (N, K), PyTorch's Linear) is stored as one CSR row
per output feature, padded to one length (ELL) so that the reduction has a static extent
(``weight_format.py``). Values keep the model's dtype; the sum is float32.
"""
from __future__ import annotations

from tvm import te

from ...errors import ShapeError
from ..epilogue import fused_relu
from .weight_format import SparseLinearWeight

SUM_BLOCK = "sparse_linear"
EPILOGUE_BLOCK = "linear_epilogue"
TRANSPOSE_BLOCK = "x_transposed"


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
            value = fused_relu(value)
        return value.astype(dtype) if half else value

    out = te.compute((batch, out_features), finish, name=EPILOGUE_BLOCK)
    return inputs + ([bias_t] if bias_t is not None else []), out


def sparse_linear_primfunc(batch: int, weight: SparseLinearWeight, row_length: int,
                           bias: bool = False, relu: bool = False, output_block: bool = False,
                           transposed_input: bool = False):
    inputs, out = sparse_linear_te(batch, weight, row_length, bias, relu, output_block,
                                   transposed_input)
    return te.create_prim_func([*inputs, out])
