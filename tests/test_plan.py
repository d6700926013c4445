"""Tile-grid geometry, checked by brute force over pixels and tiles."""

from __future__ import annotations

import numpy as np
import pytest

from chunkseg.plan import TilePlan, fold_sources, normalize_pair, plan_tiles

CASES = [
    ((1000, 700), 256, 64, 384),
    ((97, 301), 64, 16, 48),  # chunk smaller than the tile
    ((20, 33), 64, 16, None),
    ((513, 512), (96, 64), (32, 0), (128, 64)),
    ((300, 300), 64, 48, 48),  # overlap larger than the stride
    ((1030, 2050), 256, 64, 1024),  # chunks that are not multiples of the stride
    ((1000, 1000), 256, 64, (300, 257)),  # a last chunk that owns no tile
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
        assert sum(plan.output_chunks()[axis]) == shape[axis]
        pad = plan.pad_width[axis]
        assert pad[0] + shape[axis] + pad[1] == plan.padded_shape[axis]


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_each_tile_owned_by_the_chunk_it_starts_in(shape, tile, overlap, chunks):
    plan = plan_tiles(shape, tile, overlap, chunks)
    for axis in range(2):
        s, t, c = plan.stride[axis], plan.tile[axis], plan.chunks[axis]
        origins = plan.tile_origins()[axis]
        owned, blocks = [], []
        for j, ((k0, k1), (start, stop)) in enumerate(zip(plan.owned_tiles()[axis],
                                                          plan.block_extents()[axis])):
            for k in range(k0, k1):  # brute force: the tile starts in chunk j (or before 0)
                assert j * c <= max(origins[k], 0) < (j + 1) * c
            owned.extend(range(k0, k1))
            if k1 > k0:
                assert (start, stop) == (origins[k0], origins[k1 - 1] + t)
                assert stop - start == (k1 - k0 - 1) * s + t
                assert start >= j * c or j == 0  # forward-only: never reaches back
            else:
                assert start == stop
            blocks.append((start, stop))
        np.testing.assert_array_equal(owned, np.arange(len(origins)))


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
                assert i <= j  # forward-only overlap-add
                assert src.stop - src.start == dst.stop - dst.start
                assert extents[i][0] + src.start == lo + dst.start
                got[dst] += 1
            expected = [sum(a <= p < b for a, b in extents) for p in range(lo, hi)]
            np.testing.assert_array_equal(got, expected)
            assert (got >= 1).all()
            if plan.chunks[axis] >= plan.tile[axis]:
                assert {i for i, _, _ in sources} <= {j - 1, j}


def test_default_chunks():
    assert plan_tiles((40000, 40000), 256, 64).chunks == (1536, 1536)
    assert plan_tiles((100, 5000), 64, 16).chunks == (100, 1536)  # no more than the image


def test_dict_round_trip():
    plan = plan_tiles((1000, 700, 3), 256, 64, (384, 1024))
    assert TilePlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ValueError, match="missing"):
        TilePlan.from_dict({"tile": [256, 256]})


def test_summary_and_dict():
    plan = plan_tiles((1000, 700, 3), 256, 64, 384)
    assert plan.channels == 3 and plan.n_tiles == 6 * 4 and plan.n_chunks == 3 * 2
    assert plan.tiles_per_chunk == (3, 3)  # chunk 0 owns the tiles at -32, 160 and 352
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
        (((100, 100), 64, 16, 0), ValueError, "chunks"),
        (((100, 100), 64, 16, (10, -1)), ValueError, "positive"),
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
