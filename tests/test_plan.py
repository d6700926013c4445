"""Tile-grid geometry, checked by brute force over pixels and tiles."""

from __future__ import annotations

import numpy as np
import pytest

from chunkseg.plan import TilePlan, fold_sources, normalize_pair, plan_tiles

CASES = [
    ((1000, 700), 256, 64, 384),
    ((97, 301), 64, 16, 48),
    ((20, 33), 64, 16, None),
    ((513, 512), (96, 64), (32, 0), (128, 64)),
    ((300, 300), 64, 48, 48),  # overlap larger than the stride
]


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_every_pixel_covered_and_tiles_full_size(shape, tile, overlap, chunks):
    plan = plan_tiles(shape, tile, overlap, chunks)
    for axis in range(2):
        origins = plan.tile_origins()[axis]
        t, b = plan.tile[axis], plan.halo_before[axis]
        cover = np.zeros(shape[axis], int)
        for o in origins:
            cover[max(o, 0) : max(o + t, 0)] += 1
            # every tile lies inside the padded image
            assert o + b >= 0 and o + b + t <= plan.padded_shape[axis]
        assert (cover >= 1).all()
        assert sum(plan.padded_chunks()[axis]) == plan.padded_shape[axis]
        assert sum(plan.output_chunks()[axis]) == shape[axis]
        pad = plan.pad_width[axis]
        assert pad[0] + shape[axis] + pad[1] == plan.padded_shape[axis]


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_each_tile_owned_by_exactly_one_block(shape, tile, overlap, chunks):
    plan = plan_tiles(shape, tile, overlap, chunks)
    for axis in range(2):
        s, t, o = plan.stride[axis], plan.tile[axis], plan.overlap[axis]
        owned = []
        for start, stop in plan.block_extents()[axis]:
            m = (stop - start - o) // s
            assert m * s + o == stop - start  # block = whole strides plus the overlap
            owned.extend(start + np.arange(m) * s)
        np.testing.assert_array_equal(owned, plan.tile_origins()[axis])
        assert t == s + o


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_fold_sources_cover_block_extents(shape, tile, overlap, chunks):
    plan = plan_tiles(shape, tile, overlap, chunks)
    for axis in range(2):
        extents = plan.block_extents()[axis]
        bounds = np.cumsum((0,) + plan.output_chunks()[axis])
        # brute force: per output pixel, the set of blocks covering it
        for j, sources in enumerate(fold_sources(plan)[axis]):
            lo, hi = bounds[j], bounds[j + 1]
            got = np.zeros(hi - lo, int)
            for i, src, dst in sources:
                assert src.stop - src.start == dst.stop - dst.start
                assert extents[i][0] + src.start == lo + dst.start
                got[dst] += 1
            expected = [sum(a <= p < b for a, b in extents) for p in range(lo, hi)]
            np.testing.assert_array_equal(got, expected)
            own = [d for i, _, d in sources if i == j]
            assert own == [slice(0, hi - lo)]


def test_default_chunks_are_multiples_of_stride():
    plan = plan_tiles((40000, 40000), 256, 64)
    assert plan.chunks[0] % plan.stride[0] == 0 and abs(plan.chunks[0] - 1536) <= 96
    small = plan_tiles((100, 5000), 64, 16)
    assert small.chunks[0] == 144  # no more than the image needs: 3 strides cover 100 px


def test_summary_and_dict():
    plan = plan_tiles((1000, 700, 3), 256, 64, 384)
    assert plan.channels == 3 and plan.n_tiles == 6 * 4 and plan.n_chunks == 3 * 2
    assert plan.tiles_per_chunk == (2, 2)
    d = plan.to_dict()
    assert d["stride"] == [192, 192] and d["n_tiles"] == 24 and d["padding"] == "reflect"
    text = plan.summary()
    assert "6 x 4 = 24" in text and "MiB per task" in text
    assert plan.memory_per_task(2, 8, 1) > (384 + 64) ** 2 * 3 * 4
    assert isinstance(plan, TilePlan)


@pytest.mark.parametrize(
    "args, exc, match",
    [
        (((100, 100), 64, 64), ValueError, "overlap"),
        (((100, 100), 64, -1), ValueError, "overlap"),
        (((100, 100), 0, 0), ValueError, "tile"),
        (((100, 100), 64, 16, 40), ValueError, "multiple of the stride"),
        (((100, 100), 64, 48, 16), ValueError, "at least the overlap"),
        (((100,), 64, 16), ValueError, "image_shape"),
        (((0, 10), 64, 16), ValueError, "image_shape"),
        (((100, 100), 64.0, 16), TypeError, "tile"),
        (((100, 100), True, 16), TypeError, "tile"),
    ],
)
def test_bad_arguments(args, exc, match):
    with pytest.raises(exc, match=match):
        plan_tiles(*args)


def test_normalize_pair():
    assert normalize_pair(3, "x") == (3, 3)
    assert normalize_pair([4, np.int64(5)], "x") == (4, 5)
    with pytest.raises(TypeError, match="`x`"):
        normalize_pair((1, 2, 3), "x")
