"""The convolution kernel's knobs without a tuning log: the heuristic defaults (CPU and GPU),
the shipped table's records (``knob_table``, section ``SECTION``), and the work a kernel does
with its knobs (``extents``), which a tuned kernel keeps from its untuned one."""
from __future__ import annotations

from typing import Optional, Tuple, Union

from ...support.target import is_gpu
from .. import knob_table
from .schedule_cpu import CpuConfig
from .schedule_gpu import GpuConfig, blocks_images, pow2_at_least, with_half_sums
from ..conv_spec import Conv2dSpec

ScheduleConfig = Union[CpuConfig, GpuConfig]

SECTION = "conv2d"  # this family's records in the shipped table
KEY_FIELDS = ("input_shape", "weight_shape", "stride", "padding", "dilation", "groups")


def default_cpu_config(spec: Conv2dSpec) -> CpuConfig:
    return CpuConfig(vector=8 if spec.out_w >= 8 else 4)


def default_gpu_config(spec: Conv2dSpec, dtype: str = "float32",
                       half_sums: bool = True) -> GpuConfig:
    """An untuned choice from the layer's shape. Occupancy first: a register tile only as large
    as leaves about 64K threads (2K warps, 16 per SM of an H100) to hide the latency of the
    non-zero walk; then about 128 threads per block, a warp covering an output row.

    In half precision from batch 4, a tile of at least 4 accumulators goes to 4 images blocked
    in the input copy (one aligned 8-byte load per tap): measured on 27 layer shapes at batch 16
    it was faster than this heuristic's plain tile on 24 of the 25 with such a tile (1.20x on
    the benchmark's 15 layers), and slower on both whose tile it would have grown from 2. In
    float32 it was about even with the plain kernels, and two blocked images lost
    (docs/findings.md, "Blocked images"). Those blocked tiles then sum in half precision
    (``with_half_sums``; ``half_sums=False`` leaves them plain) where their blocks can tile
    the output exactly (docs/findings.md, "Half sums")."""
    threads_x = pow2_at_least(spec.out_w, 32)
    outputs = spec.batch * spec.out_channels * spec.out_h * spec.out_w
    tile = 1
    while tile * 2 <= min(16, outputs // 65536):
        tile *= 2
    images = 2 if spec.batch >= 2 and tile >= 4 else 1
    tile //= images
    rows = 2 if tile >= 2 and spec.out_h >= 8 else 1
    channels = min(4, max(1, tile // rows))
    blocked, accumulators = False, images * channels * rows
    if dtype != "float32" and spec.batch >= 4 and accumulators >= 4:
        block_rows = min(rows, max(1, accumulators // 4))
        candidate = GpuConfig(images_per_thread=4, block_images=True)
        if blocks_images(spec, candidate):
            images, rows, blocked = 4, block_rows, True
            channels = max(1, accumulators // (4 * rows))
    threads_y = max(1, min(pow2_at_least(-(-spec.out_h // rows), 16), 128 // threads_x))
    config = GpuConfig(threads_x=threads_x, threads_y=threads_y, rows_per_thread=rows,
                       channels_per_thread=channels, images_per_thread=images,
                       block_images=blocked).validate()
    return (with_half_sums(spec, config, dtype) if blocked and half_sums else None) or config


def untuned_config(spec: Conv2dSpec, target, dtype: str = "float32") -> ScheduleConfig:
    """The knobs a kernel gets without a tuning log: the shipped table's for this layer shape
    (``shipped_config``), else the heuristic."""
    if is_gpu(target):
        return shipped_config(spec, target, dtype)[0] or default_gpu_config(spec, dtype)
    return default_cpu_config(spec)


def shipped_config(spec: Conv2dSpec, target, dtype: str = "float32"
                   ) -> Tuple[Optional[GpuConfig], str]:
    """(the shipped table's knobs for this layer on a GPU ``target`` or None, where they come
    from): its record for ``dtype`` ("pre-tuned"); else, for a half dtype whose heuristic tile
    is plain (no blocked images: below batch 4, or a tile of fewer than 4 accumulators), the
    float32 record of the same shape ("pre-tuned (float32)").

    A plain half tile is the float32 kernel's tile reading half values, and the float32
    records' knobs ran the fp16 kernels 1.21x faster than the heuristic at batch 1 on the 15
    benchmark layers (faster on 12); a blocked tile, with half sums, beat them by 1.5x at batch
    16, so it keeps the heuristic (docs/findings.md, "Half kernels with float32 records")."""
    arch = str(target.attrs.get("arch", ""))
    own = lookup(spec, arch, dtype)
    if own is not None or dtype == "float32" or default_gpu_config(spec, dtype).block_images:
        return own, "pre-tuned"
    return lookup(spec, arch, "float32"), "pre-tuned (float32)"


def extents(spec: Conv2dSpec, config: ScheduleConfig) -> Tuple[Tuple[int, int], int]:
    """((images, rows), row multiple) of the work a kernel with ``config`` does: a GPU kernel
    sums over images and output rows rounded up to its register tile (``sparse_conv2d_te``'s
    ``domain``) and pads its ELL rows to a multiple of its chunk; a CPU kernel does neither."""
    if isinstance(config, GpuConfig):
        return ((_round_up(spec.batch, config.images_per_thread),
                 _round_up(spec.out_h, config.rows_per_thread)), config.chunk)
    return (spec.batch, spec.out_h), 1


def tuned_extents(spec: Conv2dSpec, target, dtype: str = "float32") -> Tuple[Tuple[int, int], int]:
    """The ``extents`` a tuned kernel runs on: the untuned kernel's. Tuning then searches the
    configs that fit that work (``tuning.space``: tiles and chunks that divide it), the untuned
    knobs are one of them, measured first, and a tuned kernel never does more work than the
    untuned one (a fixed, larger rounding made tuned kernels slower than the untuned ones whose
    knobs they had found: docs/findings.md, "Tuned work")."""
    return extents(spec, untuned_config(spec, target, dtype))


def schedule_source(spec: Conv2dSpec, target, dtype: str = "float32") -> str:
    """Where an untuned kernel's knobs come from: the shipped table or the heuristic."""
    if is_gpu(target):
        config, source = shipped_config(spec, target, dtype)
        if config is not None:
            return source
    return "default"




def record_key(record: dict) -> tuple:
    """A shipped record's key: its layer shape and dtype (records without one are float32)."""
    return (*(knob_table.frozen(record[f]) for f in KEY_FIELDS), record.get("dtype", "float32"))


def spec_key(spec: Conv2dSpec, dtype: str = "float32") -> tuple:
    return (*(knob_table.frozen(getattr(spec, f)) for f in KEY_FIELDS), dtype)


def parse(record: dict) -> GpuConfig:
    return GpuConfig(**record["config"]).validate()


def lookup(spec: Conv2dSpec, arch: str, dtype: str = "float32") -> Optional[GpuConfig]:
    """The shipped config for this exact layer and dtype on ``arch`` (sm_90a reads sm_90's
    table), or None."""
    return knob_table.section(arch, SECTION, record_key, parse).get(spec_key(spec, dtype))


def record(name: str, spec: Conv2dSpec, config: GpuConfig, time_us: float, **extra) -> dict:
    """One entry of the table's section: the layer's shape key, its knobs and their time."""
    return {"layer": name, **{f: knob_table.field(getattr(spec, f)) for f in KEY_FIELDS},
            "config": dict(vars(config)), "time_us": time_us, **extra}


def merge(records, old_table, replace: bool = False) -> list:
    """``records`` merged into the section of ``old_table`` (``knob_table.merge``)."""
    return knob_table.merge(records, old_table, SECTION, record_key, replace)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
