"""Seeded watershed whose result at a pixel depends only on a bounded neighbourhood.

The flooding is an image foresting transform with an additive path cost (Falcao, Stolfi and
Lotufo 2004, "The image foresting transform: theory, algorithms and applications", IEEE TPAMI
26(1)): every pixel goes to the seed it reaches at the lowest cost, where entering a pixel
``p`` costs ``step * (1 + weight * boundary[p])`` (``step`` 1 for the 4 edge neighbours,
``sqrt(2)`` for the 4 diagonal ones, in float32), ties go to the smallest seed id, and pixels
whose cost would exceed ``max_cost`` stay 0. A high ``weight`` makes crossing a boundary (a
membrane) expensive, so a seed floods its own cell before it climbs into the next; it is the
flooding of a watershed over the boundary probability, with distance added.

**Why it is chunk-invariant (the bound).** Every step costs at least 1, so a path of cost at
most ``max_cost`` has at most ``floor(max_cost)`` steps and stays within that many pixels
(chessboard) of its end. A pixel's cost, and the set of optimal paths that decide its seed, so
lie within :func:`halo` pixels of it: computed on any window that holds that margin around a
chunk, the chunk's result equals the result on the whole image (the relaxation below reaches
the unique fixed point of ``cost(p) = min_q cost(q) + w(q, p)`` on the window, and float32
addition is monotone, so sub-paths of optimal paths are optimal). Seeds are global ids given
from outside (the connected components of :mod:`chunkseg.kernels.components`).

**Agglomeration.** :func:`boundary_pairs` collects, for each pair of touching fragments (edge
neighbours), the sum of the boundary probability on both sides of their shared border,
quantised to integers so the sums, and so the decisions, do not depend on the order of
summation (the chunking); :func:`chunkseg.kernels.agglomerate.agglomerate` joins fragments on
that region adjacency graph (a threshold on the mean, a multicut or a mutex watershed).

The kernel is tested against :func:`flood_reference`, a plain Dijkstra with a heap on the whole
image, and for chunk-invariance through :func:`chunkseg.label`.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["flood_block", "flood_reference", "halo", "boundary_pairs", "QUANT"]

_SQ2 = np.float32(np.sqrt(np.float32(2.0)))
# (dy, dx, diagonal): p = (y, x) takes from its neighbour q = (y - dy, x - dx)
_OFFSETS = ((-1, 0, False), (1, 0, False), (0, -1, False), (0, 1, False),
            (-1, -1, True), (-1, 1, True), (1, -1, True), (1, 1, True))
_NONE = np.iinfo(np.int64).max

QUANT = 1 << 16
"""Boundary probabilities are summed as ``round(p * QUANT)`` integers (exact for any order)."""


def halo(max_cost: float) -> int:
    """Pixels of context a chunk needs: ``floor(max_cost)`` (each step costs at least 1)."""
    return int(np.floor(max_cost))


def _entry_costs(boundary: np.ndarray, weight: float) -> tuple[np.ndarray, np.ndarray]:
    c = np.float32(1.0) + np.float32(weight) * np.asarray(boundary, dtype=np.float32)
    return c, c * _SQ2


def flood_block(seeds: np.ndarray, boundary: np.ndarray, weight: float,
                max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Flood a window from its seeds: each pixel gets the seed it reaches at the lowest cost.

    Parameters
    ----------
    seeds : (h, w) ndarray of int
        Seed ids (global, > 0) on seed pixels, 0 elsewhere.
    boundary : (h, w) ndarray of float
        Boundary probability in [0, 1] (e.g. ``1 - probabilities[cell]``).
    weight : float
        Extra cost of entering a pixel of boundary probability 1 (the base cost is 1 a pixel).
    max_cost : float
        Pixels whose cheapest path costs more stay 0.

    Returns
    -------
    labels : (h, w) ndarray of int64
        The seed of each pixel, 0 where none is reached within ``max_cost``.
    cost : (h, w) ndarray of float32
        The cost of its path (0 on seeds, inf where unreached).

    Notes
    -----
    Vectorised Bellman-Ford relaxation over the 8 neighbour directions until nothing changes,
    each sweep restricted to the box around the pixels that changed in the previous one.
    Keeps (cost, seed) lexicographically smallest, so ties go to the smallest seed id.
    """
    h, w = seeds.shape
    c1, c2 = _entry_costs(boundary, weight)
    cost = np.where(seeds > 0, np.float32(0), np.float32(np.inf)).astype(np.float32)
    lab = np.where(seeds > 0, seeds.astype(np.int64), _NONE)
    limit = np.float32(max_cost)
    cand = np.empty((h, w), np.float32)
    take = np.empty((h, w), bool)
    tie = np.empty((h, w), bool)
    # rows/columns where a change may propagate from (first sweep: everything)
    y0, y1, x0, x1 = 0, h, 0, w
    while y0 < y1 and x0 < x1:
        # pixels that can change this sweep: the changed box grown by one
        ys, ye, xs, xe = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
        cy0, cy1, cx0, cx1 = h, 0, w, 0
        for dy, dx, diagonal in _OFFSETS:
            # p over [ys, ye) x [xs, xe) that has a neighbour q = p - (dy, dx) inside the image
            py0, py1 = max(ys, dy), min(ye, h + dy)
            px0, px1 = max(xs, dx), min(xe, w + dx)
            if py0 >= py1 or px0 >= px1:
                continue
            hh, ww = py1 - py0, px1 - px0
            p = (slice(py0, py1), slice(px0, px1))
            q = (slice(py0 - dy, py1 - dy), slice(px0 - dx, px1 - dx))
            cd, tk, ti = cand[:hh, :ww], take[:hh, :ww], tie[:hh, :ww]
            np.add(cost[q], (c2 if diagonal else c1)[p], out=cd)
            cp, lp, lq = cost[p], lab[p], lab[q]
            np.less(cd, cp, out=tk)
            np.equal(cd, cp, out=ti)
            ti &= lq < lp
            tk |= ti
            tk &= cd <= limit
            rows = np.flatnonzero(tk.any(axis=1))
            if rows.size:
                cols = np.flatnonzero(tk.any(axis=0))
                np.copyto(cp, cd, where=tk)
                np.copyto(lp, lq, where=tk)
                cy0, cy1 = min(cy0, py0 + rows[0]), max(cy1, py0 + rows[-1] + 1)
                cx0, cx1 = min(cx0, px0 + cols[0]), max(cx1, px0 + cols[-1] + 1)
        y0, y1, x0, x1 = cy0, cy1, cx0, cx1
    lab[lab == _NONE] = 0
    return lab, cost


