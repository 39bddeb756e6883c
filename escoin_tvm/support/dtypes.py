"""The element types Escoin kernels take (float32, and the half-precision float16 and bfloat16,
which they accumulate in float32), and their numpy and torch spellings."""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError

SUPPORTED = ("float32", "float16", "bfloat16")
# What a compiled model's inputs may be besides: integer tensors (token ids, indices), which
# reach no Escoin kernel
INTEGER_INPUTS = ("int64", "int32", "int16", "int8", "uint8", "bool")


def name_of(dtype) -> str:
    """A torch, numpy or TVM dtype (or its name) as its name: ``torch.bfloat16`` -> "bfloat16"."""
    return str(dtype).replace("torch.", "")


def check(dtype, what: str) -> str:
    """The dtype's name when Escoin kernels take it, else a DTypeError naming ``what``."""
    name = name_of(dtype)
    if name not in SUPPORTED:
        raise DTypeError(f"{what} is {name}; Escoin kernels take {', '.join(SUPPORTED)}")
    return name


def check_model_input(dtype, what: str) -> str:
    """The dtype's name when a compiled model takes it as an input (``SUPPORTED``, or an
    integer type), else a DTypeError naming ``what``."""
    name = name_of(dtype)
    if name not in SUPPORTED + INTEGER_INPUTS:
        raise DTypeError(f"{what} is {name}; a compiled model takes inputs of "
                         f"{', '.join(SUPPORTED)} (its Escoin kernels' dtypes), or integer "
                         "inputs that reach no kernel (token ids)")
    return name


def numpy_dtype(name: str):
    """The numpy dtype of a supported name (bfloat16 is ml_dtypes', as TVM's)."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def to_numpy(tensor) -> np.ndarray:
    """A torch tensor of any supported dtype as a numpy array of the same dtype (torch has no
    numpy bfloat16: its values go through float32, which holds them exactly)."""
    tensor = tensor.detach().cpu()
    if name_of(tensor.dtype) == "bfloat16":
        return tensor.float().numpy().astype(numpy_dtype("bfloat16"))
    return tensor.numpy()


def to_torch(array: np.ndarray):
    """A numpy array of a supported dtype (or int32) as a torch tensor sharing its memory."""
    import torch

    if name_of(array.dtype) == "bfloat16":
        return torch.from_numpy(array.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
