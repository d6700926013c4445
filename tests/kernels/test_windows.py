"""Blending windows against their formulas and their invariants."""

from __future__ import annotations

import numpy as np
import pytest

from chunkseg.kernels.windows import WINDOWS, get_window, window_1d, window_name


@pytest.mark.parametrize("name", sorted(WINDOWS))
@pytest.mark.parametrize("tile, overlap", [(64, 16), (33, 10), (8, 7), (5, 0)])
def test_positive_symmetric_peak_one(name, tile, overlap):
    w = get_window(name, tile, overlap)
    assert w.shape == (tile, tile) and w.dtype == np.float32
    assert (w > 0).all() and w.max() <= 1.0
    if name != "cosine" or 2 * overlap < tile:
        assert np.isclose(w.max(), 1.0)
    np.testing.assert_allclose(w, w[::-1, ::-1])
    np.testing.assert_allclose(w, w.T)


def test_formulas():
    i = np.arange(64)
    sigma = 0.125 * 64
    g = np.exp(-((i - 31.5) ** 2) / (2 * sigma**2))
    np.testing.assert_allclose(window_1d("gaussian", 64), g / g.max())
    np.testing.assert_allclose(window_1d("linear", 4), [1 / 3, 1, 1, 1 / 3])
    np.testing.assert_allclose(window_1d("uniform", 7), np.ones(7))
    w = window_1d("cosine", 10, 4)
    np.testing.assert_allclose(w[4:6], 1)
    np.testing.assert_allclose(w[:4], np.sin(np.pi / 2 * (np.arange(4) + 0.5) / 4) ** 2)


@pytest.mark.parametrize("tile, overlap", [(64, 16), (32, 8), (20, 10)])
def test_cosine_is_a_partition_of_unity(tile, overlap):
    stride = tile - overlap
    w = window_1d("cosine", tile, overlap)
    total = np.zeros(stride * 10 + overlap)
    for k in range(10):
        total[k * stride : k * stride + tile] += w
    np.testing.assert_allclose(total[overlap : -overlap], 1.0)


def test_separable_outer_product():
    w = get_window("gaussian", (16, 24), (4, 6))
    np.testing.assert_allclose(w, np.outer(window_1d("gaussian", 16), window_1d("gaussian", 24)),
                               rtol=1e-6)


def test_user_array():
    a = np.random.default_rng(0).random((8, 6)) + 0.1
    w = get_window(a, (8, 6))
    assert w.dtype == np.float32 and np.allclose(w, a)
    assert window_name(a) == "custom" and window_name("cosine") == "cosine"
    for bad, match in ((np.ones((8, 5)), "shape"), (np.zeros((8, 6)), "positive"),
                       (np.full((8, 6), np.nan), "finite")):
        with pytest.raises(ValueError, match=match):
            get_window(bad, (8, 6))
    with pytest.raises(ValueError, match="window"):
        get_window("hamming", 8)
