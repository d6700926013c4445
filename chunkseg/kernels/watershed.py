"""Seeded watershed whose result at a pixel depends only on a bounded neighbourhood.

The flooding is an image foresting transform with an additive path cost (Falcao, Stolfi and
Lotufo 2004, "The image foresting transform: theory, algorithms and applications", IEEE TPAMI
26(1)): every pixel goes to the seed it reaches at the lowest cost, where entering a pixel
``p`` costs ``step * (1 + weight * boundary[p])`` (``step`` 1 for the 4 edge neighbours,
``sqrt(2)`` for the 4 diagonal ones; integers in 1/128 of a step, :func:`entry_costs`), ties
go to the smallest seed id, and pixels whose cost would exceed ``max_cost`` stay 0. A high ``weight`` makes crossing a boundary (a
membrane) expensive, so a seed floods its own cell before it climbs into the next; it is the
flooding of a watershed over the boundary probability, with distance added.

**Why it is chunk-invariant (the bound).** Every step costs at least 1, so a path of cost at
most ``max_cost`` has at most ``floor(max_cost)`` steps and stays within that many pixels
(chessboard) of its end. A pixel's cost, and the set of optimal paths that decide its seed, so
lie within :func:`halo` pixels of it: computed on any window that holds that margin around a
chunk, the chunk's result equals the result on the whole image (the sweeps below reach the
unique fixed point of ``cost(p) = min_q cost(q) + w(q, p)`` on the window, in integers, so
no rounding depends on the order of the sums). Seeds are global ids given
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

from ..errors import MissingDependencyError

__all__ = ["flood_block", "flood_reference", "entry_costs", "halo", "boundary_pairs", "QUANT",
           "COST_UNIT", "MAX_COST", "seed_mask", "seed_halo", "SEED_MODES", "FOREGROUND"]

# (dy, dx, diagonal): p = (y, x) takes from its neighbour q = (y - dy, x - dx)
_OFFSETS = ((-1, 0, False), (1, 0, False), (0, -1, False), (0, 1, False),
            (-1, -1, True), (-1, 1, True), (1, -1, True), (1, 1, True))

COST_UNIT = 128
"""Path costs are integers in 1/COST_UNIT of a pixel step, so they add exactly in any order."""
MAX_COST = 256.0
"""The largest ``max_cost``: keys (cost << 32 | seed) of windows up to 65536 px wide fit int64."""
_INF = np.int64(1 << 61)
_LOW = np.int64(0xFFFFFFFF)

QUANT = 1 << 16
"""Boundary probabilities are summed as ``round(p * QUANT)`` integers (exact for any order)."""


def halo(max_cost: float) -> int:
    """Pixels of context a chunk needs for :func:`flood_block`.

    Parameters
    ----------
    max_cost : float
        The flooding's cost limit, in pixel steps.

    Returns
    -------
    int
        ``floor(max_cost)``: every step costs at least 1, so a path within the limit has at
        most that many steps (chessboard distance).
    """
    return int(np.floor(max_cost))


SEED_MODES = ("threshold", "maxima", "both")
"""Where seeds come from: a strict threshold, distance-transform maxima, or either."""
FOREGROUND = 0.5
"""The foreground whose distance transform gives the maxima seeds: ``p >= FOREGROUND``."""


def seed_halo(mode: str, radius: int) -> int:
    """Pixels of context :func:`seed_mask` needs around a chunk: 0 for ``"threshold"``, else
    ``3 * radius`` (the distance transform is capped at ``2 * radius``, so it is exact where
    the nearest background lies within that many pixels, and the maxima look ``radius``
    further)."""
    return 0 if mode == "threshold" else 3 * int(radius)


def seed_mask(p: np.ndarray, mode: str, threshold: float, radius: int) -> np.ndarray:
    """The seed pixels of a window: a strict threshold, distance-transform maxima, or both.

    Parameters
    ----------
    p : (h, w) ndarray of float
        The object class's probability.
    mode : {"threshold", "maxima", "both"}
        ``"threshold"``: ``p >= threshold``. ``"maxima"``: pixels of the foreground
        ``p >= FOREGROUND`` (0.5) where its Euclidean distance transform (the distance to
        the nearest background pixel), capped at ``2 * radius``, equals its maximum over the
        ``(2 radius + 1)^2`` square around them (plateaus included: a core wider than the cap
        is one plateau). ``"both"``: either.
    threshold : float
    radius : int
        Of the maxima's neighbourhood, px (>= 1).

    Returns
    -------
    (h, w) ndarray of bool
        Exact for the pixels at least :func:`seed_halo` from a window edge that is not the
        image's edge (the cap bounds where the transform looks), so a chunk read with that
        halo gets the whole image's seeds.

    Notes
    -----
    The distance-transform seeds of a classic watershed (scikit-image's "watershed
    segmentation" example: ``ndimage.distance_transform_edt`` then ``peak_local_max``), with
    the transform capped so that the result is local (scipy's ``distance_transform_edt`` and
    ``maximum_filter``, ``mode="nearest"`` at the image's edges).
    """
    from scipy import ndimage

    mask = p >= threshold if mode in ("threshold", "both") else np.zeros(p.shape, bool)
    if mode in ("maxima", "both"):
        fg = p >= FOREGROUND
        cap = 2.0 * radius  # where the window has no background at all: the cap (no pixel
        # of its exact part has background within the cap; scipy measures from its corner)
        d = (np.minimum(ndimage.distance_transform_edt(fg), cap) if not fg.all()
             else np.full(p.shape, cap))
        peak = d == ndimage.maximum_filter(d, size=2 * int(radius) + 1, mode="nearest")
        mask |= fg & peak
    return mask


def entry_costs(boundary: np.ndarray, weight: float,
                max_cost: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer costs of entering each pixel by an edge and by a corner, and the cost limit.

    Parameters
    ----------
    boundary : (h, w) ndarray of float
        Boundary probability in [0, 1].
    weight : float
        Extra cost (in pixel steps) of a pixel of boundary probability 1.
    max_cost : float
        Cost limit, pixel steps.

    Returns
    -------
    c1, c2 : (h, w) ndarray of int32
        Costs in 1/:data:`COST_UNIT` steps.
    limit : int

    Notes
    -----
    ``c1 = round(COST_UNIT * (1 + weight * boundary))``, ``c2`` the same times ``sqrt(2)``
    (float32 arithmetic, compiled by numba without fast-math, the same for every window),
    both at most ``limit + 1`` (a step that alone passes the limit ends every path), and
    ``limit = floor(max_cost * COST_UNIT)``. Each is at least ``COST_UNIT``: a path within the
    limit has at most ``floor(max_cost)`` steps.
    """
    limit = int(np.floor(max_cost * COST_UNIT))
    c1, c2 = _compiled()[0](np.ascontiguousarray(boundary, np.float32),
                            np.float32(weight * COST_UNIT), np.float32(COST_UNIT),
                            np.float32(np.sqrt(2.0)), limit + 1)
    return c1, c2, limit


def flood_block(seeds: np.ndarray, boundary: np.ndarray, weight: float,
                max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """Flood a window from its seeds: each pixel gets the seed it reaches at the lowest cost.

    Parameters
    ----------
    seeds : (h, w) ndarray of int
        Seed ids (global, 1 to 2**32 - 1) on seed pixels, 0 elsewhere.
    boundary : (h, w) ndarray of float
        Boundary probability in [0, 1] (e.g. ``1 - probabilities[cell]``).
    weight : float
        Extra cost of entering a pixel of boundary probability 1 (the base cost is 1 a pixel).
    max_cost : float
        Pixels whose cheapest path costs more stay 0; at most :data:`MAX_COST`.

    Returns
    -------
    labels : (h, w) ndarray of int64
        The seed of each pixel, 0 where none is reached within ``max_cost``.
    cost : (h, w) ndarray of int64
        The cost of its path in 1/:data:`COST_UNIT` steps (0 on seeds, -1 where unreached).

    Notes
    -----
    Each pixel holds one int64 key ``cost << 32 | seed``, so the smallest key is the lowest
    cost and, among equal costs, the smallest seed. Passes go down the rows and up, in turn:
    a row takes from the row before it (edge and both corners), then is scanned left to right
    and right to left (``key[x] = min(key[x], key[x - 1] + c[x])`` and its mirror). It stops
    at the first pass (after the first) that changes nothing: the pass before it, the other
    way, left every row consistent with its other neighbour row. A path's cost is the same
    whatever the order it is summed in (integers), so the result is the unique fixed point,
    equal to Dijkstra's (:func:`flood_reference`, tested).

    The passes are compiled by numba (``nogil``: the threads of dask's scheduler flood their
    windows in parallel), 2-3 passes of a few integer operations a pixel; the first call in
    a process compiles them (cached on disk by numba).
    """
    c1, c2, limit = entry_costs(boundary, weight, max_cost)
    labels = np.zeros(seeds.shape, np.int64)
    cost = np.empty(seeds.shape, np.int64)
    _compiled()[1](np.ascontiguousarray(seeds, np.int64), c1, c2, limit, labels, cost)
    return labels, cost


_COMPILED: tuple | None = None


def _compiled() -> tuple:
    """The compiled cost and flooding loops (numba imported and compiling at first use)."""
    global _COMPILED
    if _COMPILED is None:
        try:
            import numba
        except ImportError:
            raise MissingDependencyError(
                "The watershed's flooding needs numba, which is not installed. Install it with "
                "`pip install 'chunkseg[objects]'` (or `pip install numba`).") from None
        jit = numba.njit(nogil=True, cache=True)
        _COMPILED = (jit(_costs_py), jit(_flood_py))
    return _COMPILED


def _costs_py(b, wf, uf, sqrt2, top):  # pragma: no cover - compiled by numba; see entry_costs
    h, w = b.shape
    c1 = np.empty((h, w), np.int32)
    c2 = np.empty((h, w), np.int32)
    for y in range(h):
        for x in range(w):
            base = b[y, x] * wf + uf  # float32
            c1[y, x] = min(np.rint(base), top)
            c2[y, x] = min(np.rint(base * sqrt2), top)
    return c1, c2


def _flood_py(seeds, c1, c2, limit, labels, cost):  # pragma: no cover - numba; see flood_block
    h, w = seeds.shape
    key = np.empty((h, w), np.int64)
    for y in range(h):
        for x in range(w):
            key[y, x] = seeds[y, x] if seeds[y, x] > 0 else _INF
    n = 0
    while True:
        changed = False
        for i in range(h):
            y = i if n % 2 == 0 else h - 1 - i
            q = y - 1 if n % 2 == 0 else y + 1  # the row before, in the pass's direction
            if 0 <= q < h:
                for x in range(w):
                    best = key[q, x] + (np.int64(c1[y, x]) << 32)
                    if x > 0:
                        t = key[q, x - 1] + (np.int64(c2[y, x]) << 32)
                        if t < best:
                            best = t
                    if x < w - 1:
                        t = key[q, x + 1] + (np.int64(c2[y, x]) << 32)
                        if t < best:
                            best = t
                    if best < key[y, x]:
                        key[y, x] = best
                        changed = True
            for x in range(1, w):
                t = key[y, x - 1] + (np.int64(c1[y, x]) << 32)
                if t < key[y, x]:
                    key[y, x] = t
                    changed = True
            for x in range(w - 2, -1, -1):
                t = key[y, x + 1] + (np.int64(c1[y, x]) << 32)
                if t < key[y, x]:
                    key[y, x] = t
                    changed = True
        # a pass that changes nothing after a pass the other way: every relation holds
        if n > 0 and not changed:
            break
        n += 1
    for y in range(h):
        for x in range(w):
            c = key[y, x] >> 32
            if c <= limit:
                labels[y, x] = key[y, x] & _LOW
                cost[y, x] = c
            else:
                cost[y, x] = -1


def flood_reference(seeds: np.ndarray, boundary: np.ndarray, weight: float,
                    max_cost: float) -> tuple[np.ndarray, np.ndarray]:
    """The same flooding by Dijkstra's algorithm with a heap of (cost, seed, pixel), in memory.

    An independent derivation for the tests (slow: pure Python). Same arguments and results
    as :func:`flood_block`.
    """
    h, w = seeds.shape
    c1, c2, limit = entry_costs(boundary, weight, max_cost)
    cost = np.full((h, w), -1, np.int64)
    lab = np.zeros((h, w), np.int64)
    done = np.zeros((h, w), bool)
    heap = [(0, int(seeds[y, x]), y, x) for y, x in zip(*np.nonzero(seeds))]
    heapq.heapify(heap)
    while heap:
        d, s, y, x = heapq.heappop(heap)
        if done[y, x]:
            continue
        done[y, x] = True
        cost[y, x], lab[y, x] = d, s
        for dy, dx, diagonal in _OFFSETS:
            ny, nx = y + dy, x + dx
            if 0 <= ny < h and 0 <= nx < w and not done[ny, nx] and not seeds[ny, nx]:
                nd = d + int((c2 if diagonal else c1)[ny, nx])
                if nd <= limit:
                    heapq.heappush(heap, (nd, s, ny, nx))
    return lab, cost


def _quantise(p: np.ndarray) -> np.ndarray:
    return np.rint(p.astype(np.float64) * QUANT).astype(np.int64)


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
    h, w = labels.shape
    boundary = np.asarray(boundary)
    us, vs, ts = [], [], []
    # (first pixel, its right or lower neighbour), first pixels the block's own
    cx, ry = min(cols, w - 1), min(rows, h - 1)
    for (a, b), (qa, qb) in (((labels[:rows, :cx], labels[:rows, 1:cx + 1]),
                              (boundary[:rows, :cx], boundary[:rows, 1:cx + 1])),
                             ((labels[:ry, :cols], labels[1:ry + 1, :cols]),
                              (boundary[:ry, :cols], boundary[1:ry + 1, :cols]))):
        m = (a != b) & (a > 0) & (b > 0)
        am, bm = a[m], b[m]
        us.append(np.minimum(am, bm))
        vs.append(np.maximum(am, bm))
        ts.append(_quantise(qa[m]) + _quantise(qb[m]))
    u, v, t = (np.concatenate(x).astype(np.int64) for x in (us, vs, ts))
    pairs, inverse = np.unique(np.stack([u, v], axis=1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    count = np.bincount(inverse, minlength=len(pairs)).astype(np.int64)
    total = np.zeros(len(pairs), np.int64)
    np.add.at(total, inverse, t)
    return pairs[:, 0], pairs[:, 1], total, count
