"""The Escoin GPU schedule (CUDA), a template whose knobs tuning searches.

Mapping, after the paper: a thread block owns a tile of output channels x output pixels x images;
threads cover output columns (adjacent threads read adjacent inputs, so loads coalesce) and rows;
each thread keeps a register tile of ``images x channels x rows`` accumulators and walks the
non-zeros of its channels once for the whole tile, so every weight it loads is reused
``images x rows`` times from registers. The block's CSR rows are staged through shared memory in
chunks; inputs come through the read-only cache.

Knob values are ints, or MetaSchedule random variables when the tuner drives the template.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional

from tvm import s_tir

from ...errors import ArgumentError
from .operator import reads_in_place
from ..conv_spec import Conv2dSpec
from .schedule_common import blocks, chunk_sum_blocks, loops_below, read_index, write_back
from .packed_half import LANES, intrinsic_name

MAX_THREADS = 1024
THREAD_AXES = ("threadIdx.z", "threadIdx.y", "threadIdx.x")


@dataclass(frozen=True)
class GpuConfig:
    threads_x: int = 16  # threads over output columns
    threads_y: int = 4  # threads over output rows
    channel_threads: int = 1  # threads over output channels (each with its own channel tile)
    channel_steps: int = 1  # channel tiles a block walks one after another: its input tile
    #                         stays in L1 across them instead of being re-read by other blocks
    rows_per_thread: int = 2  # register tile: output rows per thread
    channels_per_thread: int = 4  # register tile: output channels per thread
    images_per_thread: int = 1  # register tile: images per thread
    chunk: int = 16  # non-zeros staged per step; the rows are padded to a multiple of it
    stage_weights: bool = True  # CSR rows through shared memory (else straight from global/L1)
    unroll: bool = True  # unroll each chunk of the non-zero loop (else nvcc decides)
    block_images: bool = False  # the padded input laid out (N/v, C*Hp*Wp, v) with v =
    #                             images_per_thread, so a thread's v images at a tap are one
    #                             aligned vector load (``block_images`` below)
    half_sums: bool = False  # half precision: each chunk's non-zeros summed in the input
    #                          dtype, the chunks' sums in float32 (``operator.sparse_conv2d_te``,
    #                          half_chunk); with blocked images in pairs as packed two-lane FMAs
    #                          (HFMA2, the default from batch 4), with one image per thread as
    #                          scalar ones (an option: 1.04x at batch 1, docs/findings.md)

    # traces of templates without half sums, and without blocked images, recorded no decision
    # for these last knobs (``template.decode`` reads them as off)
    OPTIONAL_TRAILING = 2

    @property
    def threads(self) -> int:
        return self.threads_x * self.threads_y * self.channel_threads

    def validate(self) -> "GpuConfig":
        for field in fields(self):
            value = getattr(self, field.name)
            if field.type in (int, "int") and (not isinstance(value, int) or isinstance(value, bool)):
                raise ArgumentError(f"GpuConfig.{field.name} must be an int, got {value!r}")
        if min(self.threads_x, self.threads_y, self.channel_threads, self.channel_steps,
               self.rows_per_thread,
               self.channels_per_thread, self.images_per_thread, self.chunk) < 1:
            raise ArgumentError(f"GpuConfig knobs must be >= 1: {self}")
        if self.threads > MAX_THREADS:
            raise ArgumentError(f"GpuConfig asks for {self.threads} threads per block (max {MAX_THREADS})")
        return self


def pow2_at_least(value: int, cap: int) -> int:
    """The smallest power of two >= value, at most cap."""
    p = 1
    while p < value and p < cap:
        p *= 2
    return p


def blocks_images(spec: Conv2dSpec, config: GpuConfig) -> bool:
    """Whether ``config.block_images`` takes effect for ``spec``."""
    return _blocking_applies(config, reads_in_place(spec), spec.batch)


def _blocking_applies(config: GpuConfig, in_place: bool, batch: int) -> bool:
    """Blocked images need more than one image per thread, and a kernel that reads its input in
    place (no padding) a batch that the images per thread divide (its copy holds the real
    images only, where a padded copy is rounded up with zero images)."""
    v = config.images_per_thread
    return config.block_images and v > 1 and (not in_place or batch % v == 0)


def tiles_divide(domain, config: GpuConfig) -> bool:
    """Whether the thread blocks of ``config`` tile the sum's domain (images, channels, rows,
    columns) exactly, with no bounds check. Half sums need it: TIR's tensorize, which puts in
    their packed FMAs, does not match an update under a check on a block index, and a check on
    a thread index lands on every load and FMA of the chunk (measured 0.5-0.7x)."""
    images, channels, rows, cols = domain
    k_tile = config.channel_steps * config.channel_threads * config.channels_per_thread
    y_tile = config.threads_y * config.rows_per_thread
    return (images % config.images_per_thread == 0 and channels % k_tile == 0 and
            rows % y_tile == 0 and cols % config.threads_x == 0)


def half_sums_apply(spec: Conv2dSpec, config: GpuConfig, dtype: str) -> bool:
    """Whether ``config``'s tile can sum in half precision: a half dtype, and images blocked
    in pairs (the lanes of a packed FMA) that take effect for ``spec``, or one image per thread
    (scalar FMAs)."""
    return dtype != "float32" and (
        (blocks_images(spec, config) and config.images_per_thread % LANES == 0) or
        config.images_per_thread == 1)


def with_half_sums(spec: Conv2dSpec, config: GpuConfig, dtype: str) -> Optional[GpuConfig]:
    """``config`` with half sums, its threads over rows and columns changed where needed so
    that its blocks tile the output exactly (``tiles_divide``; about as many threads), or None
    where half sums do not apply (``half_sums_apply``) or the tile does not divide the
    channels."""
    if not half_sums_apply(spec, config, dtype):
        return None
    r = config.rows_per_thread
    units = -(-spec.out_h // r)  # row tiles
    fitted = replace(config, threads_x=_fit(config.threads_x, spec.out_w),
                     threads_y=_fit(config.threads_y, units), half_sums=True)
    images = -(-spec.batch // config.images_per_thread) * config.images_per_thread
    domain = (images, spec.out_channels, units * r, spec.out_w)
    return fitted if fitted.threads <= MAX_THREADS and tiles_divide(domain, fitted) else None


def _fit(threads: int, extent: int) -> int:
    """``threads`` if they divide ``extent``, else the divisor of ``extent`` up to 128 nearest
    to it (``extent`` itself included: one block then covers it, with no thread idle)."""
    if extent % threads == 0:
        return threads
    return min((d for d in range(1, min(extent, 128) + 1) if extent % d == 0),
               key=lambda d: (abs(math.log(d / threads)), -d))


def schedule_gpu(sch: s_tir.Schedule, config: GpuConfig, split_k: int = 1) -> s_tir.Schedule:
    """Applies the Escoin mapping to a sparse_conv2d PrimFunc whose rows are padded to a
    multiple of ``config.chunk`` (of ``split_k * config.chunk`` with ``split_k``).

    ``split_k`` > 1 splits each row's non-zeros over that many thread blocks (``rfactor``): more
    blocks and shorter serial walks when the output alone gives too few threads (batch 1); a
    second small kernel sums the partial sums and applies the epilogue. Not a default or a knob:
    it pays on few layers (docs/findings.md, "Split-K at batch 1").

    A PrimFunc that sums chunks in half precision first (``half_chunk``, built for a config with
    ``half_sums``) gets those sums computed per thread tile with packed FMAs (scalar ones for
    a tile of one image)."""
    pad, conv, epilogue = blocks(sch)
    chunk_sums = chunk_sum_blocks(sch)
    partial = None if chunk_sums is None else chunk_sums[1]
    in_place = pad is None
    # the blocks that read the input and offsets (the gather), and the values
    reader, weigher = (conv, conv) if chunk_sums is None else chunk_sums
    blocked = _blocking_applies(config, in_place, _input_batch(sch, reader) if in_place else 0)
    # (knobs that are tuning's random variables come from a point that passed the check)
    concrete = all(isinstance(getattr(config, f.name), int) for f in fields(config))
    paired = blocked and config.images_per_thread % LANES == 0
    # scalar sums need no tensorize, so blocks that do not tile the output only cost them a
    # bounds check around each load and FMA
    scalar = not blocked and config.images_per_thread == 1
    untiled = concrete and not scalar and not tiles_divide(_domain(sch, conv), config)
    if partial is not None and (not (paired or scalar) or split_k > 1 or untiled):
        raise ArgumentError(f"half sums need blocked images in pairs (with thread blocks that "
                            f"tile the output {_domain(sch, conv)}: with_half_sums fits them) or "
                            f"one image per thread, and no split-K: {config}, split_k={split_k}")
    if blocked:
        pad = block_images(sch, pad, reader, config.images_per_thread)
    final = j_split = None
    if split_k > 1:
        n, k, y, x, j = sch.get_loops(conv)
        j_split, _ = sch.split(j, [split_k, None])
        sch.reorder(n, j_split, k, y, x)
        final, conv = conv, sch.rfactor(j_split, 0)
        reader = weigher = conv
        n, j_split, k, y, x, j = sch.get_loops(conv)
    else:
        n, k, y, x, j = sch.get_loops(conv)
    k_block, k_step, k_thread, k_reg = sch.split(
        k, [None, config.channel_steps, config.channel_threads, config.channels_per_thread])
    n_block, n_reg = sch.split(n, [None, config.images_per_thread])
    y_block, y_thread, y_reg = sch.split(y, [None, config.threads_y, config.rows_per_thread])
    x_block, x_thread = sch.split(x, [None, config.threads_x])
    # the non-zero loop in chunks (with half sums, the loop over the chunks' sums already is)
    j_chunk, *j_inner = sch.split(j, [None, config.chunk]) if partial is None else (j,)
    splits = [] if j_split is None else [j_split]
    tile = (k_reg, y_reg, n_reg) if blocked else (n_reg, k_reg, y_reg)
    sch.reorder(*splits, k_block, n_block, y_block, x_block, k_thread, y_thread, x_thread, k_step,
                j_chunk, *j_inner, *tile)
    # the splits as more blocks of output channels (a block's loops only: fused with the thread
    # loops, the accumulators' indices would not be constants and would leave the registers)
    sch.bind(k_block if j_split is None else sch.fuse(j_split, k_block), "blockIdx.y")
    sch.bind(sch.fuse(n_block, y_block, x_block), "blockIdx.x")
    # with half sums one thread axis each: the chunk sums' bounds predicate stays affine
    _bind_threads(sch, (k_thread, y_thread, x_thread), separate=partial is not None)

    local = write_back(sch, conv, k_step, None if final is not None else epilogue)
    if partial is not None:
        sums = _place_chunk_sums(sch, *chunk_sums, j_chunk)
    if config.stage_weights:
        for name, block in (("offsets", reader), ("values", weigher)):
            staged = sch.cache_read(block, read_index(sch, block, name), "shared")
            sch.compute_at(staged, j_chunk, preserve_unit_loops=True)
            flat = sch.fuse(*loops_below(sch, staged, j_chunk))
            _, *lanes = sch.split(flat, [None, config.channel_threads, config.threads_y,
                                         config.threads_x])
            _bind_threads(sch, lanes, separate=partial is not None)
    # the v images of a tap: one vector load, v FMAs (TVM's CUDA code has no vector of an odd
    # number of half-precision lanes: those are loaded one by one)
    vector = blocked and not (config.images_per_thread % 2 and _dtype(sch) != "float32")
    if vector:
        sch.vectorize(n_reg)
    init = sch.decompose_reduction(conv, j_chunk)
    # The register tile must be fully unrolled, or its accumulators spill to local memory.
    for loop in (k_reg, y_reg) if vector else (n_reg, k_reg, y_reg):
        sch.unroll(loop)
    if config.unroll and j_inner:
        sch.unroll(j_inner[0])
    for loop in loops_below(sch, init, k_step):
        sch.unroll(loop)
    for loop in loops_below(sch, local, k_step):
        sch.unroll(loop)
    if partial is not None:
        _pack_chunk_sums(sch, partial, sums, config)

    if final is not None:
        _sum_partials(sch, final, epilogue)
    if pad is not None:
        blocks_, threads = sch.split(sch.fuse(*sch.get_loops(pad)), [None, 256])
        sch.bind(blocks_, "blockIdx.x")
        sch.bind(threads, "threadIdx.x")
    return sch


def _bind_threads(sch: s_tir.Schedule, loops, separate: bool) -> None:
    """Binds (channel, row, column) thread loops: fused into threadIdx.x, or with ``separate``
    to threadIdx.z, .y and .x."""
    if separate:
        for loop, axis in zip(loops, THREAD_AXES):
            sch.bind(loop, axis)
    else:
        sch.bind(sch.fuse(*loops), "threadIdx.x")


def _place_chunk_sums(sch: s_tir.Schedule, tap, partial, j_chunk):
    """Computes a thread's sums of one chunk under ``j_chunk``, in registers, with its images
    adjacent (the lanes of a packed FMA); the inputs of each non-zero gathered into registers
    first, a vector load per channel and row. Returns the sums' loops (non-zero, channels,
    rows, images)."""
    sch.transform_layout(partial, ("write", 0), lambda n, k, y, x, c: (k, y, x, c, n))
    sch.set_scope(partial, 0, "local")
    sch.compute_at(partial, j_chunk, preserve_unit_loops=True)
    n, k, y, x, c, i = loops_below(sch, partial, j_chunk)
    sch.reorder(x, c, i, k, y, n)
    sch.transform_layout(tap, ("write", 0), lambda n, k, y, x, c, i: (k, y, x, c, i, n))
    sch.set_scope(tap, 0, "local")
    sch.compute_at(tap, i, preserve_unit_loops=True)
    t_n, t_k, t_y, *units = loops_below(sch, tap, i)
    sch.reorder(t_k, t_y, *units, t_n)
    sch.vectorize(t_n)
    sch.unroll(t_k)
    sch.unroll(t_y)
    return i, k, y, n


def _pack_chunk_sums(sch: s_tir.Schedule, partial, sums, config: GpuConfig) -> None:
    """Each pair of images of the chunk sums' update as one packed FMA; the rest unrolled."""
    i, k, y, n = sums
    init = sch.decompose_reduction(partial, i)
    for loop in sch.get_loops(init)[-3:]:  # its channels, rows and images
        sch.unroll(loop)
    if config.images_per_thread == 1:  # one image: plain half FMAs
        for loop in (k, y, n) + ((i,) if config.unroll else ()):
            sch.unroll(loop)
        return
    pairs, lanes = sch.split(n, [None, LANES])
    for loop in (k, y, pairs) + ((i,) if config.unroll else ()):
        sch.unroll(loop)
    dtype = str(sch.get(partial).writes[0].source.dtype)
    sch.tensorize(lanes, intrinsic_name(dtype, "shared" if config.stage_weights else "global"))


