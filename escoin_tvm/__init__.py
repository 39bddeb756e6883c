"""escoin-tvm: Escoin's sparse direct convolution for pruned CNNs, compiled with Apache TVM."""
from . import prune
from .errors import DTypeError, EscoinError, ShapeError, TargetError
from .compiler import CompiledModule, compile, load
from .kernel import SparseConv2dKernel, build_sparse_conv2d
from .spec import Conv2dSpec
from .weight_format import EscoinWeight

__version__ = "0.1.0"
__all__ = ["compile", "load", "CompiledModule", "build_sparse_conv2d", "SparseConv2dKernel", "Conv2dSpec", "EscoinWeight",
           "EscoinError", "ShapeError", "DTypeError", "TargetError"]
