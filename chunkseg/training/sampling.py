"""Where training patches lie: the grid, mask fractions and the class counts of balanced draws.

The geometry of :class:`chunkseg.training.patches.PatchDataset`'s three ``sampling`` modes, on
lazy arrays: nothing here opens or reads a file itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dask
import numpy as np

__all__ = ["SAMPLINGS", "BALANCE_CELL", "CELL_CACHE_BYTES", "grid_starts", "grid_fractions",
           "mask_fraction", "count_cells", "draw_class_pixel", "centred_origin"]

#: The values ``sampling`` takes.
SAMPLINGS: tuple[str, ...] = ("grid", "random", "balanced")

#: Side of the cells over which ``sampling="balanced"`` counts classes (at most; a cell never
#: crosses a chunk of the label array). A draw reads one cell of labels.
BALANCE_CELL = 256
#: Label cells that ``sampling="balanced"`` keeps per process (least recently used dropped).
CELL_CACHE_BYTES = 32 * 2**20


def grid_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start coordinates of grid patches along one axis.

    Parameters
    ----------
    length, tile, stride : int
        Axis length, patch length and step, all positive, ``tile <= length``.

    Returns
    -------
    (n,) ndarray of int64
        ``0, stride, 2 * stride, ...`` while the patch fits, plus ``length - tile`` when the
        last of those does not end at ``length`` (a patch flush with the image end), so
        ``n = (length - tile) // stride + 1 + ((length - tile) % stride != 0)``. With
        ``stride <= tile`` every coordinate is inside some patch.

    Examples
    --------
    >>> grid_starts(10, 4, 4).tolist()
    [0, 4, 6]
    """
    starts = np.arange(0, length - tile + 1, stride, dtype=np.int64)
    if starts[-1] + tile < length:
        starts = np.append(starts, np.int64(length - tile))
    return starts


def _mask_range(start: np.ndarray | int, stop: np.ndarray | int, size: int, msize: int):
    """Mask pixels ``[lo, hi)`` covering image pixels ``[start, stop)`` (the rule of
    :func:`chunkseg.plan.tile_mask`: mask pixel ``i`` covers ``[i * H / M, (i + 1) * H / M)``)."""
    start, stop = np.asarray(start, np.int64), np.asarray(stop, np.int64)
    return (start * msize) // size, -((-stop * msize) // size)