def flood_reference(seeds: np.ndarray, boundary: np.ndarray, weight: float,
                    max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """The same flooding by Dijkstra's algorithm with a heap of (cost, seed, pixel), in memory.

    An independent derivation for the tests (slow: pure Python). Same arguments and results
    as :func:`flood_block`.
    """
    h, w = seeds.shape
    c1, c2 = _entry_costs(boundary, weight)
    cost = np.full((h, w), np.inf, np.float32)
    lab = np.zeros((h, w), np.int64)
    done = np.zeros((h, w), bool)
    heap = [(np.float32(0), int(seeds[y, x]), y, x) for y, x in zip(*np.nonzero(seeds))]
    heapq.heapify(heap)
    limit = np.float32(max_cost)
    while heap:
        d, s, y, x = heapq.heappop(heap)
        if done[y, x]:
            continue
        done[y, x] = True
        cost[y, x], lab[y, x] = d, s
        for dy, dx, diagonal in _OFFSETS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and not done[ny, nx] and not seeds[ny, nx]:
                nd = np.float32(d + (c2 if diagonal else c1)[ny, nx])
                if nd <= limit:
                    heapq.heappush(heap, (nd, s, ny, nx))
    return lab, cost


def boundary_pairs(labels: np.ndarray, boundary: np.ndarray, rows: int,
                   cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Touching fragments of a block and the boundary probability along their shared border.

    Parameters
    ----------
    labels, boundary : (h, w) ndarray
        Fragment ids (0: none) and boundary probability of the block *plus* the next row and
        column of the image where they exist.
    rows, cols : int
        The block's own extent (``h - rows`` and ``w - cols`` are 0 or 1): a pair is counted
        where its first pixel (upper or left) is the block's own, so every pair of the image
        is counted once over all blocks.

    Returns
    -------
    u, v : ndarray of int64
        Fragment ids, ``u < v``, one entry per distinct pair.
    total : ndarray of int64
        Sum over the pair's touching pixel pairs of ``round(b1 * QUANT) + round(b2 * QUANT)``.
    count : ndarray of int64
        Touching pixel pairs (edge neighbours).
    """
    q = np.rint(np.asarray(boundary, np.float64) * QUANT).astype(np.int64)
    h, w = labels.shape
    us, vs, ts = [], [], []
    # (first pixel, its right or lower neighbour), first pixels the block's own
    cx, ry = min(cols, w - 1), min(rows, h - 1)
    for a, b, qa, qb in ((labels[:rows, :cx], labels[:rows, 1:cx + 1],
                          q[:rows, :cx], q[:rows, 1:cx + 1]),
                         (labels[:ry, :cols], labels[1:ry + 1, :cols],
                          q[:ry, :cols], q[1:ry + 1, :cols])):
        m = (a != b) & (a > 0) & (b > 0)
        us.append(np.minimum(a[m], b[m]))
        vs.append(np.maximum(a[m], b[m]))
        ts.append(qa[m] + qb[m])
    u, v, t = (np.concatenate(x).astype(np.int64) for x in (us, vs, ts))
    pairs, inverse = np.unique(np.stack([u, v], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    count = np.bincount(inverse, minlength=len(pairs)).astype(np.int64)
    total = np.zeros(len(pairs), np.int64)
    np.add.at(total, inverse, t)
    return pairs[:, 0], pairs[:, 1], total, count
