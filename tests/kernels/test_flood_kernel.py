"""The watershed kernel against a plain Dijkstra, its halo bound, and the region graph against
a pixel-by-pixel count."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from chunkseg.kernels import watershed as ws
from chunkseg.kernels.watershed import COST_UNIT, entry_costs


def _field(shape, seed, levels=None, sigma=2.0):
    rng = np.random.default_rng(seed)
    b = ndimage.gaussian_filter(rng.random(shape), sigma)
    b = (b - b.min()) / (b.max() - b.min())
    if levels:  # plateaus: many equal costs, so the tie rule decides
        b = np.round(b * levels) / levels
    return b.astype(np.float32)


@pytest.mark.parametrize("seed, levels, weight, max_cost", [
    (0, None, 10.0, 12.0), (1, 4, 10.0, 12.0), (2, 2, 0.0, 80.0), (3, None, 3.0, 40.0),
    (4, 8, 25.0, 30.0)])
def test_flood_equals_dijkstra(seed, levels, weight, max_cost):
    b = _field((45, 52), seed, levels)
    seeds, n = ndimage.label(b < 0.35)
    assert n > 3
    got, cost = ws.flood_block(seeds, b, weight, max_cost)
    ref, ref_cost = ws.flood_reference(seeds, b, weight, max_cost)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(cost, ref_cost)
    assert (got[seeds > 0] == seeds[seeds > 0]).all()  # seeds keep their ids
    assert ((got == 0) == (cost == -1)).all()
    assert (cost[got > 0] <= max_cost * ws.COST_UNIT).all()
    if weight == 0.0:  # the cost is then the chamfer distance to the nearest seed (1, sqrt 2)
        assert (got > 0).all()


def test_ties_go_to_the_smallest_seed():
    seeds = np.zeros((5, 9), np.int64)
    seeds[2, 0], seeds[2, 8] = 7, 3  # the middle column is as far from both
    labels, cost = ws.flood_block(seeds, np.ones((5, 9), np.float32), 1.0, 100.0)
    assert (labels[:, 4] == 3).all() and (labels[:, :4] == 7).all() and (labels[:, 5:] == 3).all()
    assert cost[2, 4] == 4 * 2 * ws.COST_UNIT  # 4 steps of 1 + 1 * 1 (boundary 1 everywhere)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_window_with_the_halo_gives_the_whole_image_result(seed):
    b = _field((120, 130), seed, levels=6)
    seeds, _ = ndimage.label(b < 0.3)
    max_cost = 14.5
    whole, _ = ws.flood_block(seeds, b, 4.0, max_cost)
    h = ws.halo(max_cost)
    assert h == 14
    rng = np.random.default_rng(seed)
    for _ in range(6):
        y0, x0 = rng.integers(0, 90), rng.integers(0, 100)
        y1, x1 = y0 + rng.integers(5, 30), x0 + rng.integers(5, 30)
        wy0, wx0 = max(y0 - h, 0), max(x0 - h, 0)
        window = (slice(wy0, y1 + h), slice(wx0, x1 + h))
        part, _ = ws.flood_block(seeds[window], b[window], 4.0, max_cost)
        np.testing.assert_array_equal(part[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0],
                                      whole[y0:y1, x0:x1])


def test_boundary_pairs_against_a_pixel_count():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 5, (13, 17))
    b = rng.random((13, 17)).astype(np.float32)
    q = np.rint(b.astype(np.float64) * ws.QUANT).astype(np.int64)
    expected = {}
    for y in range(13):
        for x in range(17):
            for ny, nx in ((y, x + 1), (y + 1, x)):
                if ny < 13 and nx < 17:
                    a, c = labels[y, x], labels[ny, nx]
                    if a and c and a != c:
                        k = (min(a, c), max(a, c))
                        t, n = expected.get(k, (0, 0))
                        expected[k] = (t + q[y, x] + q[ny, nx], n + 1)
    # the whole image as one block, and as 4 blocks each with its next row and column
    u, v, total, count = ws.boundary_pairs(labels, b, 13, 17)
    assert {(int(a), int(c)): (int(t), int(n)) for a, c, t, n in zip(u, v, total, count)} == expected
    got = {}
    for ys in ((0, 6), (6, 13)):
        for xs in ((0, 9), (9, 17)):
            sl = (slice(ys[0], min(ys[1] + 1, 13)), slice(xs[0], min(xs[1] + 1, 17)))
            for a, c, t, n in zip(*ws.boundary_pairs(labels[sl], b[sl], ys[1] - ys[0],
                                                     xs[1] - xs[0])):
                t0, n0 = got.get((int(a), int(c)), (0, 0))
                got[(int(a), int(c))] = (t0 + int(t), n0 + int(n))
    assert got == expected


@pytest.mark.parametrize("weight, max_cost", [(10.0, 32.0), (0.0, 1.0), (3.7, 256.0)])
def test_entry_costs_are_the_float32_formula(weight, max_cost):
    """The compiled costs equal numpy's float32 arithmetic of the documented formula."""
    rng = np.random.default_rng(1)
    b = np.concatenate([rng.random(5000), np.linspace(0, 1, 4097), [0.0, 1.0, 0.5]])
    b = b.astype(np.float32).reshape(1, -1)
    c1, c2, limit = entry_costs(b, weight, max_cost)
    base = b * np.float32(weight * COST_UNIT) + np.float32(COST_UNIT)
    top = limit + 1
    assert limit == int(np.floor(max_cost * COST_UNIT))
    np.testing.assert_array_equal(c1, np.minimum(np.rint(base), top))
    np.testing.assert_array_equal(c2, np.minimum(np.rint(base * np.float32(np.sqrt(2.0))), top))
    assert c1.min() >= COST_UNIT and c2.min() >= COST_UNIT