def mask_fraction(read_mask: Callable[[tuple[int, int], tuple[int, int]], np.ndarray],
                  mask_shape: tuple[int, int], shape: tuple[int, int], tile: tuple[int, int],
                  y0: int, x0: int) -> float:
    """Foreground share of the mask pixels covering one patch.

    Parameters
    ----------
    read_mask : callable
        ``read_mask((r0, r1), (c0, c1))`` -> the mask window (any shape, foreground > 0).
    mask_shape, shape, tile : (int, int)
        ``(M_y, M_x)`` of the mask, ``(Y, X)`` of the image, ``(T_y, T_x)`` of the patch.
    y0, x0 : int
        The patch's origin in image pixels.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    (h, w), (ty, tx), (my, mx) = shape, tile, mask_shape
    r0, r1 = _mask_range(y0, y0 + ty, h, my)
    c0, c1 = _mask_range(x0, x0 + tx, w, mx)
    window = read_mask((int(r0), int(r1)), (int(c0), int(c1)))
    return float(np.mean(window > 0))


def grid_fractions(mask: Any, shape: tuple[int, int], tile: tuple[int, int], ys: np.ndarray,
                   xs: np.ndarray) -> np.ndarray:
    """Mask fraction of every grid patch: the integral image of the mask (lazy, dask) read at
    the patch corners only.

    Parameters
    ----------
    mask : dask array
        ``(M_y, M_x, 1)``, foreground > 0.
    shape, tile : (int, int)
        ``(Y, X)`` of the image, ``(T_y, T_x)`` of the patches.
    ys, xs : (n_y,), (n_x,) ndarray of int64
        Patch starts along y and x (:func:`grid_starts`).

    Returns
    -------
    (n_y, n_x) ndarray of float64
    """
    (h, w), (ty, tx) = shape, tile
    my, mx = mask.shape[:2]
    r0, r1 = _mask_range(ys, ys + ty, h, my)
    c0, c1 = _mask_range(xs, xs + tx, w, mx)
    rows, cols = np.unique(np.concatenate([r0, r1])), np.unique(np.concatenate([c0, c1]))
    fg = (mask[:, :, 0] > 0).astype(np.int64)
    integral = np.pad(fg.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
    corners = np.asarray(integral[rows][:, cols].compute(scheduler="threads"))
    a0, a1 = np.searchsorted(rows, r0), np.searchsorted(rows, r1)
    b0, b1 = np.searchsorted(cols, c0), np.searchsorted(cols, c1)
    total = (corners[a1[:, None], b1[None, :]] - corners[a0[:, None], b1[None, :]]
             - corners[a1[:, None], b0[None, :]] + corners[a0[:, None], b0[None, :]])
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return total / area


def _block_counts(block: np.ndarray, p: int, y0: int, x0: int,
                  to_classes: Callable[[np.ndarray, int], np.ndarray], ignore_index: int):
    classes = to_classes(np.asarray(block), p)
    coords, counts = [], []
    h, w = classes.shape
    for cy in range(0, h, BALANCE_CELL):
        for cx in range(0, w, BALANCE_CELL):
            cell = classes[cy:cy + BALANCE_CELL, cx:cx + BALANCE_CELL]
            valid = cell[(cell >= 0) & (cell != ignore_index)]
            coords.append((p, y0 + cy, y0 + cy + cell.shape[0], x0 + cx, x0 + cx + cell.shape[1]))
            counts.append(np.bincount(valid.ravel()))
    return coords, counts


def count_cells(labels: Sequence[Any], to_classes: Callable[[np.ndarray, int], np.ndarray],
                ignore_index: int, classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Class counts per cell of every label image, in one dask pass, chunk by chunk.

    Parameters
    ----------
    labels : sequence of dask array
        ``(Y, X)`` stored labels of each pair.
    to_classes : callable
        ``to_classes(block, p)`` -> int64 class indices of a block of pair ``p``.
    ignore_index : int
        Label not counted (nor are negative labels).
    classes : int, optional
        ``K``: at least this many count columns.

    Returns
    -------
    cells : (n, 5) ndarray of int64
        Pair, ``y0``, ``y1``, ``x0``, ``x1`` of each cell (at most :data:`BALANCE_CELL`
        square, inside one chunk).
    counts : (n, K') ndarray of int64
        Pixels per class and cell.
    """
    tasks = []
    for p, data in enumerate(labels):
        offsets = [np.concatenate([[0], np.cumsum(c)]) for c in data.chunks]
        blocks = data.to_delayed()
        for by in range(blocks.shape[0]):
            for bx in range(blocks.shape[1]):
                y0, x0 = int(offsets[0][by]), int(offsets[1][bx])
                tasks.append(dask.delayed(_block_counts)(blocks[by, bx], p, y0, x0, to_classes,
                                                         ignore_index))
    results = dask.compute(*tasks, scheduler="threads")
    width = max([len(c) for _, counts in results for c in counts] + [1])
    if classes is not None:
        width = max(width, classes)
    cells, rows = [], []
    for coords, counts in results:
        for coord, count in zip(coords, counts):
            cells.append(coord)
            rows.append(np.pad(count, (0, width - len(count))))
    return (np.asarray(cells, np.int64).reshape(-1, 5),
            np.asarray(rows, np.int64).reshape(-1, width))


def draw_class_pixel(rng: np.random.Generator, present: np.ndarray, cumulative: np.ndarray,
                     counts: np.ndarray) -> tuple[int, int, int]:
    """A class drawn uniformly over ``present``, then one of its pixels uniformly over all
    cells.

    Parameters
    ----------
    rng : numpy.random.Generator
    present : (k,) ndarray of int
        The classes with at least one pixel.
    cumulative, counts : (n, K) ndarray of int64
        Cumulative (over cells) and plain pixel counts per cell and class.

    Returns
    -------
    c, j, k : int
        The class, the cell, and the rank of the pixel among the class's pixels of that cell
        (row-major).
    """
    c = int(present[rng.integers(len(present))])
    column = cumulative[:, c]
    rank = int(rng.integers(column[-1]))  # uniform over every pixel of class c
    j = int(np.searchsorted(column, rank, side="right"))
    return c, j, rank - int(column[j] - counts[j, c])


def centred_origin(y: int, x: int, shape: tuple[int, int],
                   tile: tuple[int, int]) -> tuple[int, int]:
    """Origin of the patch centred on pixel ``(y, x)``, shifted inside an image of ``shape``."""
    (h, w), (ty, tx) = shape, tile
    return min(max(y - ty // 2, 0), h - ty), min(max(x - tx // 2, 0), w - tx)
