"""Which convolutions the vector-sparse (tensor-core) kernels take: a pure check of
``LayerFacts`` (``kernels/eligibility.py``).

Only where the family is measured to be the better sparse kernel (``docs/results.md``,
"Vector-sparse kernels on tensor cores"): on a CUDA target, in float16 or bfloat16, for a
convolution with at least 16 output channels per group and more than one tap per channel whose
weight is pruned in vectors of 16 output channels. Depthwise and narrow grouped layers (a
block of 16 channels of a group of one holds one), 1 x 1 layers (the padding and epilogue
kernels dominate) and unstructured weights (a block's union of 16 random rows holds most taps)
run much slower here than on the Escoin CUDA-core kernels, which take them instead.

Linear layers (``linear_problem``): the same structure and dtypes, a (batch, features) input of
at most ``MAX_LINEAR_BATCH`` rows, as the CUDA-core linear family. It wins on large layers at
batch 16 and loses at batch 1 (docs/results.md, "Vector-pruned FC layers"), so the dispatch
paths list it after that family: it runs a layer only where measured dispatch finds it fastest.
"""
from __future__ import annotations

from typing import Optional

from ..eligibility import MAX_LINEAR_BATCH, LayerFacts, dtype_problem
from .schedule_gpu import GPU_GROUP as BLOCK
from .tensor_intrin import DTYPES

LAYOUTS = ("NCHW", "OIHW", "NCHW")
# a weight whose blocks' unions store at most this many taps per non-zero counts as pruned in
# vectors (1.0 exactly for prune.vectors; the slack admits a few stray non-zeros)
MAX_BLOCK_DENSITY = 1.05


def problem(facts: LayerFacts) -> Optional[str]:
    """Why the vector-sparse kernels do not take this convolution, or None."""
    if not facts.on_gpu:
        return "the tensor-core kernels run on CUDA targets only"
    if facts.layouts != LAYOUTS or facts.input_shape is None or len(facts.input_shape) != 4:
        return "not a static NCHW/OIHW convolution"
    if dtype_problem(facts) is not None or facts.input_dtype not in DTYPES:
        return f"dtype {facts.input_dtype} (the tensor-core kernels take {', '.join(DTYPES)})"
    out_channels, in_per_group, kh, kw = facts.weight_shape
    groups = facts.input_shape[1] // max(1, in_per_group)
    if out_channels // max(1, groups) < BLOCK:
        return (f"{out_channels // max(1, groups)} output channels per convolution group, "
                f"fewer than a block of {BLOCK} (the Escoin CUDA-core kernels are faster on it)")
    if kh * kw == 1:
        return "1 x 1 convolution (the Escoin CUDA-core kernels are faster on it)"
    if facts.block_density is None or facts.block_density > MAX_BLOCK_DENSITY:
        density = "?" if facts.block_density is None else f"{facts.block_density:.2f}"
        return (f"weight not pruned in vectors of 16 output channels (blocks of 16 would store "
                f"{density}x its non-zeros; prune.vectors prunes so)")
    return None


def linear_problem(facts: LayerFacts) -> Optional[str]:
    """Why the vector-sparse kernels do not take this linear layer, or None."""
    if not facts.on_gpu:
        return "the tensor-core kernels run on CUDA targets only"
    if facts.input_shape is None or len(facts.input_shape) != 2 or \
            len(facts.weight_shape) != 2:
        return "input is not a static (batch, features) matrix"
    if dtype_problem(facts, wider=("float32",)) is not None or facts.input_dtype not in DTYPES:
        return f"dtype {facts.input_dtype} (the tensor-core kernels take {', '.join(DTYPES)})"
    if facts.weight_shape[0] < BLOCK:
        return f"{facts.weight_shape[0]} output features, fewer than a block of {BLOCK}"
    if facts.input_shape[0] > MAX_LINEAR_BATCH:
        return (f"batch {facts.input_shape[0]} > {MAX_LINEAR_BATCH}: a dense GEMM reuses the "
                "weight more")
    if facts.block_density is None or facts.block_density > MAX_BLOCK_DENSITY:
        density = "?" if facts.block_density is None else f"{facts.block_density:.2f}"
        return (f"weight not pruned in vectors of 16 output features (blocks of 16 would store "
                f"{density}x its non-zeros; prune.vectors prunes so)")
    return None


def note(facts: LayerFacts) -> str:
    """The report's word on a layer the family takes: its blocks' union density."""
    if facts.block_density is None:
        return ""
    return (f"; blocks of {BLOCK} output channels store {facts.block_density:.2f}x its "
            "non-zeros")
