"""The Escoin passes: which layers go to a kernel family (``policy``, over the families'
checks), what they match (``patterns``, ``matching``), and the passes that rewrite them into
the families' kernels (``sparse_conv2d`` for convolutions, ``sparse_linear`` for linear
layers; each lists the families it dispatches to in ``FAMILIES``)."""
from .policy import DispatchPolicy, LayerDecision
from .sparse_conv2d import SparseConv2dDispatch
from .sparse_linear import SparseLinearDispatch

__all__ = ["DispatchPolicy", "LayerDecision", "SparseConv2dDispatch", "SparseLinearDispatch"]
