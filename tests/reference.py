"""Plain, obviously-correct in-memory references the engine is tested against."""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import zarr


def reflect_coord(i, length):
    """Image index of coordinate ``i`` under mirror padding about the edge pixel (the edge not
    repeated, as ``numpy.pad(mode="reflect")``): walked mirror by mirror, no modular formula."""
    if length == 1:
        return 0
    while not 0 <= i < length:
        i = -i if i < 0 else 2 * (length - 1) - i
    return i


def tile_origins_1d(length, tile, overlap):
    """Start coordinates of the global grid's tiles along one axis, from docs/blending.md "How the
    blending works": stride ``S = T - O``; tile ``k`` holds the stride cell ``[k*S, (k+1)*S)``
    with ``O // 2`` pixels of context before it (the rest of the overlap after it), and there is
    one tile for every stride cell that starts inside the image (``k*S < length``). No last tile
    is moved flush with the image end: the image is mirror-padded instead."""
    stride = tile - overlap
    before = overlap // 2
    origins = []
    cell = 0
    while cell < length:
        origins.append(cell - before)
        cell += stride
    return origins


def reference_blend(image, model, tile, overlap, window):
    """Global sliding-window blend in memory, float64, from first principles.

    Every tile of the global grid (:func:`tile_origins_1d` per axis) is cut out of the image with
    mirrored coordinates (:func:`reflect_coord`, no padded copy of the image), run through
    ``model`` alone, and its ``window``-weighted logits and the window are added onto the image
    pixels the tile covers; the sum is divided by the summed weights. Nothing of ``chunkseg``
    is used.

    image (H, W, C); tile/overlap ints or (y, x) pairs; window (T_y, T_x) weights. Returns
    (K, H, W) float64 and the (H, W) weight sum.
    """
    h, w, _ = image.shape
    (ty, tx), (oy, ox) = (_pair(tile), _pair(overlap))
    window = np.asarray(window, np.float64)
    assert window.shape == (ty, tx)
    acc = None
    wsum = np.zeros((h, w))
    for y0 in tile_origins_1d(h, ty, oy):
        rows = np.array([reflect_coord(y, h) for y in range(y0, y0 + ty)])
        inside_y = slice(max(0, -y0), min(ty, h - y0))  # tile rows that lie in the image
        for x0 in tile_origins_1d(w, tx, ox):
            cols = np.array([reflect_coord(x, w) for x in range(x0, x0 + tx)])
            inside_x = slice(max(0, -x0), min(tx, w - x0))
            t = image[rows[:, None], cols[None, :]].transpose(2, 0, 1)[None]
            out = np.asarray(model(t.astype(np.float32)), dtype=np.float64)[0]
            assert out.shape[1:] == (ty, tx)
            if acc is None:
                acc = np.zeros((out.shape[0], h, w))
            iy = slice(y0 + inside_y.start, y0 + inside_y.stop)
            ix = slice(x0 + inside_x.start, x0 + inside_x.stop)
            acc[:, iy, ix] += (out * window)[:, inside_y, inside_x]
            wsum[iy, ix] += window[inside_y, inside_x]
    return acc / wsum, wsum


