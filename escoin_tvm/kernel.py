"""The scheduled Escoin kernel of one convolution: which knobs it gets (given, tuned, shipped or
the heuristic), the work it does with them, and the scheduled IRModule with its ELL arrays."""
from __future__ import annotations

from typing import Optional, Tuple, Union

from tvm import s_tir

from .errors import ArgumentError
from .operator import Epilogue, ell_arrays, sparse_conv2d_primfunc
from .schedule import (CpuConfig, GpuConfig, default_cpu_config, default_gpu_config, pretuned,
                       schedule_cpu, schedule_gpu)
from .schedule.gpu import half_sums_apply
from .spec import Conv2dSpec
from .target import is_gpu
from .weight_format import EscoinWeight

ScheduleConfig = Union[CpuConfig, GpuConfig]


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
    own = pretuned.lookup(spec, arch, dtype)
    if own is not None or dtype == "float32" or default_gpu_config(spec, dtype).block_images:
        return own, "pre-tuned"
    return pretuned.lookup(spec, arch, "float32"), "pre-tuned (float32)"


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


def schedule_choice(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                    config: Optional[ScheduleConfig] = None, tuning_log=None):
    """The knobs of a kernel: ``config`` if given, else the best record of ``tuning_log``
    (a ``tuning.TuningLog``) for this kernel, else the untuned ones (``scheduled_module``
    picks those when the config is None). Returns (config or None, tuned, where from)."""
    if config is not None:
        return config, False, "given"
    if tuning_log is not None:
        found = tuning_log.lookup(spec, weight, epilogue, target)
        if found is not None:
            config, seconds = found
            return config, True, f"tuned ({seconds * 1e6:.1f} us)"
    return None, False, schedule_source(spec, target, weight.dtype)


def scheduled_module(spec: Conv2dSpec, weight: EscoinWeight, epilogue: Epilogue, target,
                     config: Optional[ScheduleConfig] = None, tuned: bool = False,
                     split_k: int = 1):
    """The scheduled IRModule for ``target`` and the ELL arrays it expects. A ``tuned`` config
    (``TuningLog.lookup``'s) runs on the work it was tuned on (``tuned_extents``), any other on
    its own ``extents``. ``split_k`` > 1 (GPU only, opt-in: ``schedule_gpu``) pads the rows to
    ``split_k`` times the multiple and splits each over that many blocks.

    Returns (mod, offsets, values, config)."""
    config = config or untuned_config(spec, target, weight.dtype)
    wanted = GpuConfig if is_gpu(target) else CpuConfig
    if not isinstance(config, wanted):
        raise ArgumentError(f"a {target.kind.name} target needs a {wanted.__name__}, got "
                        f"{type(config).__name__}")
    config = config.validate() if wanted is GpuConfig else config
    domain, multiple = tuned_extents(spec, target, weight.dtype) if tuned else \
        extents(spec, config)
    if isinstance(config, GpuConfig) and (multiple % config.chunk or
                                          domain[0] % config.images_per_thread or
                                          domain[1] % config.rows_per_thread):
        raise ArgumentError(f"{config} does not fit the tuned work (images, rows) {domain}, rows "
                         f"padded to a multiple of {multiple}")
    if split_k > 1 and not isinstance(config, GpuConfig):
        raise ArgumentError(f"split_k={split_k} needs a GPU target, got {target.kind.name}")
    offsets, values = ell_arrays(spec, weight, multiple * split_k)
    half_chunk = None
    if isinstance(config, GpuConfig) and config.half_sums:
        if not half_sums_apply(spec, config, weight.dtype) or split_k > 1:
            raise ArgumentError(
                f"GpuConfig.half_sums needs a half-precision kernel (got {weight.dtype}) with "
                f"blocked images in pairs (block_images=True, an even images_per_thread, and "
                f"for a kernel without padding a batch it divides) or one image per thread "
                f"(images_per_thread=1), and no split_k: {config} "
                "(schedule.gpu.with_half_sums makes such a config)")
        half_chunk = config.chunk
    func = sparse_conv2d_primfunc(spec, offsets.shape[1], epilogue, domain, weight.dtype,
                                  half_chunk)
    sch = s_tir.Schedule(func)
    sch = schedule_gpu(sch, config, split_k) if isinstance(config, GpuConfig) else \
        schedule_cpu(sch, config)
    return sch.mod, offsets, values, config


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
