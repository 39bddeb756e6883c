"""Moving user tensors (numpy arrays or torch tensors) in and out of TVM, with the checks that
turn a wrong shape, dtype or device into a clear error instead of a crash or a wrong result."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tvm

from ..errors import ArgumentError, DTypeError, ShapeError


ALIGNMENT = 64  # bytes; TVM's buffers (and its DLPack import) require it


def is_torch(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def to_tvm(value, device, shape: Sequence[int], name: str = "input", dtype: str = "float32"):
    """A numpy array or torch tensor -> a TVM tensor on ``device``, after checking shape and dtype.

    Torch tensors already on the right device are shared through DLPack (no copy) when their data
    is 64-byte aligned, as TVM's kernels assume; others (e.g. slices) are copied into an aligned
    buffer. A CUDA torch tensor given to a CPU module, or one on another GPU, is refused."""
    shape = tuple(int(d) for d in shape)
    if is_torch(value):
        got_dtype = str(value.dtype).replace("torch.", "")
        got_shape = tuple(value.shape)
    elif isinstance(value, (np.ndarray, np.generic)):
        got_dtype, got_shape = str(value.dtype), tuple(value.shape)
    else:
        raise ArgumentError(f"{name} must be a numpy array or a torch tensor, got {type(value).__name__}")
    if got_dtype != dtype:
        raise DTypeError(f"{name} must be {dtype}, got {got_dtype}")
    if got_shape != shape:
        raise ShapeError(f"{name} must have shape {shape}, got {got_shape}")
    if is_torch(value):
        wanted = "cuda" if device.dlpack_device_type() == tvm.cuda(0).dlpack_device_type() else "cpu"
        if value.device.type != wanted or (wanted == "cuda" and value.device.index != device.index):
            raise ArgumentError(f"{name} is on {value.device} but the module runs on {device}; "
                             f"move it with .to('{wanted}')")
        if value.requires_grad:
            value = value.detach()
        value = value.contiguous()
        if value.data_ptr() % ALIGNMENT == 0:
            return tvm.runtime.from_dlpack(value)
        import torch

        aligned = tvm.runtime.empty(shape, dtype, device)
        torch.from_dlpack(aligned).copy_(value)
        return aligned
    return tvm.runtime.tensor(np.ascontiguousarray(value), device)


def from_tvm(tensor, like):
    """A TVM tensor back to the kind of ``like`` (torch tensor, on its device, or numpy)."""
    if is_torch(like):
        import torch  # only reached when the caller already uses torch

        return torch.from_dlpack(tensor)
    return tensor.numpy()
