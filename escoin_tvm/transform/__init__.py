"""The Escoin pass: which convolutions go sparse (``policy``), what it matches (``patterns``),
and the pass that rewrites them into Escoin kernels (``sparse_conv2d``)."""
from .policy import DispatchPolicy, LayerDecision
from .sparse_conv2d import EscoinKernel, SparseConv2dDispatch

__all__ = ["DispatchPolicy", "EscoinKernel", "LayerDecision", "SparseConv2dDispatch"]
