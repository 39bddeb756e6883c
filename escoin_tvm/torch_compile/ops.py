"""``torch.ops.escoin.sparse_conv2d`` and ``sparse_linear``: Escoin kernels as PyTorch custom
operators.

Each sparse layer the backend takes is registered once (``register``: its frozen weight, bias,
geometry and fused ReLU) and called by its index, so the graph stays traceable: the fake
implementation gives the output's shape (symbolic batch sizes included), and inductor treats
the call as an opaque kernel around which it compiles the rest. A kernel is built for each
input shape the layer meets (a new batch size builds a new one, once) and runs on the current
stream with outputs from PyTorch's allocator, so the call works inside CUDA graphs
(``mode="reduce-overhead"``). The weights are the ones the layer had when it was compiled.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..kernels import conv2d, linear
from ..kernels.eligibility import LayerFacts
from ..kernels.family import KernelFamily
from ..kernels.vector_sparse.weight_format import block_density
from ..support import dtypes
from ..support.target import device_for, is_gpu


@dataclass
class SparseLayer:
    """A convolution the backend sends to a kernel family (``family``, which builds its
    kernel per input shape), with its weights frozen."""

    name: str
    weight: np.ndarray  # OIHW float32, batch norm folded in
    bias: Optional[np.ndarray]
    stride: Tuple[int, int]
    padding: Tuple[int, int, int, int]  # top, left, bottom, right
    dilation: Tuple[int, int]
    groups: int
    relu: bool
    target: object  # a TVM target
    tuning_log: object = None
    family: KernelFamily = conv2d.FAMILY
    kernels: Dict[tuple, object] = field(default_factory=dict)
    calls: Dict[tuple, object] = field(default_factory=dict)  # by the call's device
    lock: threading.Lock = field(default_factory=threading.Lock)

    def output_shape(self, shape) -> tuple:
        """The output shape for an input of ``shape`` (ints or symbolic sizes)."""
        n, _, h, w = shape
        kh, kw = self.weight.shape[2:]
        top, left, bottom, right = self.padding
        out_h = (h + top + bottom - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        out_w = (w + left + right - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return (n, self.weight.shape[0], out_h, out_w)

    def kernel(self, shape: tuple, device: torch.device):
        """The layer's kernel for inputs of ``shape`` on ``device``, built on first use (or
        PyTorch's operator, where its family does not take that shape: ``kernel_or_dense``)."""
        return _cached(self, shape, device, kernel_or_dense)

    def torch_equivalent(self, x: torch.Tensor, weight, bias) -> torch.Tensor:
        """What PyTorch computes for the layer (the dense baseline it is timed against)."""
        import torch.nn.functional as F

        top, left, bottom, right = self.padding
        symmetric = (top, left) == (bottom, right)
        padded = x if symmetric else F.pad(x, (left, right, top, bottom))
        y = F.conv2d(padded, weight, bias, self.stride, (top, left) if symmetric else 0,
                     self.dilation, self.groups)
        return torch.relu(y) if self.relu else y


@dataclass
class SparseLinearLayer:
    """A fully-connected layer the backend sends to a kernel family (``family``), with its
    weights frozen."""

    name: str
    weight: np.ndarray  # (out_features, in_features)
    bias: Optional[np.ndarray]
    relu: bool
    target: object
    tuning_log: object = None
    family: KernelFamily = linear.FAMILY
    kernels: Dict[tuple, object] = field(default_factory=dict)
    calls: Dict[tuple, object] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def output_shape(self, shape) -> tuple:
        return (shape[0], self.weight.shape[0])

    def kernel(self, shape: tuple, device: torch.device):
        return _cached(self, shape, device, kernel_or_dense)

    def torch_equivalent(self, x: torch.Tensor, weight, bias) -> torch.Tensor:
        y = torch.nn.functional.linear(x, weight, bias)
        return torch.relu(y) if self.relu else y


def _cached(layer, shape: tuple, device: torch.device, make):
    """``layer``'s kernel for ``shape`` on ``device``, made by ``make(layer, shape, device)``
    on first use. Keyed by the device the kernel runs on (``target.device_for``), so that the
    names of one device ("cuda", "cuda:0") share one kernel: each build costs about a second of
    CUDA compilation. A call's own (shape, device) finds it again without resolving the
    device."""
    kernel = layer.calls.get((shape, device))  # every call's lookup: no device resolution
    if kernel is None:
        key = (shape, str(device_for(layer.target, device)))
        with layer.lock:
            kernel = layer.kernels.get(key)
            if kernel is None:
                kernel = layer.kernels[key] = make(layer, shape, device)
            layer.calls[(shape, device)] = kernel
    return kernel


