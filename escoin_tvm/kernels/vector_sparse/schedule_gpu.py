"""The vector-sparse GPU schedule (CUDA): the gathered GEMM of ``operator.py`` on tensor cores.

A thread block owns one block of G = 16 output channels, one block of ``image_block`` images
and a tile of ``16 * fragments * warps`` rows of M (output pixels, each with the block's
images). For each step of ``16 * k_fragments`` taps (K) it gathers the input at those taps for
its rows into shared memory ([taps, rows], adjacent threads on adjacent rows, so the loads
coalesce; with 8 images per block, 8 rows are one 16-byte load), copies the block's values for
those taps beside it, then each warp runs ``ldmatrix`` and ``mma.sync`` m16n8k16 over its own
``fragments`` 16 x 16 output tiles, accumulating in float32 registers
(``tensor_intrin.py``). The sums go to global memory once, and the epilogue (a kernel of its
own, ``schedule_epilogue.py``) puts each channel in its place.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from tvm import s_tir

from ...errors import ArgumentError, DTypeError
from ..conv_spec import Conv2dSpec
from . import schedule_epilogue, tensor_intrin
from .operator import (EPILOGUE_BLOCK, FLAT_PAD_BLOCK, GATHER_BLOCK, PAD_BLOCK, SUM_BLOCK,
                       padded_pixels)

MMA = 16  # the M, N and K of one tensor-core tile
MAX_WARPS = 32
GPU_GROUP = 16  # the N of the tiles: the only block size the GPU schedule takes
IMAGE_BLOCKS = (1, 8)
VECTOR = 8  # half values per 16-byte load
PAD_ROW = 8  # halves added to each shared-memory row: ldmatrix's rows then hit distinct banks


@dataclass(frozen=True)
class TensorCoreConfig:
    warps: int = 2  # warps per thread block, each over its own rows of M
    fragments: int = 2  # 16-row tiles per warp
    k_fragments: int = 2  # 16-tap steps per shared-memory stage
    image_block: int = 1  # images per row block of M (1, or 8: a tap's 8 values one load)
    stages: int = 1  # shared-memory stages in flight: 2 loads the next while the tensor cores
    #                  run this one (cp.async, where the loads are 16-byte vectors)

    @property
    def m_tile(self) -> int:
        """Rows of M per thread block."""
        return MMA * self.fragments * self.warps

    @property
    def k_tile(self) -> int:
        """Taps per shared-memory stage; the tap lists are padded to a multiple of it."""
        return MMA * self.k_fragments

    def validate(self) -> "TensorCoreConfig":
        for field in fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ArgumentError(f"TensorCoreConfig.{field.name} must be an int >= 1, "
                                    f"got {value!r}")
        if self.image_block not in IMAGE_BLOCKS:
            raise ArgumentError(f"TensorCoreConfig.image_block must be one of {IMAGE_BLOCKS}, "
                                f"got {self.image_block!r}")
        if self.stages not in (1, 2):
            raise ArgumentError(f"TensorCoreConfig.stages must be 1 or 2, got {self.stages!r}")
        if self.warps > MAX_WARPS:
            raise ArgumentError(f"TensorCoreConfig asks for {self.warps} warps per block "
                                f"(max {MAX_WARPS})")
        return self


_TILES = {128: (4, 2), 64: (2, 2), 32: (2, 1), 16: (1, 1)}  # pixel tile: (warps, fragments)
_WASTE = 1.15  # a larger tile may pad an image's pixels this much more than the smallest


def default_config(spec: Conv2dSpec, width: int) -> TensorCoreConfig:
    """From a batch of 8: blocks of 8 images (one 16-byte load per tap and pixel), one stage,
    and the largest M tile that pads an image block's rows at most 15% more than 16 would (its
    pixels are rounded up to the tile). Below: one warp of one 16-row tile per thread block
    (the most blocks for a small output) and two stages. Two 16-tap steps per stage unless the
    tap lists are shorter. Measured: docs/results.md, "Vector-sparse kernels"."""
    k_fragments = 1 if width <= MMA else 2
    if spec.batch < VECTOR:
        return TensorCoreConfig(1, 1, k_fragments, 1, 2)
    least = padded_pixels(spec, min(_TILES), VECTOR)
    tile = max(t for t in _TILES if padded_pixels(spec, t, VECTOR) <= _WASTE * least)
    warps, fragments = _TILES[tile]
    return TensorCoreConfig(warps, fragments, k_fragments, VECTOR, 1)


def check_gpu(dtype: str, group: int) -> None:
    """The GPU schedule's limits, as errors that name them."""
    if dtype not in tensor_intrin.DTYPES:
        raise DTypeError(f"the vector-sparse GPU kernels run on tensor cores in "
                         f"{' or '.join(tensor_intrin.DTYPES)}, not {dtype}; convert the model "
                         "(model.half()) or use the Escoin CUDA-core kernels for float32")
    if group != GPU_GROUP:
        raise ArgumentError(f"the vector-sparse GPU kernels take blocks of {GPU_GROUP} output "
                            f"channels (the N of a tensor-core tile), got group={group}")


