"""escoin-tvm: Escoin's sparse direct convolution for pruned CNNs, compiled with Apache TVM."""
from . import prune  # noqa: F401  (escoin_tvm.prune.magnitude is public API)
from .errors import ArgumentError, DTypeError, EscoinError, ShapeError, TargetError
from .compiler import compile
from .runtime import CompiledModule, load
from .kernels.conv2d.kernel import SparseConv2dKernel, build_sparse_conv2d
from .kernels.conv_spec import Conv2dSpec
from .kernels.conv2d.weight_format import EscoinWeight
from .kernels.linear.kernel import SparseLinearKernel, build_sparse_linear
from . import torch_compile  # noqa: F401,E402  (registers the "escoin" torch.compile backend)

__version__ = "0.1.0"


def tune(model, example_inputs, *, log, target="cuda", trials: int = 64, **options):
    """Tunes the model's Escoin kernels with MetaSchedule into the tuning log ``log`` (see
    ``escoin_tvm.tuning.relax_integration.tune``); MetaSchedule is imported only when tuning."""
    from .tuning.relax_integration import tune as tune_model

    return tune_model(model, example_inputs, log=log, target=target, trials=trials, **options)


__all__ = ["compile", "load", "tune", "CompiledModule", "build_sparse_conv2d", "SparseConv2dKernel",
           "build_sparse_linear", "SparseLinearKernel",
           "Conv2dSpec", "EscoinWeight", "EscoinError", "ArgumentError", "ShapeError", "DTypeError",
           "TargetError"]
