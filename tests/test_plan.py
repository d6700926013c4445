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


def _independent_blocks(plan, axis):
    """Per chunk ``j``: its bounds, the tiles starting in it, and its block's extent, from the
    tile origins alone (not through TilePlan's methods)."""
    n, c = plan.image_shape[axis], plan.chunks[axis]
    s, t, b = plan.stride[axis], plan.tile[axis], plan.overlap[axis] // 2
    n_chunks = -(-n // c)
    origins = [k * s - b for k in range(-(-n // s))]
    bounds = [(j * c, min(n, (j + 1) * c)) for j in range(n_chunks)]
    owned = [[k for k, o in enumerate(origins) if min(max(o, 0) // c, n_chunks - 1) == j]
             for j in range(n_chunks)]
    extents = [(origins[ks[0]], origins[ks[-1]] + t) if ks else None for ks in owned]
    return bounds, owned, extents


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_schedule_against_an_independent_derivation(shape, tile, overlap, chunks):
    plan = plan_tiles(shape, tile, overlap, chunks)
    sched = plan.schedule()
    assert sched.chunk_grid == plan.chunk_grid
    axes = [_independent_blocks(plan, axis) for axis in range(2)]
    (by, oy, ey), (bx, ox, ex) = axes
    seen = np.zeros(plan.grid_shape, int)
    for iy in range(len(by)):
        for ix in range(len(bx)):
            assert sched.chunk_bounds(iy, ix) == (by[iy], bx[ix])
            assert sched.chunk_shape(iy, ix) == (by[iy][1] - by[iy][0], bx[ix][1] - bx[ix][0])
            (ky0, ky1), (kx0, kx1) = sched.owned_tiles(iy, ix)
            assert list(range(ky0, ky1)) == oy[iy] and list(range(kx0, kx1)) == ox[ix]
            seen[ky0:ky1, kx0:kx1] += 1
            assert sched.owns_tiles(iy, ix) == bool(oy[iy] and ox[ix])
            if not sched.owns_tiles(iy, ix):
                continue
            ext = sched.block_extent(iy, ix)
            assert ext == (ey[iy], ex[ix])
            # the block's pieces tile its part inside the image exactly, each in its chunk
            (y0, y1), (x0, x1) = ext
            hit = np.zeros((y1 - y0, x1 - x0), int)
            for (jy, jx), (sy, sx) in sched.pieces(iy, ix):
                assert jy >= iy and jx >= ix  # forward-only
                hit[sy, sx] += 1
                ys, xs = np.arange(y0, y1)[sy], np.arange(x0, x1)[sx]
                assert (by[jy][0] <= ys).all() and (ys < by[jy][1]).all()
                assert (bx[jx][0] <= xs).all() and (xs < bx[jx][1]).all()
            inside = np.outer((np.arange(y0, y1) >= 0) & (np.arange(y0, y1) < shape[0]),
                              (np.arange(x0, x1) >= 0) & (np.arange(x0, x1) < shape[1]))
            np.testing.assert_array_equal(hit, inside.astype(int))
    assert (seen == 1).all()  # each tile owned by exactly one block
    blocks = [(iy, ix) for iy in range(len(by)) for ix in range(len(bx))
              if sched.owns_tiles(iy, ix)]
    for jy in range(len(by)):
        for jx in range(len(bx)):
            (cy0, cy1), (cx0, cx1) = by[jy], bx[jx]
            got = np.zeros((cy1 - cy0, cx1 - cx0), int)
            for (iy, ix), (sy, sx), (dy, dx) in sched.sources(jy, jx):
                assert ((jy, jx), (sy, sx)) in sched.pieces(iy, ix)
                (y0, _), (x0, _) = sched.block_extent(iy, ix)
                assert (y0 + sy.start, x0 + sx.start) == (cy0 + dy.start, cx0 + dx.start)
                assert (sy.stop - sy.start, sx.stop - sx.start) == \
                    (dy.stop - dy.start, dx.stop - dx.start)
                got[dy, dx] += 1
            # brute force: each pixel receives one piece per block whose extent covers it
            expected = np.zeros_like(got)
            for iy, ix in blocks:
                (y0, y1), (x0, x1) = ey[iy], ex[ix]
                expected[max(y0, cy0) - cy0 : max(min(y1, cy1) - cy0, 0),
                         max(x0, cx0) - cx0 : max(min(x1, cx1) - cx0, 0)] += 1
            np.testing.assert_array_equal(got, expected)
            assert (got >= 1).all()  # every pixel covered


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_schedule_round_trips_and_is_a_frozen_record(shape, tile, overlap, chunks):
    import dataclasses
    import json
    import pickle

    from chunkseg.plan import BlockSchedule

    sched = plan_tiles(shape, tile, overlap, chunks).schedule()
    back = BlockSchedule.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert back == sched and back.y.sources == sched.y.sources
    assert back.x.sources == sched.x.sources
    again = pickle.loads(pickle.dumps(sched))
    assert again == sched and again.y.sources == sched.y.sources
    assert not hasattr(sched, "__dict__") and not hasattr(sched.y, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        sched.y = sched.x


@pytest.mark.parametrize("shape, tile, overlap, chunks", CASES)
def test_fold_sources_is_the_schedules(shape, tile, overlap, chunks):
    plan = plan_tiles(shape, tile, overlap, chunks)
    sched = plan.schedule()
    for axis, sources in zip(sched, fold_sources(plan)):
        assert [[(i, s.start, s.stop, d.start, d.stop) for i, s, d in per_chunk]
                for per_chunk in sources] == [list(s) for s in axis.sources]
