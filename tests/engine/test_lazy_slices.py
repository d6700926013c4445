"""Interactive windows of the lazy dataset: a slice of :func:`chunkseg.predict` runs only the
tiles of the tile cells it touches (dask culls the rest), equals the same window of the
whole-image result exactly, and building the dataset runs no model when ``K`` is known."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import chunkseg
from chunkseg.errors import InvalidValueError
from chunkseg.models.load import is_torch_spec, load_model
from chunkseg.models.resolve import resolve_model
from chunkseg.models.spec import ModelSpec
from chunkseg.plan import plan_tiles

IMAGE = np.random.default_rng(7).integers(0, 256, (1000, 1100), dtype=np.uint8)


class CountingModel:
    """1 channel -> 2 classes, a 3x3 box mean (not pointwise, so the blend matters); counts
    the tiles it runs, and records each tile's origin-independent fingerprint (its sum)."""

    def __init__(self):
        self.tiles = 0
        self._lock = threading.Lock()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            self.tiles += batch.shape[0]
        x = batch[:, :1] / 255.0
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
        box = sum(p[:, :, i:i + x.shape[2], j:j + x.shape[3]]
                  for i in range(3) for j in range(3)) / 9
        return np.concatenate([box - 0.5, 0.5 - x], axis=1).astype(np.float32)


def _touching(plan, y0, y1, x0, x1) -> int:
    """Number of tiles of ``plan`` whose extent overlaps ``[y0, y1) x [x0, x1)``."""
    counts = []
    for (lo, hi), origins, t in zip(((y0, y1), (x0, x1)), plan.tile_origins(), plan.tile):
        counts.append(int(np.count_nonzero((origins < hi) & (origins + t > lo))))
    return counts[0] * counts[1]


def _cells(plan, y0, y1, x0, x1) -> tuple[int, int, int, int]:
    """The image extent of the output chunks that ``[y0, y1) x [x0, x1)`` touches."""
    out = []
    for (lo, hi), sizes in zip(((y0, y1), (x0, x1)), plan.output_chunks()):
        bounds = np.cumsum((0,) + sizes)
        out += [int(bounds[bounds <= lo][-1]), int(bounds[bounds >= hi][0])]
    return out[0], out[1], out[2], out[3]


def test_default_chunks_are_tile_cells():
    ds = chunkseg.predict(IMAGE, CountingModel(), classes=("a", "b"))
    plan = plan_tiles(IMAGE.shape, 256, 64, "tiles")
    assert plan.tile_cells and plan.chunk_offset == (32, 32)
    assert ds.logits.chunks[1:] == plan.output_chunks()
    assert ds.logits.chunks[1][:2] == (160, 192) and sum(ds.logits.chunks[2]) == 1100
    assert ds.attrs["chunk_offset"] == [32, 32] and ds.attrs["chunks"] == [192, 192]
    # every cell is touched by 2 x 2 tiles at most
    for (y0, y1) in zip(np.cumsum((0,) + plan.output_chunks()[0])[:-1],
                        np.cumsum(plan.output_chunks()[0])):
        assert _touching(plan, y0, y1, 0, 160) <= 4


@pytest.mark.parametrize("window", [(400, 500, 600, 700), (180, 280, 940, 1040)])
def test_interior_window_runs_at_most_4_tiles(window):
    y0, y1, x0, x1 = window
    model = CountingModel()
    ds = chunkseg.predict(IMAGE, model, classes=("a", "b"))
    assert model.tiles == 0  # K from the names: no probe
    whole = ds.compute()
    plan = plan_tiles(IMAGE.shape, 256, 64, "tiles")
    assert model.tiles == plan.n_tiles == 36
    model.tiles = 0
    part = ds.isel(y=slice(y0, y1), x=slice(x0, x1)).compute()
    assert model.tiles == _touching(plan, *window) == 4
    for name in ("logits", "labels"):
        np.testing.assert_array_equal(part[name].values, whole[name].values[..., y0:y1, x0:x1])


