"""Geospatial rasters: a GeoTIFF's or a rioxarray DataArray's CRS and transform travel through
predict, predict_to_zarr and ingest into the Zarr output, where rioxarray reads them back (its
``spatial_ref`` convention); the NGFF metadata are in pixels where NGFF cannot describe the grid
(y decreasing, rotation), never metres along one axis and pixels along the other."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import xarray as xr
import zarr
from model_factories import numpy_conv3x3

import chunkseg
from chunkseg.outputs._variables import pixel_grid

rasterio = pytest.importorskip("rasterio")
rioxarray = pytest.importorskip("rioxarray")
pytest.importorskip("ome_zarr")
from affine import Affine  # noqa: E402  (rasterio's dependency)
from rasterio.transform import from_origin  # noqa: E402

KW = dict(tile=48, overlap=16, chunks=64)
CRS = "EPSG:32633"  # WGS 84 / UTM zone 33N
NORTH_UP = from_origin(500_000.0, 5_400_000.0, 10.0, 10.0)  # 10 m pixels, y decreasing


def _pixels(shape=(100, 120), seed=3):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _write_geotiff(path, data, transform=NORTH_UP, crs=CRS):
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1],
                       count=1, dtype=data.dtype, crs=crs, transform=transform, tiled=True,
                       blockxsize=32, blockysize=32) as dst:
        dst.write(data, 1)
    return str(path)


def _assert_geo(obj, transform, crs=CRS):
    """``obj`` (Dataset or DataArray) has ``crs`` and ``transform`` as rioxarray reads them,
    and y/x at the pixel centres that ``transform`` gives (computed here, independently)."""
    assert obj.rio.crs == rasterio.crs.CRS.from_user_input(crs)
    assert obj.rio.transform() == transform
    assert obj.rio.transform(recalc=True).almost_equals(transform)  # from the coords
    ny, nx = obj.sizes["y"], obj.sizes["x"]
    t = transform  # x = c + a * col + b * row, y = f + d * col + e * row at each centre
    xs = t.c + t.a * (np.arange(nx) + 0.5) + t.b * 0.5
    ys = t.f + t.d * 0.5 + t.e * (np.arange(ny) + 0.5)
    np.testing.assert_allclose(obj.x.values, xs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(obj.y.values, ys, rtol=0, atol=1e-6)


def test_geotiff_predict_keeps_crs_and_transform(tmp_path):
    data = _pixels()
    path = _write_geotiff(tmp_path / "scene.tif", data)
    with rasterio.open(path) as src:  # what GDAL itself reads
        assert src.crs.to_epsg() == 32633 and src.transform == NORTH_UP

    image = chunkseg.open_image(path)
    _assert_geo(image, NORTH_UP)
    assert np.all(np.diff(image.y.values) < 0)  # north-up: y decreases, kept as it is
    assert image.chunks[:2] == ((32, 32, 32, 4), (32, 32, 32, 24))  # still tile by tile

    lazy = chunkseg.predict(path, numpy_conv3x3(), **KW)
    _assert_geo(lazy, NORTH_UP)
    assert lazy.logits.attrs["grid_mapping"] == "spatial_ref"

    out = tmp_path / "plain.zarr"
    chunkseg.predict_to_zarr(path, numpy_conv3x3(), str(out), **KW)
    ds = xr.open_zarr(str(out))
    _assert_geo(ds, NORTH_UP)
    for name in ("logits", "labels"):
        assert ds[name].attrs["grid_mapping"] == "spatial_ref"
        assert ds[name].rio.crs == ds.rio.crs
    # the pixels are those of the same image without georeferencing
    plain = chunkseg.predict(data, numpy_conv3x3(), **KW)
    np.testing.assert_array_equal(ds.logits.values, plain.logits.values)


def test_geotiff_ome_output_pixel_unit_ngff(tmp_path):
    path = _write_geotiff(tmp_path / "scene.tif", _pixels())
    out = tmp_path / "ome.zarr"
    chunkseg.predict_to_zarr(path, numpy_conv3x3(), str(out), ome=True, levels=2, **KW)
    _assert_geo(xr.open_zarr(str(out)), NORTH_UP)
    # level 1: 20 m pixels from the same corner
    _assert_geo(xr.open_zarr(str(out), group="1"), NORTH_UP @ Affine.scale(2))
    # y decreases: NGFF (positive scale per axis) cannot say so, so it is in pixels, no unit
    root = zarr.open_group(str(out), mode="r")
    for ms in (root.attrs["ome"]["multiscales"][0],
               root["labels/classes"].attrs["ome"]["multiscales"][0]):
        assert [d["coordinateTransformations"] for d in ms["datasets"]] == [
            [{"type": "scale", "scale": [1.0, 1.0, 1.0][-len(ms["axes"]):]}],
            [{"type": "scale", "scale": [1.0, 2.0, 2.0][-len(ms["axes"]):]},
             {"type": "translation", "translation": [0.0, 0.5, 0.5][-len(ms["axes"]):]}]]
        assert all("unit" not in a for a in ms["axes"])


def test_south_up_geotiff_gets_metre_ngff(tmp_path):
    # y increasing (positive pixel height): NGFF can describe it, in metres on both axes
    south_up = Affine(10.0, 0.0, 500_000.0, 0.0, 10.0, 5_300_000.0)
    path = _write_geotiff(tmp_path / "south.tif", _pixels((70, 90)), transform=south_up)
    out = tmp_path / "south.zarr"
    chunkseg.predict_to_zarr(path, numpy_conv3x3(), str(out), ome=True, levels=2, **KW)
    _assert_geo(xr.open_zarr(str(out)), south_up)
    ms = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert [a.get("unit") for a in ms["axes"]] == [None, "meter", "meter"]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 10.0, 10.0]},
        {"type": "translation", "translation": [0.0, 5_300_005.0, 500_005.0]}]


def test_rioxarray_dataarray_keeps_crs_and_transform(tmp_path):
    data = _pixels((90, 110))
    y = 5_400_000.0 - 10.0 * (np.arange(90) + 0.5)
    x = 500_000.0 + 10.0 * (np.arange(110) + 0.5)
    arr = xr.DataArray(data, dims=("y", "x"), coords={"y": y, "x": x}).rio.write_crs(CRS)
    arr = arr.rio.write_transform(NORTH_UP)
    out = tmp_path / "mem.zarr"
    chunkseg.predict_to_zarr(arr, numpy_conv3x3(), str(out), ome=True, **KW)
    ds = xr.open_zarr(str(out))
    _assert_geo(ds, NORTH_UP)
    np.testing.assert_array_equal(ds.y.values, y)
    ms = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]


def test_rotated_transform_kept_in_spatial_ref(tmp_path):
    # a rotated grid has no 1-D y/x: the GeoTransform alone holds it; NGFF stays in pixels
    rotated = NORTH_UP @ Affine.rotation(15.0)
    arr = xr.DataArray(_pixels((64, 80)), dims=("y", "x")).rio.write_crs(CRS)
    arr = arr.rio.write_transform(rotated)
    out = tmp_path / "rot.zarr"
    chunkseg.predict_to_zarr(arr, numpy_conv3x3(), str(out), ome=True, **KW)
    ds = xr.open_zarr(str(out))
    assert ds.rio.crs == rasterio.crs.CRS.from_user_input(CRS)
    assert ds.rio.transform().almost_equals(rotated)
    ms = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]


def test_ingest_keeps_crs_and_transform(tmp_path):
    data = _pixels()
    path = _write_geotiff(tmp_path / "scene.tif", data)
    store = tmp_path / "ingested.zarr"
    chunkseg.ingest(path, str(store), chunks=32, levels=2)
    image = chunkseg.open_image(str(store))
    _assert_geo(image, NORTH_UP)
    np.testing.assert_array_equal(image.values[..., 0], data)
    ms = zarr.open_group(str(store), mode="r").attrs["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    assert all("unit" not in a for a in ms["axes"])
    out = tmp_path / "from_ingested.zarr"
    chunkseg.predict_to_zarr(str(store), numpy_conv3x3(), str(out), **KW)
    _assert_geo(xr.open_zarr(str(out)), NORTH_UP)


def test_geotiff_transform_without_crs_is_kept(tmp_path):
    # ModelPixelScale and ModelTiepoint but no GeoKeyDirectory: a transform, no CRS
    data = _pixels((40, 50))
    path = str(tmp_path / "nocrs.tif")
    with rasterio.open(path, "w", driver="GTiff", height=40, width=50, count=1,
                       dtype="uint8", transform=NORTH_UP) as dst:
        dst.write(data, 1)
    image = chunkseg.open_image(path)
    assert image.rio.crs is None
    assert image.rio.transform() == NORTH_UP
    np.testing.assert_allclose(image.y.values, 5_400_000.0 - 10.0 * (np.arange(40) + 0.5))


def test_geotiff_from_url_keeps_crs(tmp_path):
    import fsspec

    path = _write_geotiff(tmp_path / "scene.tif", _pixels((50, 60)))
    fs = fsspec.filesystem("memory")
    fs.pipe("/geo/scene.tif", open(path, "rb").read())
    try:
        _assert_geo(chunkseg.open_image("memory://geo/scene.tif"), NORTH_UP)
    finally:
        fs.rm("/geo", recursive=True)


def test_geotiff_without_rioxarray_reads_plain_with_warning(tmp_path, monkeypatch):
    data = _pixels((50, 60))
    path = _write_geotiff(tmp_path / "scene.tif", data)
    monkeypatch.setitem(sys.modules, "rioxarray", None)  # `import rioxarray` fails
    with pytest.warns(UserWarning, match=r"rioxarray is not installed.*chunkseg\[geo\]"):
        image = chunkseg.open_image(path)
    assert set(image.coords) == set()  # pixels: no CRS, no coordinates in metres
    np.testing.assert_array_equal(image.values[..., 0], data)


def _coord(values, units=None):
    return xr.Variable("v", np.asarray(values, float), {} if units is None else {"units": units})


@pytest.mark.parametrize("y, x, expected", [
    # both axes evenly spaced and increasing, in one NGFF unit each: scale and translation
    (_coord([5.0, 15.0, 25.0], "metre"), _coord([1.0, 3.0], "m"),
     ([10.0, 2.0], [5.0, 1.0], {"y": "meter", "x": "meter"})),
    (_coord([0.0, 0.5]), _coord([2.0, 2.25]), ([0.5, 0.25], [0.0, 2.0], {"y": None, "x": None})),
    # y decreasing (north-up), degrees, a unit on one axis only, uneven: pixels on both axes
    (_coord([25.0, 15.0, 5.0], "metre"), _coord([1.0, 3.0], "metre"), ([1.0, 1.0], [0.0, 0.0], {})),
    (_coord([45.0, 45.5], "degrees_north"), _coord([7.0, 7.5], "degrees_east"),
     ([1.0, 1.0], [0.0, 0.0], {})),
    (_coord([5.0, 15.0], "metre"), _coord([1.0, 3.0]), ([1.0, 1.0], [0.0, 0.0], {})),
    (_coord([0.0, 1.0, 3.0]), _coord([1.0, 3.0]), ([1.0, 1.0], [0.0, 0.0], {})),
])
def test_pixel_grid_never_mixes_units(y, x, expected):
    coords = {d: xr.Variable(d, v.values, v.attrs) for d, v in (("y", y), ("x", x))}
    assert pixel_grid(coords) == expected


def test_pixel_grid_rotated_grid_mapping_is_pixels():
    coords = {"y": xr.Variable("y", [5.0, 15.0], {"units": "m"}),
              "x": xr.Variable("x", [5.0, 15.0], {"units": "m"}),
              "spatial_ref": xr.Variable((), 0, {"crs_wkt": "x",
                                                 "GeoTransform": "0 10 1 0 1 10"})}
    assert pixel_grid(coords) == ([1.0, 1.0], [0.0, 0.0], {})
    coords["spatial_ref"].attrs["GeoTransform"] = "0 10 0 0 0 10"
    assert pixel_grid(coords) == ([10.0, 10.0], [5.0, 5.0], {"y": "meter", "x": "meter"})
