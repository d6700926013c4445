"""Plain, obviously-correct in-memory references the engine is tested against."""

from __future__ import annotations

import math
import threading
from collections import Counter

import numpy as np
import zarr


def reference_blend(image, model, tile, overlap, window):
    """Global sliding-window blend in memory, float64: one loop over the tiles.

    image (H, W, C); tile/overlap ints; window (T, T) weights. Returns (K, H, W) float64 and the
    (H, W) weight sum.
    """
    h, w, _ = image.shape
    s, b = tile - overlap, overlap // 2
    ny, nx = math.ceil(h / s), math.ceil(w / s)
    pad = ((b, ny * s + overlap - b - h), (b, nx * s + overlap - b - w), (0, 0))
    padded = np.pad(image, pad, mode="reflect")
    acc = wsum = None
    for ky in range(ny):
        for kx in range(nx):
            y0, x0 = ky * s, kx * s
            t = padded[y0 : y0 + tile, x0 : x0 + tile].transpose(2, 0, 1)[None]
            out = np.asarray(model(t.astype(np.float32)), dtype=np.float64)[0]
            if acc is None:
                acc = np.zeros((out.shape[0],) + padded.shape[:2])
                wsum = np.zeros(padded.shape[:2])
            acc[:, y0 : y0 + tile, x0 : x0 + tile] += out * window
            wsum[y0 : y0 + tile, x0 : x0 + tile] += window
    return (acc / wsum)[:, b : b + h, b : b + w], wsum[b : b + h, b : b + w]


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
