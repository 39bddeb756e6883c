"""The sparse linear kernel's knobs without a tuning log: the heuristic, the shipped table's
records for known layer shapes, batches and dtypes (``knob_table``, section ``SECTION``), and
the row padding a tuned kernel keeps from the heuristic's."""
from __future__ import annotations

from typing import Optional, Union

from ...support.target import is_gpu
from .. import knob_table
from .schedule_cpu import LinearCpuConfig
from .schedule_gpu import LinearGpuConfig
from .weight_format import SparseLinearWeight

LinearConfig = Union[LinearGpuConfig, LinearCpuConfig]

SECTION = "linear"  # this family's records in the shipped table
KEY_FIELDS = ("in_features", "out_features", "batch")


def default_linear_gpu_config(batch: int, out_features: int, row_length: int) -> LinearGpuConfig:
    """An untuned choice: lanes to cover a row in a few steps of 4, 128 threads per block, and
    a register tile of the whole batch up to 8 rows (more rows walk the weight again). Each
    lane takes one non-zero per step (chunk 1), so a warp's loads of values and indices are
    consecutive: tuning chose it on each of VGG-16's fc6 and fc7 records (docs/findings.md,
    "Sparse fully-connected layers")."""
    lanes = 1
    while lanes < 32 and lanes * 4 * 4 < row_length:
        lanes *= 2
    rows = max(1, min(128 // lanes, out_features))
    return LinearGpuConfig(lanes=lanes, rows=rows, batch_tile=min(batch, 8), chunk=1).validate()


def heuristic_linear_config(batch: int, weight: SparseLinearWeight, target) -> LinearConfig:
    """The heuristic knobs (``default_linear_gpu_config``; on the CPU the defaults). A tuning
    record is keyed on the work these knobs do, so that records keep matching whatever the
    shipped table holds."""
    if is_gpu(target):
        return default_linear_gpu_config(batch, weight.shape[0], weight.ell_width())
    return LinearCpuConfig()


def shipped_linear_config(batch: int, weight: SparseLinearWeight,
                          target) -> Optional[LinearGpuConfig]:
    """The shipped table's knobs for this layer's shape, batch and dtype on a GPU ``target``,
    or None. A record is kept only where it beat the heuristic on its shape; the heuristic is
    the one that generalises (docs/findings.md, "Sparse fully-connected layers")."""
    if not is_gpu(target):
        return None
    out_features, in_features = weight.shape
    return lookup(in_features, out_features, batch, str(target.attrs.get("arch", "")),
                  weight.dtype)


def untuned_linear_config(batch: int, weight: SparseLinearWeight, target) -> LinearConfig:
    """The knobs a kernel gets without a tuning log: shipped, else the heuristic."""
    return shipped_linear_config(batch, weight, target) or \
        heuristic_linear_config(batch, weight, target)


def tuned_row_multiple(batch: int, weight: SparseLinearWeight, target) -> int:
    """The multiple a tuned kernel's rows are padded to: the heuristic kernel's, so that a
    tuned kernel does the work it was tuned on (the convolution's ``knobs.tuned_extents``)."""
    return heuristic_linear_config(batch, weight, target).row_multiple


def record_key(record: dict) -> tuple:
    """A shipped record's key: in and out features, batch and dtype."""
    return (*(record[f] for f in KEY_FIELDS), record.get("dtype", "float32"))


def parse(record: dict) -> LinearGpuConfig:
    return LinearGpuConfig(**record["config"]).validate()


def lookup(in_features: int, out_features: int, batch: int, arch: str,
           dtype: str = "float32") -> Optional[LinearGpuConfig]:
    """The shipped config for a fully-connected layer of this shape, batch and dtype on
    ``arch``, or None."""
    return knob_table.section(arch, SECTION, record_key, parse).get(
        (in_features, out_features, batch, dtype))


def record(name: str, in_features: int, out_features: int, batch: int, dtype: str,
           config: LinearGpuConfig, time_us: float, **extra) -> dict:
    """One entry of the table's section."""
    return {"layer": name, "in_features": in_features, "out_features": out_features,
            "batch": batch, "dtype": dtype, "config": dict(vars(config)), "time_us": time_us,
            **extra}
