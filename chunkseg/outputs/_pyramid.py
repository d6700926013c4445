"""Pyramid levels of a written output, out of core: 2 x 2 reduction kernels and their graph.

Each level halves the one before it along ``y`` and ``x`` (an odd last row or column is
repeated first, as ``numpy.pad(mode="edge")``): the mean of the 2 x 2 pixels for
probabilities and logits (NaN-aware: the mean of the finite ones, NaN where none is finite,
so skipped background stays NaN), the mode for labels (ties go to the first of top-left,
top-right, bottom-left, bottom-right: the nearest pixel when all four differ). A level is
computed from the previous level as written in the store, one task per output chunk reading a
``2 C`` square of it, so memory per task is four chunks of the previous level, whatever the
image size; every chunk of a level is written once, whole, by one task.

The kernels are in-memory numpy; :func:`build_level` wires one level into a Dask graph. The
scheme is that of OME-Zarr writers (ome-zarr-py's ``Scaler``, ngff-zarr's ``to_multiscales``):
factor 2 per level, mean for intensities and a nearest/mode reduction for labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from ..scheduling import compute
from ._arrays import ArrayWriter

__all__ = ["MIN_SIZE", "downsample_mean", "downsample_mode", "level_shapes", "level_chunks",
           "build_level", "write_levels"]

MIN_SIZE = 512
"""The automatic pyramid stops at the first level whose larger side is at most this, pixels."""


def _quads(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four 2 x 2 neighbours of ``(..., H, W)``, edge-padded to even sizes: top-left,
    top-right, bottom-left, bottom-right, each ``(..., ceil(H/2), ceil(W/2))``."""
    h, w = block.shape[-2:]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
    if h % 2 or w % 2:
        block = np.pad(block, pad, mode="edge")
    return (block[..., 0::2, 0::2], block[..., 0::2, 1::2],
            block[..., 1::2, 0::2], block[..., 1::2, 1::2])


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """Halve an array along its last two axes by the NaN-aware mean of each 2 x 2 square.

    Parameters
    ----------
    block : (..., H, W) ndarray
        Probabilities or logits (NaN marks pixels no tile ran on), or an ingested image of any
        numeric dtype.

    Returns
    -------
    (..., ceil(H / 2), ceil(W / 2)) ndarray
        Same dtype (the sum is taken in float32 or wider). Each value is the mean of the finite
        values of its 2 x 2 square (an odd last row/column is repeated first); NaN where none of
        the four is finite. An integer (or boolean) dtype gets the mean rounded to the nearest
        integer (halves to even, :func:`numpy.rint`).
    """
    work = np.result_type(block.dtype, np.float32)
    quads = [q.astype(work, copy=False) for q in _quads(block)]
    finite = [np.isfinite(q) for q in quads]
    total = sum(np.where(f, q, 0) for q, f in zip(quads, finite))
    count = sum(f.astype(work) for f in finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / count
    if block.dtype.kind in "biu":
        out = np.rint(out)
    return out.astype(block.dtype, copy=False)


def downsample_mode(block: np.ndarray) -> np.ndarray:
    """Halve an array along its last two axes by the most frequent value of each 2 x 2 square.

    Parameters
    ----------
    block : (..., H, W) integer ndarray
        Labels (class ids or instance ids).

    Returns
    -------
    (..., ceil(H / 2), ceil(W / 2)) ndarray
        Same dtype. Ties go to the first of top-left, top-right, bottom-left, bottom-right, so
        a square of four different values keeps its top-left one (nearest-neighbour
        downsampling); an odd last row/column is repeated first.
    """
    quads = np.stack(_quads(block))  # (4, ..., h, w)
    counts = (quads[:, None] == quads[None, :]).sum(axis=1)  # how often each of the 4 occurs
    pick = np.argmax(counts, axis=0)  # the first of the most frequent
    return np.take_along_axis(quads, pick[None], axis=0)[0]


def level_shapes(shape: Sequence[int], levels: int | None = None,
                 min_size: int = MIN_SIZE) -> list[tuple[int, int]]:
    """The ``(y, x)`` shape of every pyramid level, full resolution first.

    Parameters
    ----------
    shape : (int, int)
        Full-resolution ``(H, W)``, pixels.
    levels : int, optional
        Number of levels, full resolution included (1: no pyramid). Default: halve until the
        larger side is at most ``min_size``.
    min_size : int, default :data:`MIN_SIZE`

    Returns
    -------
    list of (int, int)
        Level ``k`` is ``ceil(H / 2^k), ceil(W / 2^k)``.
    """
    h, w = (int(s) for s in shape)
    out = [(h, w)]
    while (len(out) < levels) if levels is not None else (max(out[-1]) > min_size):
        ph, pw = out[-1]
        if ph == 1 and pw == 1:
            break
        out.append((math.ceil(ph / 2), math.ceil(pw / 2)))
    return out


def level_chunks(chunks: Sequence[int], shape: Sequence[int]) -> tuple[int, ...]:
    """The chunks of a level: the full-resolution chunks, cut to the level's shape."""
    return tuple(min(int(c), int(n)) for c, n in zip(chunks, shape))


def build_level(source: Any, target: Any, kind: str) -> Any:
    """A lazy write of one pyramid level, computed from the level before it.

    Parameters
    ----------
    source : zarr.Array
        The previous level, ``(..., H, W)``, as written.
    target : zarr.Array or chunkseg.outputs._arrays.ArrayWriter
        The new level, ``(..., ceil(H/2), ceil(W/2))``, chunked ``(..., C_y, C_x)``; each task
        writes whole chunks of it.
    kind : {"mean", "mode"}
        :func:`downsample_mean` (probabilities, logits) or :func:`downsample_mode` (labels).

    Returns
    -------
    dask.delayed.Delayed
        Computing it writes the level (``dask.array.store``, no lock: tasks own whole chunks).
    """
    kernel = {"mean": downsample_mean, "mode": downsample_mode}[kind]
    chunks = tuple(target.chunks if not hasattr(target, "array") else target.array.chunks)
    lead = source.ndim - 2
    # one source block per target chunk: 2 C source pixels give C target pixels
    src = da.from_zarr(source, chunks=tuple(source.shape[:lead]) + tuple(2 * c for c in chunks[-2:]))
    out_chunks = src.chunks[:lead] + tuple(tuple(math.ceil(n / 2) for n in axis)
                                           for axis in src.chunks[lead:])
    low = src.map_blocks(kernel, chunks=out_chunks, dtype=source.dtype,
                         meta=np.empty((0,) * source.ndim, source.dtype))
    return da.store(low, target, lock=False, compute=False)


def write_levels(pyramids: Sequence[tuple[Sequence[Any], str]], location: str, *,
                 scheduler: Any = None, progress: bool = False) -> None:
    """Fill the levels 1... of one or more pyramids, each level from the one before as written.

    The one writer of every pyramid chunkseg stores (semantic outputs and instance ids): level
    ``i`` of all pyramids is one computation, after level ``i - 1`` of all of them is written;
    every chunk is stored, even one equal to the fill value, and a failed write raises
    :class:`~chunkseg.errors.OutputWriteError` naming the array.

    Parameters
    ----------
    pyramids : sequence of (sequence of zarr.Array, {"mean", "mode"})
        Each pyramid's arrays, full resolution (written) first, then the created, empty levels;
        and its reduction (:func:`build_level`'s ``kind``).
    location : str
        The store, as shown in messages (:func:`chunkseg.outputs._target.describe_location`).
    scheduler, progress
        As :func:`chunkseg.scheduling.compute`.
    """
    full = {"write_empty_chunks": True}
    for i in range(1, max((len(arrays) for arrays, _ in pyramids), default=0)):
        writes = [build_level(arrays[i - 1], ArrayWriter(arrays[i].with_config(full), location),
                              kind) for arrays, kind in pyramids if i < len(arrays)]
        compute(*writes, scheduler=scheduler, progress=progress, label=f"pyramid level {i}")
