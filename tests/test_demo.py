"""The demo end to end (small mosaic) and the figures."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr

from chunkseg.demo import build_mosaic, run_demo
from chunkseg.errors import OutputExistsError
from chunkseg.plan import plan_tiles
from chunkseg.viz import plot_overview, plot_windows


def test_build_mosaic_places_sections(tmp_path):
    from importlib.resources import files

    from PIL import Image

    arr = build_mosaic(tmp_path / "m.zarr", rows=2, cols=3)
    assert arr.shape == (1024, 1536, 1) and arr.dtype == np.uint8
    folder = files("chunkseg") / "data" / "isbi2012_test"
    with (folder / "04.png").open("rb") as fh:
        section4 = np.asarray(Image.open(fh))
    np.testing.assert_array_equal(arr[512:1024, 512:1024, 0], section4)  # row 1, col 1
    with pytest.raises(OutputExistsError):
        build_mosaic(tmp_path / "m.zarr", rows=1, cols=1)


def test_demo_small(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    result = run_demo(out, rows=2, cols=2, chunks=384, progress=False)
    ds = xr.open_zarr(result["segmentation"])
    assert ds.logits.shape == (2, 1024, 1024) and ds.labels.dtype == np.uint8
    probs = ds.probabilities.values
    assert probs.min() >= 0 and probs.max() <= 1
    np.testing.assert_allclose(probs.sum(axis=0), 1, rtol=1e-5)
    # EM membranes are a minority of pixels; a broken model gives 0 or 1 here
    assert 0.05 < result["membrane_fraction"] < 0.5
    assert (out / "demo.png").stat().st_size > 10_000
    assert zarr.open_group(result["segmentation"], mode="r")["labels"].chunks == (384, 384)
    # the cells: one id each across the 2 x 2 chunks, equal to the watershed of the whole mosaic
    from reference import watershed_reference

    ref, n = watershed_reference(probs[0], 0.98, 10, 10.0, 32.0, None)
    assert ds.instances.attrs["method"] == "watershed"
    np.testing.assert_array_equal(ds.instances.values, ref)
    assert result["cells"] == n > 100  # about 100 cells per 512 x 512 section
    import pandas as pd

    table = pd.read_parquet(result["regions"])
    assert len(table) == n and table["area"].sum() == (ref > 0).sum()
    np.testing.assert_allclose(table["area_physical"], table["area"] * 16.0)  # 4 nm pixels
    assert sorted(result["patch_figures"]) == ["overview", "reconstruction", "seams",
                                               "tile_predictions", "tiles"]
    assert all((out / "figures" / f"{k}.png").stat().st_size > 10_000
               for k in result["patch_figures"])
    with pytest.raises(OutputExistsError, match="overwrite"):
        run_demo(out, rows=2, cols=2, chunks=384, progress=False)


def test_figures(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    plan = plan_tiles((300, 400), 64, 16, 96)
    path = plot_overview(rng.random((300, 400)), rng.random((300, 400)),
                         rng.integers(0, 2, (300, 400)), plan, tmp_path / "o.png", zoom=100)
    assert path.stat().st_size > 5_000
    assert plot_windows(tmp_path / "w.png", 64, 16).stat().st_size > 5_000
