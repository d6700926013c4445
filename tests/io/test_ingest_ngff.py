"""`chunkseg ingest` writes an OME-NGFF 0.5 image: a pyramid (each level the rounded 2 x 2 mean
of the one before), axes c, y, x with the unit and pixel size of the source, metadata that
ome-zarr-py reads and ome-zarr-models validates; chunkseg reads it back as its input."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3
from reference import reference_halve

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError, MissingDependencyError
from chunkseg.outputs import _pyramid

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("ome_zarr")
models = pytest.importorskip("ome_zarr_models.v05")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Multiscales, Reader  # noqa: E402

KW = dict(tile=48, overlap=16, chunks=64)


def _rounded_halve(a):
    """The loop reference's mean, in float, rounded to the nearest integer (halves to even)."""
    return np.rint(reference_halve(a.astype(np.float64), "mean")).astype(a.dtype)


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    """A 2-channel uint16 ImageJ TIFF, 0.5 um (y) by 0.25 um (x) pixels, odd sizes."""
    path = tmp_path_factory.mktemp("tif") / "em.tif"
    image = np.random.default_rng(7).integers(0, 4000, (2, 157, 101)).astype(np.uint16)
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"unit": "um", "axes": "CYX"})
    return path, image


def test_downsample_mean_rounds_integer_images():
    a = np.array([[1, 2, 7], [2, 2, 0]], np.uint8)
    # means 1.75 -> 2; 3.5 (edge column repeated: 7, 7, 0, 0) -> 4 (half to even)
    np.testing.assert_array_equal(_pyramid.downsample_mean(a), [[2, 4]])
    b = np.random.default_rng(2).integers(0, 256, (3, 9, 7)).astype(np.uint8)
    np.testing.assert_array_equal(_pyramid.downsample_mean(b), _rounded_halve(b))


def test_tiff_becomes_an_ngff_pyramid_with_its_pixel_size(tiff, tmp_path):
    path, image = tiff
    out = tmp_path / "em.zarr"
    group = chunkseg.ingest(path, out, chunks=64, levels=3)
    # the arrays: (c, y, x) levels, each the rounded 2 x 2 mean of the one before as stored
    assert sorted(group.array_keys()) == ["0", "1", "2"]
    np.testing.assert_array_equal(group["0"][...], image)
    assert [group[k].shape for k in "012"] == [(2, 157, 101), (2, 79, 51), (2, 40, 26)]
    assert group["1"].chunks == (2, 64, 51) and group["2"].chunks == (2, 40, 26)
    np.testing.assert_array_equal(group["1"][...], _rounded_halve(image))
    np.testing.assert_array_equal(group["2"][...], _rounded_halve(group["1"][...]))
    assert all(group[k].metadata.dimension_names == ("c", "y", "x") for k in "012")
    # the metadata: valid NGFF 0.5 ...
    ngff = models.Image.from_zarr(zarr.open_group(str(out), mode="r"))
    assert ngff.attributes.ome.version == "0.5"
    ms = group.attrs["ome"]["multiscales"][0]
    # ... and by hand: axes c (channel), y, x (space, micrometer), one dataset per level with a
    # scale (pixel size * 2^k) and the translation of its first pixel's centre
    assert ms["axes"] == [{"name": "c", "type": "channel"},
                          {"name": "y", "type": "space", "unit": "micrometer"},
                          {"name": "x", "type": "space", "unit": "micrometer"}]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    transforms = [d["coordinateTransformations"] for d in ms["datasets"]]
    assert [t[0] for t in transforms] == [
        {"type": "scale", "scale": [1.0, 0.5, 0.25]},
        {"type": "scale", "scale": [1.0, 1.0, 0.5]},
        {"type": "scale", "scale": [1.0, 2.0, 1.0]}]
    assert transforms[0][1:] == []
    assert [t[1] for t in transforms[1:]] == [
        {"type": "translation", "translation": [0.0, 0.25, 0.125]},
        {"type": "translation", "translation": [0.0, 0.75, 0.375]}]
    assert group.attrs["complete"] is True and group["0"].attrs["complete"] is True
    assert group["0"].attrs["source"] == str(path)
    # ome-zarr-py opens it as a 3-level image
    node = next(iter(Reader(parse_url(str(out)))()))
    assert node.load(Multiscales) is not None
    assert [tuple(d.shape) for d in node.data] == [(2, 157, 101), (2, 79, 51), (2, 40, 26)]


def test_ingest_then_predict_keeps_the_pixel_size(tmp_path):
    image = np.random.default_rng(3).integers(0, 256, (130, 150)).astype(np.uint8)
    path = tmp_path / "img.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.2, 1 / 0.4),
                     metadata={"unit": "um"})
    store = tmp_path / "img.zarr"
    chunkseg.ingest(path, store, chunks=64)  # default levels: one (150 <= 512)
    opened = chunkseg.open_image(store)
    np.testing.assert_array_equal(opened.values[..., 0], image)
    np.testing.assert_allclose(opened.y.values, 0.4 * np.arange(130))
    np.testing.assert_allclose(opened.x.values, 0.2 * np.arange(150))
    from_store = chunkseg.predict_to_zarr(str(store), numpy_conv3x3(), str(tmp_path / "a.zarr"),
                                          ome=True, levels=2, **KW)
    from_tiff = chunkseg.predict(str(path), numpy_conv3x3(), **KW)
    np.testing.assert_array_equal(from_store.logits.values, from_tiff.logits.values)
    np.testing.assert_allclose(from_store.y.values, 0.4 * np.arange(130))
    assert from_store.y.attrs["units"] == "micrometer"
    meta = zarr.open_group(str(tmp_path / "a.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert meta["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 0.4, 0.2]


def test_automatic_levels_and_bad_levels(tmp_path):
    image = np.random.default_rng(4).integers(0, 256, (1100, 300)).astype(np.uint8)
    group = chunkseg.ingest(image, tmp_path / "a.zarr", chunks=256)
    assert sorted(group.array_keys()) == ["0", "1", "2"]  # 1100, 550, 275
    assert group["2"].shape == (1, 275, 75)
    # no physical unit: the transforms are in pixels, with no unit
    ms = group.attrs["ome"]["multiscales"][0]
    assert "unit" not in ms["axes"][1] and ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    for bad in (0, -1):
        with pytest.raises(InvalidValueError, match="`levels` must be a positive int"):
            chunkseg.ingest(image, tmp_path / "b.zarr", levels=bad)
    assert not (tmp_path / "b.zarr").exists()


def test_cli_ingest_levels(tmp_path, capsys, tiff):
    path, _ = tiff
    assert main(["ingest", str(path), str(tmp_path / "c.zarr"), "--chunk", "64",
                 "--levels", "2"]) == 0
    printed = capsys.readouterr().out
    assert "OME-NGFF image" in printed and "2 level(s)" in printed
    assert "0.5 x 0.25 micrometer" in printed
    assert sorted(zarr.open_group(str(tmp_path / "c.zarr"), mode="r").array_keys()) == ["0", "1"]


def test_without_ome_zarr_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ome_zarr", None)  # import fails
    with pytest.raises(MissingDependencyError, match="`chunkseg ingest` writes its NGFF"):
        chunkseg.ingest(np.zeros((8, 8), np.uint8), tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()