def test_window_across_cell_borders():
    y0, y1, x0, x1 = 300, 400, 500, 600  # across a cell border along both axes
    model = CountingModel()
    ds = chunkseg.predict(IMAGE, model, classes=("a", "b"), outputs="logits,probabilities")
    whole = ds.logits.values
    plan = plan_tiles(IMAGE.shape, 256, 64, "tiles")
    model.tiles = 0
    part = ds.logits[:, y0:y1, x0:x1].values
    # the tiles of the cells it touches (3 x 3), more than the 2 x 2 touching the window
    assert model.tiles == _touching(plan, *_cells(plan, y0, y1, x0, x1)) == 9
    assert _touching(plan, y0, y1, x0, x1) == 4
    np.testing.assert_array_equal(part, whole[:, y0:y1, x0:x1])
    # the whole image equals the big-chunk graph's (chunking independence)
    big = chunkseg.predict(IMAGE, CountingModel(), classes=("a", "b"), chunks=512).logits.values
    np.testing.assert_allclose(whole, big, rtol=0, atol=1e-6)


def test_build_with_known_classes_runs_no_model():
    model = CountingModel()
    chunkseg.predict(IMAGE, model, classes=("a", "b"))
    assert model.tiles == 0
    chunkseg.predict(IMAGE, model)  # K unknown: probed on the first tile
    assert model.tiles == 1


def test_builtin_model_not_loaded_on_the_client():
    pytest.importorskip("torch")  # not in the lowest-versions environment
    spec = ModelSpec("isbi2012-unet")
    assert is_torch_spec(spec) is True
    load_model.cache_clear()
    resolved = resolve_model(spec)
    ds = chunkseg.predict(IMAGE[:300, :300], resolved, tile=64, overlap=16)
    assert load_model.cache_info().currsize == 0  # neither loaded nor probed
    assert resolved.kernels == ("torch", "numpy") and ds.attrs["kernel"] == "torch"
    assert list(ds["class"].values) == ["cell", "membrane"]
    assert ds.labels[:10, :10].values.shape == (10, 10)  # loads in the task
    assert load_model.cache_info().currsize == 1


def test_writer_refuses_tile_cells(tmp_path):
    with pytest.raises(InvalidValueError, match="`chunks` must be a number of pixels"):
        chunkseg.predict_to_zarr(IMAGE, CountingModel(), tmp_path / "o.zarr", chunks="tiles")


@pytest.mark.parametrize("shape", [(100, 90), (170, 353), (1000, 1100)])
@pytest.mark.parametrize("tile,overlap", [(256, 64), (64, 17), (32, 0)])
def test_tile_cell_geometry(shape, tile, overlap):
    plan = plan_tiles(shape, tile, overlap, "tiles")
    assert plan.chunks == plan.stride and plan.chunk_offset == plan.halo_before
    for axis in range(2):
        sizes = plan.output_chunks()[axis]
        assert sum(sizes) == shape[axis] and len(sizes) == plan.chunk_grid[axis]
        owned = plan.owned_tiles()[axis]
        assert owned[0][0] == 0 and owned[-1][1] == plan.grid_shape[axis]
        assert all(a[1] == b[0] for a, b in zip(owned, owned[1:]))  # each tile once
        bounds = np.cumsum((0,) + sizes)
        origins, t = plan.tile_origins()[axis], plan.tile[axis]
        for lo, hi in zip(bounds[:-1], bounds[1:]):  # 2 tiles at most touch a cell
            assert np.count_nonzero((origins < hi) & (origins + t > lo)) <= 2
    assert plan.to_dict().get("chunk_offset", [0, 0]) == list(plan.halo_before)
    assert "chunk_offset" not in plan_tiles(shape, tile, overlap, 64).to_dict()
    assert type(plan).from_dict(plan.to_dict()) == plan


def test_chunk_offset_must_be_below_the_chunk():
    with pytest.raises(InvalidValueError, match="`chunk_offset` must be smaller than `chunks`"):
        plan_tiles((100, 100), 32, 8, 16, chunk_offset=16)