def kernel_or_dense(layer, shape: tuple, device: torch.device):
    """The family's kernel for ``shape``, decided again for each shape a graph meets (a graph
    with a dynamic batch is dispatched at its first one): where the family does not take the
    shape (a linear layer past its batch limit), PyTorch's own operator on the frozen
    weights (``DenseFallback``)."""
    dtype = dtypes.name_of(layer.weight.dtype)
    on_gpu = is_gpu(layer.target)
    blocks = block_density(layer.weight, getattr(layer, "groups", 1)) if on_gpu else None
    problem = layer.family.problem(LayerFacts(
        layer.family.op, tuple(int(d) for d in shape), tuple(layer.weight.shape), dtype, dtype,
        on_gpu=on_gpu, block_density=blocks))
    if problem is not None:
        return DenseFallback(layer, device, problem)
    return layer.family.torch_kernel(layer, shape, device)


class DenseFallback:
    """A layer's PyTorch operator on its frozen weights (on ``device``, in the layer's dtype),
    called as a kernel is (``run_torch``); ``reason`` says why the shape did not go sparse."""

    def __init__(self, layer, device: torch.device, reason: str):
        self.layer, self.reason = layer, reason
        self.weight = dtypes.to_torch(layer.weight).to(device)
        self.bias = None if layer.bias is None else \
            torch.from_numpy(layer.bias).to(device, self.weight.dtype)

    def run_torch(self, x: torch.Tensor, out=None) -> torch.Tensor:
        y = self.layer.torch_equivalent(x, self.weight, self.bias)
        return y if out is None else out.copy_(y)


LAYERS: List[object] = []  # SparseLayer and SparseLinearLayer
_REGISTERING = threading.Lock()


def register(layer: SparseLayer) -> int:
    """The index ``torch.ops.escoin.sparse_conv2d`` calls the layer by."""
    with _REGISTERING:
        LAYERS.append(layer)
        return len(LAYERS) - 1


def operator(kind: str):
    """The custom operator that runs a layer of ``kind`` ("linear", else a convolution)."""
    return torch.ops.escoin.sparse_linear if kind == "linear" else torch.ops.escoin.sparse_conv2d


def release(*indices: int) -> None:
    """Forgets the layers registered as ``indices`` (one registered only to be timed, or a
    compiled graph's once it is gone), so that their weights and kernels can be freed; an index
    is not reused."""
    with _REGISTERING:
        for index in indices:
            LAYERS[index] = None


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether ``x`` is a 4-D tensor laid out channels-last (NHWC in memory) and not also
    NCHW-contiguous (as a tensor with one pixel or one channel is)."""
    return x.dim() == 4 and not x.is_contiguous() and \
        x.is_contiguous(memory_format=torch.channels_last)


def _in_layout_of(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A convolution's output in its input's memory format. The kernels read and write NCHW;
    a channels-last model's layers after an Escoin one then still get channels-last tensors
    (cuDNN's fast half-precision layout) and the model's output keeps the layout it had."""
    return out.contiguous(memory_format=torch.channels_last) if is_channels_last(x) else out


def apply_conv(layer: SparseLayer, x: torch.Tensor) -> torch.Tensor:
    """``layer`` applied to ``x`` as the operator does it: the kernel for ``x``'s shape, and a
    channels-last input's copy to NCHW and the output's back."""
    return _in_layout_of(layer.kernel(tuple(x.shape), x.device).run_torch(x), x)


def _run_conv(x: torch.Tensor, layer: int) -> torch.Tensor:
    return apply_conv(LAYERS[layer], x)


def _fake_conv(x: torch.Tensor, layer: int) -> torch.Tensor:
    """An output of the right shape and layout, for tracing (symbolic sizes included)."""
    return _in_layout_of(x.new_empty(LAYERS[layer].output_shape(x.shape)), x)


def _run_linear(x: torch.Tensor, layer: int) -> torch.Tensor:
    return LAYERS[layer].kernel(tuple(x.shape), x.device).run_torch(x)


def _fake_linear(x: torch.Tensor, layer: int) -> torch.Tensor:
    return x.new_empty(LAYERS[layer].output_shape(x.shape))


@torch.library.custom_op("escoin::sparse_conv2d", mutates_args=())
def sparse_conv2d(x: torch.Tensor, layer: int) -> torch.Tensor:
    """The registered convolution ``layer`` applied to ``x`` (NCHW or channels-last; the output
    in the same layout)."""
    return _run_conv(x, layer)


@torch.library.custom_op("escoin::sparse_linear", mutates_args=())
def sparse_linear(x: torch.Tensor, layer: int) -> torch.Tensor:
    """The registered linear layer ``layer`` applied to ``x`` (batch, in_features)."""
    return _run_linear(x, layer)


sparse_conv2d.register_fake(_fake_conv)
sparse_linear.register_fake(_fake_linear)
