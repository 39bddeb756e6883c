"""The vector-sparse GPU schedule's two small kernels around the GEMM: the padded input
(``schedule_pad``: a tap's images written as one vector) and the epilogue
(``schedule_epilogue``: the float32 sums back into the NCHW output, through shared memory).

The sums are laid out as the tensor cores produce them, ``[block, image block, pixel * v +
image, channel]``, while the output runs along a row of pixels: read in the output's order,
adjacent threads would read floats 16 * v apart (one used float per 32-byte sector), and in the
sums' order they would write halves an image apart. So each thread block takes one block of
channels, one image block and a tile of whole output rows (a contiguous run of the sums),
copies that run into shared memory with adjacent threads on adjacent floats, and writes the
output from there along its rows. The shared tile is padded by one float per pixel (a row of
16 channels, or a pixel's 8 images x 16 channels) so that threads on adjacent pixels read
distinct banks. This needs the channels in place (the weight's
``in_place``: the sums a tile reads are then known to the schedule); otherwise, and where no
tile of whole rows fits, the epilogue is one flat loop over the output.
"""
from __future__ import annotations

from tvm import s_tir

from ..conv_spec import Conv2dSpec
from .operator import EPILOGUE_BLOCK, SUM_BLOCK

THREADS = 256
STAGED_FLOATS = 8192  # sums per thread block's tile: 32 KiB, plus the padding of its rows
MIN_PIXELS = 8  # a tile of fewer pixels per row is left to the flat loop
GROUP = 16  # output channels per block (schedule_gpu.GPU_GROUP, which imports this module)


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def pixel_tile(spec: Conv2dSpec, image_block: int):
    """(output rows, columns) of an epilogue tile, or None where no tile fits: whole rows while
    they fit in ``STAGED_FLOATS``, else a divisor of the row of at least ``MIN_PIXELS``."""
    pixels = STAGED_FLOATS // (GROUP * image_block)
    if spec.out_w <= pixels:
        return _largest_divisor(spec.out_h, pixels // spec.out_w), spec.out_w
    columns = _largest_divisor(spec.out_w, pixels)
    return (1, columns) if columns >= MIN_PIXELS else None


def flat(sch: s_tir.Schedule, name: str) -> None:
    """One thread per element of ``name``'s output, in its own order."""
    block = sch.get_sblock(name)
    grid, threads = sch.split(sch.fuse(*sch.get_loops(block)), [None, THREADS])
    sch.bind(grid, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")


def schedule_pad(sch: s_tir.Schedule, name: str, image_block: int) -> None:
    """The padded input ``name`` (``[image block, flat, image]``): one thread per flat
    position, writing its ``image_block`` images as one vector while adjacent threads read
    adjacent positions of each image."""
    if image_block == 1:
        flat(sch, name)
        return
    block = sch.get_sblock(name)
    store = sch.cache_write(block, 0, "local")  # the vector is built in registers
    images, positions, image = sch.get_loops(store)
    grid, threads = sch.split(sch.fuse(images, positions), [None, THREADS])
    sch.bind(grid, "blockIdx.x")
    sch.bind(threads, "threadIdx.x")
    sch.vectorize(image)
    sch.compute_at(block, threads)
    sch.unroll(sch.get_loops(block)[-1])


def schedule_epilogue(sch: s_tir.Schedule, spec: Conv2dSpec, image_block: int,
                      in_place: bool) -> None:
    """Schedules the epilogue of a vector-sparse PrimFunc built with ``image_block`` and
    ``in_place``: staged through shared memory where it can be (above), else flat."""
    tile = pixel_tile(spec, image_block) if in_place else None
    if tile is None:
        flat(sch, EPILOGUE_BLOCK)
        return
    rows, columns = tile
    block = sch.get_sblock(EPILOGUE_BLOCK)
    n, k, y, x = sch.get_loops(block)
    images, n = sch.split(n, [None, image_block])
    channels, k = sch.split(k, [None, GROUP])
    y_tile, y = sch.split(y, [None, rows])
    x_tile, x = sch.split(x, [None, columns])
    sch.reorder(images, channels, y_tile, x_tile, n, k, y, x)
    tile = sch.fuse(images, channels, y_tile, x_tile)
    sch.bind(tile, "blockIdx.x")
    # threads that divide the tile: a ragged last step would widen the region the schedule
    # stages (it does not see the step's predicate) past the tile
    threads = _largest_divisor(image_block * GROUP * rows * columns, THREADS)
    sch.bind(sch.split(sch.fuse(n, k, y, x), [None, threads])[1], "threadIdx.x")

    sums = [region.source.name for region in sch.get(block).reads].index(SUM_BLOCK)
    staged = sch.cache_read(block, sums, "shared")
    sch.compute_at(staged, tile)
    sch.bind(sch.split(sch.fuse(*sch.get_loops(staged)[-2:]), [None, threads])[1],
             "threadIdx.x")
    if image_block == 1:  # rows of 17 floats: adjacent pixels in distinct banks
        sch.storage_align(staged, 0, axis=-2, factor=32, offset=GROUP + 1)
    else:  # a pixel's images x channels, padded by one float: the same across pixels
        sch.transform_layout(staged, ("write", 0), lambda b, nb, m, g: (
            b, nb, m // image_block, m % image_block, g))
        sch.storage_align(staged, 0, axis=-3, factor=32, offset=1)