def schedule_gpu(sch: s_tir.Schedule, spec: Conv2dSpec, config: TensorCoreConfig, dtype: str,
                 in_place: bool = False, linear: bool = False) -> s_tir.Schedule:
    """Applies the tensor-core mapping to a vector-sparse PrimFunc of ``spec`` built with
    ``config.image_block``, ``in_place``, rows per image block a multiple of ``config.m_tile``
    and tap lists padded to a multiple of ``config.k_tile``. ``config``'s warps, fragments and
    k_fragments may be a tuning template's random variables (``tuning_space.py``). ``linear``:
    the PrimFunc is a linear layer's (``operator.vector_sparse_linear_te``; ``spec`` its
    ``linear_spec``), whose (batch, features) output the epilogue writes in one flat loop."""
    if all(isinstance(getattr(config, f.name), int) for f in fields(config)):
        config.validate()
    tensor_intrin.register()
    sch.compute_inline(sch.get_sblock(FLAT_PAD_BLOCK))
    # first: the epilogue's staging reads the sums while their producer is still a plain block
    if linear:
        schedule_epilogue.flat(sch, EPILOGUE_BLOCK)
    else:
        schedule_epilogue.schedule_epilogue(sch, spec, config.image_block, in_place)
    warps, fragments, k_fragments = config.warps, config.fragments, config.k_fragments
    gather, sums = sch.get_sblock(GATHER_BLOCK), sch.get_sblock(SUM_BLOCK)
    b, n, p, g, t = sch.get_loops(sums)
    p, p_mma = sch.split(p, [None, MMA])
    t, t_mma = sch.split(t, [None, MMA])
    sch.reorder(b, n, p, t, p_mma, g, t_mma)
    tile = sch.blockize(p_mma)  # one 16 x 16 x 16 product
    p_block, p_warp, p_fragment = sch.split(p, [None, warps, fragments])
    t_stage, t_step = sch.split(t, [None, k_fragments])
    sch.reorder(b, n, p_block, p_warp, t_stage, t_step, p_fragment)
    sch.bind(sch.fuse(b, n, p_block), "blockIdx.x")
    sch.bind(p_warp, "threadIdx.y")

    # the gather, [taps, rows] in shared memory, rows across the threads
    sch.set_scope(gather, 0, "shared")
    sch.compute_at(gather, t_stage)
    taps, rows = sch.get_loops(gather)[-2:]
    if config.image_block > 1:
        rows, images = sch.split(rows, [None, config.image_block])
        sch.vectorize(images)
    _, ty, tx = sch.split(sch.fuse(taps, rows), [None, warps, 32])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.storage_align(gather, 0, axis=-2, factor=32, offset=PAD_ROW)
    # the block's values at those taps, [taps, 16], in 16-byte vectors
    values = sch.cache_read(tile, 1, "shared")
    sch.compute_at(values, t_stage)
    _, ty, tx, vector = sch.split(sch.fuse(*sch.get_loops(values)[-2:]), [None, warps, 32, 8])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vector)
    sch.storage_align(values, 0, axis=-2, factor=32, offset=PAD_ROW)

    # fragments: A and B per 16-tap step, C (float32) per warp for the whole sum
    a_frag = sch.cache_read(tile, 0, "warp")
    b_frag = sch.cache_read(tile, 1, "warp")
    sch.compute_at(a_frag, t_step)
    sch.compute_at(b_frag, t_step)
    c_frag = sch.cache_write(tile, 0, "warp")
    sch.reverse_compute_at(c_frag, p_warp)
    sch.decompose_reduction(tile, t_stage)
    if config.stages > 1:  # the gather and the values of step i + 1 during the products of i
        sch.annotate(t_stage, "software_pipeline_stage", [0, 0, 1])
        sch.annotate(t_stage, "software_pipeline_order", [0, 1, 2])
        sch.annotate(t_stage, "software_pipeline_async_stages", [0])

    def tiles_of(block):
        """The block's last two loops in 16 x 16 tiles; returns the loop over a tile's rows."""
        rows, cols = sch.get_loops(block)[-2:]
        rows_o, rows_i = sch.split(rows, [None, MMA])
        cols_o, cols_i = sch.split(cols, [None, MMA])
        sch.reorder(rows_o, cols_o, rows_i, cols_i)
        return rows_i

    load_a, load_b, store_c = tiles_of(a_frag), tiles_of(b_frag), tiles_of(c_frag)
    layout = tensor_intrin.fragment_layout
    sch.transform_layout(a_frag, ("write", 0), lambda b, n, t, p: (
        b, n, t // MMA, p // MMA, *layout(t % MMA, p % MMA)))
    sch.transform_layout(b_frag, ("write", 0), lambda b, t, g: (
        b, t // MMA, g // MMA, *layout(t % MMA, g % MMA)))
    sch.transform_layout(c_frag, ("read", 0), lambda b, n, p, g: (
        b, n, p // MMA, g // MMA, *layout(p % MMA, g % MMA)))
    sch.tensorize(load_a, tensor_intrin.load_name(dtype, "a"))
    sch.tensorize(load_b, tensor_intrin.load_name(dtype, "b"))
    sch.tensorize(sch.get_loops(sums)[-3], tensor_intrin.mma_name(dtype))
    sch.tensorize(sch.get_loops(sch.get_sblock(SUM_BLOCK + "_init"))[-2], tensor_intrin.FILL)
    sch.tensorize(store_c, tensor_intrin.STORE)

    schedule_epilogue.schedule_pad(sch, PAD_BLOCK, config.image_block)
    return sch
