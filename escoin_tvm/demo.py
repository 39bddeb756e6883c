"""The main job (``escoin demo``): a pruned network compiled, checked and timed against the dense
model a user would run instead.

The timing and its verdict are ``comparison.time_against_dense``'s (``escoin bench`` prints the
same for a user's model).
"""
from __future__ import annotations

import time

from . import models, prune
from .support import dtypes
from .comparison import error_against_float64, time_against_dense
from .errors import ArgumentError

# Max error relative to the largest output, per dtype of the compiled model, against the same
# weights in float64 (a half-precision network rounds every layer's output).
TOLERANCE = {"float32": 1e-4, "float16": 5e-3, "bfloat16": 4e-2}


STRUCTURES = ("unstructured", "vectors")  # prune.magnitude, or prune.vectors (groups of 16)


def run(model_name: str = "resnet50", sparsity: float = 0.9, batch: int = 1, size: int = 0,
        target: str = "auto", dtype: str = "float32", layers: str = "conv",
        structure: str = "unstructured", out=print) -> int:
    """Runs the demo; returns 0 when the compiled model matches PyTorch, else 1.
    ``structure="vectors"`` prunes in vectors of 16 output channels, the weights the
    tensor-core kernels take on a GPU in float16 or bfloat16."""
    import torch

    from .compiler import compile as compile_model
    from .support.target import has_gpu

    prune.check_sparsity(sparsity)
    if batch < 1:
        raise ArgumentError(f"--batch must be >= 1, got {batch}")
    if size < 0:
        raise ArgumentError(f"--size must be >= 1 (or 0 for the default), got {size}")
    if target not in ("auto", "cuda", "llvm"):
        raise ArgumentError(f"--target must be auto, cuda or llvm, got {target!r}")
    dtypes.check(dtype, "--dtype")
    model = models.build(model_name)  # an unknown name fails here, before anything runs
    device = "cuda" if has_gpu() and target != "llvm" else "cpu"
    target = "cuda" if device == "cuda" else "llvm"
    size = size or (224 if device == "cuda" else 112)
    what = {"conv": "convolutions", "linear": "linear layers", "all": "all layers"}.get(layers)
    if what is None:
        raise ArgumentError(f"--prune must be conv, linear or all, got {layers!r}")
    if structure not in STRUCTURES:
        raise ArgumentError(f"--structure must be {' or '.join(STRUCTURES)}, got {structure!r}")
    how = "magnitude-pruned" if structure == "unstructured" else \
        "pruned in vectors of 16 output channels"
    out(f"escoin demo: {model_name}, {what} {how} to {sparsity:.0%}, "
        f"batch {batch}, {size}x{size} input, {dtype}, on the {device.upper()} (target {target})")
    if structure == "vectors" and (device != "cuda" or dtype == "float32"):
        out("(the tensor-core kernels that take such weights run on a GPU in float16 or "
            "bfloat16; here the Escoin CUDA-core or CPU kernels run them)")
    pruner = prune.magnitude if structure == "unstructured" else prune.vectors
    model = pruner(model, sparsity, layers=layers).to(dtypes.torch_dtype(dtype))
    x = torch.randn(batch, 3, size, size).to(dtypes.torch_dtype(dtype))
    start = time.time()
    compiled = compile_model(model, (x,), target=target)
    out(f"compiled in {time.time() - start:.1f} s\n")
    out(compiled.report())

    err = error_against_float64(compiled, model, x, device)
    ok = err < TOLERANCE[dtype]
    out(f"\ncheck against the same weights in float64: max relative error {err:.2e} "
        f"(tolerance for {dtype}: {TOLERANCE[dtype]:.0e}) -> {'OK' if ok else 'MISMATCH'}")
    time_against_dense(compiled, model, x, device, dtype, out)
    return 0 if ok else 1