def block_images(sch: s_tir.Schedule, pad, reader, v: int):
    """Lays the input the kernel gathers from out as (N/v, C*Hp*Wp, v): the padded copy, or for
    a kernel that reads its input in place a copy made for the purpose. Returns the copy's block,
    which iterates in the new order (consecutive threads write consecutive values; a warp reads
    32-byte runs of each of its v images)."""
    if pad is None:
        pad = sch.cache_read(reader, read_index(sch, reader, "data"), "global")
    def index_map(n, f):
        return (n // v, f, n % v)
    sch.transform_layout(pad, ("write", 0), index_map)
    sch.transform_block_layout(pad, index_map)
    return pad


def _domain(sch: s_tir.Schedule, conv):
    """(images, channels, rows, columns) the sum runs over."""
    return tuple(int(d) for d in sch.get(conv).writes[0].source.shape)


def _dtype(sch: s_tir.Schedule) -> str:
    """The kernel's element type: its first parameter's, the input."""
    func = sch.mod["main"]
    return str(func.params[0].dtype)


def _input_batch(sch: s_tir.Schedule, conv) -> int:
    """The batch of the input an in-place kernel reads."""
    return int(sch.get(conv).reads[read_index(sch, conv, "data")].source.shape[0])


def _sum_partials(sch: s_tir.Schedule, final, epilogue) -> None:
    """The split-K second kernel: a thread per output sums its partial sums, then the epilogue
    (which also crops a rounded-up domain: the sum is computed only where it is stored)."""
    if epilogue is None:
        n, j_split, k, y, x = sch.get_loops(final)
        sch.reorder(n, k, y, x, j_split)
        outer = sch.fuse(n, k, y, x)
    else:
        outer = sch.fuse(*sch.get_loops(epilogue))
    blocks_, threads = sch.split(outer, [None, 256])
    sch.bind(blocks_, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    if epilogue is not None:
        sch.set_scope(final, 0, "local")
        sch.compute_at(final, threads, preserve_unit_loops=True)