def reference_window(name, tile, overlap):
    """The (T_y, T_x) float64 blending window, from the definitions in
    ``chunkseg.kernels.windows.window_1d``'s docstring, one axis at a time with that axis's own tile and
    overlap (nothing of ``chunkseg`` used): the outer product of the y and x windows."""
    def one_axis(size, ovl):
        i = np.arange(size, dtype=np.float64)
        if name == "uniform":
            return np.ones(size)
        if name == "linear":  # tent over the tile at pixel centres, peak scaled to 1
            w = 1 - np.abs(2 * (i + 0.5) / size - 1)
            return w / w.max()
        if name == "gaussian":  # sigma = size / 8 about the tile centre, peak scaled to 1
            w = np.exp(-0.5 * ((i - (size - 1) / 2) / (size / 8)) ** 2)
            return w / w.max()
        if name == "cosine":  # sin^2 ramps over min(overlap, size // 2) px at both ends
            r = min(ovl, size // 2)
            w = np.ones(size)
            for j in range(r):
                w[j] = w[size - 1 - j] = np.sin(np.pi / 2 * (j + 0.5) / r) ** 2
            return w
        raise ValueError(name)

    (ty, tx), (oy, ox) = _pair(tile), _pair(overlap)
    return np.outer(one_axis(ty, oy), one_axis(tx, ox))


def _pair(v):
    return (int(v), int(v)) if np.ndim(v) == 0 else (int(v[0]), int(v[1]))


def conv_model(weights, bias=None):
    """A numpy 'same' convolution (zero padding): weights (K, C, k, k) -> model on NCHW batches."""
    weights = np.asarray(weights, np.float32)
    k_out, c_in, k, _ = weights.shape
    r = k // 2
    bias = np.zeros(k_out, np.float32) if bias is None else np.asarray(bias, np.float32)

    def model(batch):
        n, c, h, w = batch.shape
        assert c == c_in
        padded = np.pad(batch, ((0, 0), (0, 0), (r, r), (r, r)))
        out = np.zeros((n, k_out, h, w), np.float32) + bias[None, :, None, None]
        for dy in range(k):
            for dx in range(k):
                patch = padded[:, :, dy : dy + h, dx : dx + w]
                out += np.einsum("kc,nchw->nkhw", weights[:, :, dy, dx], patch)
        return out

    return model


def max_rel_diff(a, b):
    """max |a - b| relative to max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


class CountingStore(zarr.storage.WrapperStore):
    """A Zarr store that counts writes per key (every set of a chunk or of metadata)."""

    def __init__(self, store):
        super().__init__(store)
        self.writes: dict[str, int] = {}
        self.lock = threading.Lock()

    async def set(self, key, value):
        with self.lock:
            self.writes[key] = self.writes.get(key, 0) + 1
        await super().set(key, value)

    def _with_store(self, store):  # keep the counter when zarr rewraps the store
        return self


def reference_halve(a, kind):
    """One pyramid level of a (..., H, W) array by a loop over its output pixels: the 2 x 2
    square at (2i, 2j), indices clipped to the array (an odd edge repeats its last row/column);
    "mean": mean of its finite values (NaN if none), "mode": its most common value, ties to
    the first in (top-left, top-right, bottom-left, bottom-right) order."""
    h, w = a.shape[-2:]
    oh, ow = (h + 1) // 2, (w + 1) // 2
    out = np.empty(a.shape[:-2] + (oh, ow), a.dtype)
    for i in range(oh):
        for j in range(ow):
            ys = [min(2 * i, h - 1), min(2 * i, h - 1), min(2 * i + 1, h - 1), min(2 * i + 1, h - 1)]
            xs = [min(2 * j, w - 1), min(2 * j + 1, w - 1), min(2 * j, w - 1), min(2 * j + 1, w - 1)]
            for lead in np.ndindex(*a.shape[:-2]):
                vals = [a[lead + (y, x)] for y, x in zip(ys, xs)]
                if kind == "mean":
                    good = [float(v) for v in vals if np.isfinite(v)]
                    out[lead + (i, j)] = sum(good) / len(good) if good else np.nan
                else:
                    counts = Counter(vals)
                    best = max(counts.values())
                    out[lead + (i, j)] = next(v for v in vals if counts[v] == best)
    return out


def maxima_seeds_reference(p, radius):
    """Distance-transform maxima of ``p >= 0.5`` on the whole image, pixel by pixel: the
    distance to the nearest background pixel (brute force over the background pixels), capped
    at ``2 * radius`` (the cap where there is no background), equal to the largest value of
    the ``(2 radius + 1)^2`` square around it, clipped at the image's edges (which is what
    ``mode="nearest"`` gives for a maximum)."""
    fg = p >= 0.5
    cap = 2.0 * radius
    by, bx = np.nonzero(~fg)
    h, w = p.shape
    d = np.full((h, w), cap)
    if len(by):
        for y, x in zip(*np.nonzero(fg)):
            d[y, x] = min(cap, float(np.sqrt(((by - y) ** 2 + (bx - x) ** 2).min())))
        d[~fg] = 0.0
    peak = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            sq = d[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
            peak[y, x] = d[y, x] == sq.max()
    return fg & peak


def watershed_reference(p, seed_threshold, min_seed_size, weight, max_cost, merge_threshold,
                        agglomeration="threshold", seeds="threshold", maxima_radius=4):
    """``chunkseg.label(method="watershed")`` in memory on the whole image: seeds
    (``scipy.ndimage.label`` of the threshold and/or :func:`maxima_seeds_reference`, size
    filter, raster numbering), flooding, region graph, merge, numbering by first pixel.
    Returns ``(ids, n_objects)``."""
    from scipy import ndimage

    from chunkseg.kernels import watershed as ws
    from chunkseg.kernels.agglomerate import agglomerate

    mask = (p >= seed_threshold) if seeds in ("threshold", "both") else np.zeros(p.shape, bool)
    if seeds in ("maxima", "both"):
        mask |= maxima_seeds_reference(p, maxima_radius)
    seeds, _ = ndimage.label(mask)
    sizes = np.bincount(seeds.ravel())
    keep = sizes >= min_seed_size
    keep[0] = False
    seeds = (np.cumsum(keep) * keep)[seeds]
    frag, _ = ws.flood_block(seeds, 1 - p, weight, max_cost)
    n = int(seeds.max())
    u, v, total, count = ws.boundary_pairs(frag, 1 - p, *frag.shape)
    ids, index = np.unique(frag.ravel(), return_index=True)
    first = np.zeros(n, np.int64)
    first[ids[ids > 0] - 1] = index[ids > 0]
    lookup, n_obj = agglomerate(n, u, v, total, count, agglomeration, merge_threshold, first)
    return lookup[frag], n_obj
