"""Plain, obviously-correct in-memory references the engine is tested against."""

from __future__ import annotations

import math

import numpy as np


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
