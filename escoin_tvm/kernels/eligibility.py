"""Which layers go to a sparse kernel: the one sparsity threshold, the facts both dispatch paths
(the Relax pass and the torch.compile backend) read off a layer, and the checks they share.

Each kernel family says, in its ``eligibility.py``, which layers its kernels implement (a pure
function of ``LayerFacts``); the paths add only what is theirs (a Relax weight must be a
constant, a backend weight a parameter, gradients off) and then the threshold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

from ..support.arguments import fraction
from ..support.dtypes import SUPPORTED

# Where the Escoin kernel starts to beat the dense path a layer would otherwise take
# (docs/results.md, "Layers"); layers below it stay dense.
DEFAULT_SPARSITY_THRESHOLD = 0.7
# Measured dispatch (both paths) keeps a sparse kernel only when it beats the dense operator by
# this much: each timing carries a percent or two of noise, a replaced layer can cost the graph
# fusions around it, and over 60-120 layers near ties add up to a loss rather than a gain.
MEASURED_MARGIN = 0.05
# The most rows (batch) a linear layer has for a sparse kernel to take it: above it a dense GEMM
# reuses each weight more than the sparse kernels do (docs/results.md, "Fully-connected layers").
MAX_LINEAR_BATCH = 64


def beats_dense(sparse_s: float, dense_s: float) -> bool:
    """Whether a sparse kernel measured ``sparse_s`` beats a dense ``dense_s`` beyond noise."""
    return sparse_s <= dense_s * (1.0 - MEASURED_MARGIN)


@dataclass(frozen=True)
class LayerFacts:
    """A layer as dispatch sees it. ``input_shape`` is None where its sizes are not all known
    (a dynamic shape the path cannot compile for); ``out_dtype`` is the dtype the operator is
    asked to produce ("" for the input's); ``layouts`` are a convolution's (data, kernel,
    output) layouts."""

    op: str  # "conv2d" or "linear"
    input_shape: Optional[Tuple[int, ...]]
    weight_shape: Tuple[int, ...]
    input_dtype: str
    weight_dtype: str
    out_dtype: str = ""
    layouts: Tuple[str, str, str] = ("NCHW", "OIHW", "NCHW")
    on_gpu: bool = False  # the path compiles for a CUDA target
    # a weight's non-zeros in blocks of 16 output channels (features): the taps the blocks'
    # unions store per non-zero (1.0: pruned in such vectors); None where not computed
    block_density: Optional[float] = None


def dtype_problem(facts: LayerFacts, wider: Tuple[str, ...] = ()) -> Optional[str]:
    """Why the kernels cannot take the layer's dtypes (its output may also be one of
    ``wider``), else None."""
    if facts.input_dtype in SUPPORTED and facts.weight_dtype == facts.input_dtype and \
            facts.out_dtype in (facts.input_dtype, *wider, "", "void", "None"):
        return None
    return (f"dtype {facts.input_dtype} x {facts.weight_dtype} -> {facts.out_dtype or 'same'} "
            f"(Escoin kernels take {', '.join(SUPPORTED)}, one for all)")


def distinct(a: float, b: float, digits: int = 2) -> Tuple[str, str]:
    """``a`` and ``b`` printed with the fewest decimals (at least ``digits``) that tell them
    apart, so that "0.699 < 0.7" never prints as "0.70 < 0.70"."""
    while digits < 12 and a != b and f"{a:.{digits}f}" == f"{b:.{digits}f}":
        digits += 1
    return f"{a:.{digits}f}", f"{b:.{digits}f}"


def sparse_enough(sparsity: float, threshold: float) -> Tuple[bool, str]:
    """(whether a weight of ``sparsity`` goes sparse at ``threshold``, the reason as the
    report gives it)."""
    if sparsity < threshold:
        return False, "sparsity {} < threshold {}".format(*distinct(sparsity, threshold))
    return True, "sparsity {} >= threshold {}".format(*distinct(sparsity, threshold))


def checked_threshold(value, name: str = "sparsity_threshold") -> float:
    """``value`` as a sparsity threshold: a real number (Python, numpy or torch scalar) in
    [0, 1], else an ArgumentError naming ``name``."""
    return fraction(value, name)
