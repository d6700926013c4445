"""OME-Zarr 0.5 outputs (ome=True): NGFF metadata read back by ome-zarr-py and validated by
ome-zarr-models, pyramid levels against a loop reference, physical coordinates and class names
from predict to Zarr to xarray."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from model_factories import numpy_conv3x3
from reference import CountingStore, reference_halve
from test_resume import FailsLate

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidTypeError, InvalidValueError, ModelOutputError
from chunkseg.outputs import _pyramid
from chunkseg.plan import plan_tiles

ome_zarr = pytest.importorskip("ome_zarr")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Multiscales, Reader  # noqa: E402

models = pytest.importorskip("ome_zarr_models.v05")

KW = dict(tile=48, overlap=16, chunks=64, outputs="logits,probabilities,labels")


def _image(shape=(300, 260), seed=5):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _physical(image, dy=0.5, dx=0.25, y0=10.0, x0=-3.0, units="um"):
    y = xr.Variable("y", y0 + dy * np.arange(image.shape[0]), {"units": units})
    x = xr.Variable("x", x0 + dx * np.arange(image.shape[1]), {"units": units})
    return xr.DataArray(image, dims=("y", "x"), coords={"y": y, "x": x})


# ---------------------------------------------------------------------------------------------
# kernels against the loop reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 8, 6), (3, 7, 5), (1, 1, 9)])
def test_downsample_mean_equals_reference(shape):
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    a[0, 0, :2] = np.nan  # a square with two NaN
    a[0, :2, -2:] = np.nan  # ...and one with none finite where the width is even
    ref = reference_halve(a, "mean")
    np.testing.assert_allclose(_pyramid.downsample_mean(a), ref, rtol=1e-6, equal_nan=True)
    assert _pyramid.downsample_mean(a).dtype == np.float32
    f16 = _pyramid.downsample_mean(a.astype(np.float16))
    assert f16.dtype == np.float16


@pytest.mark.parametrize("shape", [(8, 6), (7, 9), (1, 1)])
def test_downsample_mode_equals_reference(shape):
    a = np.random.default_rng(1).integers(0, 3, size=shape).astype(np.uint8)
    np.testing.assert_array_equal(_pyramid.downsample_mode(a), reference_halve(a, "mode"))
    # four different values keep the top-left one (nearest neighbour)
    np.testing.assert_array_equal(_pyramid.downsample_mode(np.array([[4, 1], [2, 3]])), [[4]])


def test_level_shapes():
    assert len(_pyramid.level_shapes((40000, 40000))) == 8  # 40000 ... 313
    assert _pyramid.level_shapes((40000, 40000))[-1] == (313, 313)
    assert _pyramid.level_shapes((300, 260)) == [(300, 260)]
    assert _pyramid.level_shapes((300, 261), levels=3) == [(300, 261), (150, 131), (75, 66)]


# ---------------------------------------------------------------------------------------------
# the written store
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ome_output(tmp_path_factory):
    out = tmp_path_factory.mktemp("ome") / "seg.zarr"
    image = _physical(_image())
    ds = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), ome=True, levels=3,
                                  classes=["background", "membrane"], **KW)
    return out, image, ds


def test_ome_zarr_reader_opens_image_and_labels(ome_output):
    out, _, _ = ome_output
    nodes = list(Reader(parse_url(str(out)))())
    image = nodes[0]
    assert image.load(Multiscales) is not None
    assert len(image.data) == 3
    assert [tuple(d.shape) for d in image.data] == [(2, 300, 260), (2, 150, 130), (2, 75, 65)]
    ms = image.metadata
    assert [a["name"] for a in ms["axes"]] == ["class", "y", "x"]
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert [a.get("unit") for a in ms["axes"]] == [None, "micrometer", "micrometer"]
    assert ms["channel_names"] == ["background", "membrane"]
    scales = [t[0]["scale"] for t in ms["coordinateTransformations"]]
    assert scales == [[1.0, 0.5, 0.25], [1.0, 1.0, 0.5], [1.0, 2.0, 1.0]]
    # the centre of level k's first pixel: the centre of the 2^k square it summarises
    shifts = [t[1]["translation"] for t in ms["coordinateTransformations"]]
    assert shifts == [[0.0, 10.0, -3.0], [0.0, 10.25, -2.875], [0.0, 10.75, -2.625]]
    labels = [n for n in nodes if n.load(Label) is not None]
    assert len(labels) == 1 and len(labels[0].data) == 3
    meta = labels[0].metadata
    # 0 is "no prediction" (transparent in viewers); class k is label value k + 1
    assert meta["properties"] == {1: {"class": "background"}, 2: {"class": "membrane"}}
    assert set(meta["color"]) == {1, 2}
    assert meta["color"][1] != meta["color"][2]


def test_ome_store_validates_with_ome_zarr_models(ome_output):
    out, _, _ = ome_output
    group = zarr.open_group(str(out), mode="r")
    image = models.Image.from_zarr(group)
    assert image.attributes.ome.version == "0.5"
    assert [d.path for d in image.attributes.ome.multiscales[0].datasets] == [
        "probabilities", "1/probabilities", "2/probabilities"]
    assert models.Labels.from_zarr(group["labels"]).attributes.ome.labels == ["classes"]
    label = models.ImageLabel.from_zarr(group["labels/classes"])
    assert [p.model_dump()["class"] for p in label.attributes.ome.image_label.properties] == [
        "background", "membrane"]
    assert [c.rgba[3] for c in label.attributes.ome.image_label.colors] == [255, 255]


def test_pyramid_levels_equal_direct_downsampling(ome_output):
    out, _, _ = ome_output
    g = zarr.open_group(str(out), mode="r")
    probs, labels = g["probabilities"][...], g["labels/classes/0"][...]
    for k in (1, 2):
        probs, labels = reference_halve(probs, "mean"), reference_halve(labels, "mode")
        np.testing.assert_allclose(g[f"{k}/probabilities"][...], probs, rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(g[f"labels/classes/{k}"][...], labels)
    # an even-sized level is the plain 2 x 2 block mean of the level below
    from skimage.measure import block_reduce

    np.testing.assert_allclose(g["1/probabilities"][...],
                               block_reduce(g["probabilities"][...], (1, 2, 2), np.mean),
                               rtol=1e-6, atol=1e-7)


def test_ome_values_equal_the_default_layout(ome_output, tmp_path):
    out, image, ds = ome_output
    plain = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "plain.zarr"),
                                     classes=["background", "membrane"], **KW)
    opened = chunkseg.open_output(str(out))
    for name in ("logits", "probabilities", "labels"):
        np.testing.assert_array_equal(opened[name].values, plain[name].values)
        np.testing.assert_array_equal(ds[name].values, plain[name].values)
    assert opened.labels.dims == ("y", "x")
    # xarray opens the full-resolution level as it is, and level 1 as its own group
    root = xr.open_zarr(str(out))
    assert set(root.data_vars) == {"logits", "probabilities"}
    level1 = xr.open_zarr(str(out), group="1")
    assert level1.probabilities.shape == (2, 150, 130)
    np.testing.assert_allclose(level1.y.values, root.y.values.reshape(-1, 2).mean(axis=1))
    np.testing.assert_allclose(level1.x.values, root.x.values.reshape(-1, 2).mean(axis=1))
    assert list(level1["class"].values) == ["background", "membrane"]


def test_every_level_chunk_written_once():
    store = CountingStore(zarr.storage.MemoryStore())
    image = _image((300, 260))
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), store, ome=True, levels=3, **KW)
    for k, shape in enumerate(_pyramid.level_shapes((300, 260), 3)):
        n = plan_tiles(shape, 4, 0, 64).n_chunks
        prob = {key: v for key, v in store.writes.items()
                if key.startswith(f"{k}/probabilities/c/")} if k else {
            key: v for key, v in store.writes.items() if key.startswith("probabilities/c/")}
        lab = {key: v for key, v in store.writes.items()
               if key.startswith(f"labels/classes/{k}/c/")}
        assert len(prob) == n and set(prob.values()) == {1}, k
        assert len(lab) == n and set(lab.values()) == {1}, k
    # without physical coordinates the NGFF transforms are in pixels, with no unit
    meta = zarr.open_group(store, mode="r").attrs["ome"]["multiscales"][0]
    assert meta["datasets"][1]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 2.0, 2.0]},
        {"type": "translation", "translation": [0.0, 0.5, 0.5]}]
    assert "unit" not in meta["axes"][1]


def test_automatic_levels_and_logits_image(tmp_path):
    image = _image((1100, 300))
    out = tmp_path / "seg.zarr"
    ds = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), ome=True, tile=64,
                                  overlap=16, chunks=256, outputs="logits,labels")
    assert ds.attrs["levels"] == 3  # 1100, 550, 275
    g = zarr.open_group(str(out), mode="r")
    assert g.attrs["ome"]["multiscales"][0]["name"] == "logits"
    assert g["2/logits"].shape == (2, 275, 75)
    np.testing.assert_allclose(g["1/logits"][...], reference_halve(g["logits"][...], "mean"),
                               rtol=1e-5, atol=1e-6)


def test_interrupted_ome_run_resumes_with_its_pyramid(tmp_path):
    image = _image()
    clean = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "clean.zarr"),
                                     ome=True, levels=2, **KW)
    out = str(tmp_path / "seg.zarr")
    with pytest.raises(RuntimeError, match="late tile"):
        chunkseg.predict_to_zarr(image, FailsLate(20), out, ome=True, levels=2, **KW)
    with pytest.raises(InvalidValueError, match=r"levels \(was 2, now 3\)"):
        chunkseg.predict_to_zarr(image, FailsLate(10**9), out, resume=True, ome=True, levels=3,
                                 **KW)
    chunkseg.predict_to_zarr(image, FailsLate(10**9), out, resume=True, ome=True, levels=2, **KW)
    a, b = zarr.open_group(out, mode="r"), zarr.open_group(str(tmp_path / "clean.zarr"))
    for path in ("probabilities", "1/probabilities", "labels/classes/0", "labels/classes/1"):
        np.testing.assert_array_equal(a[path][...], b[path][...])
    assert chunkseg.open_output(out).attrs["complete"] is True
    np.testing.assert_array_equal(chunkseg.open_output(out).labels, clean.labels)


def test_sharded_ome_output_holds_the_same_values(tmp_path):
    image = _image()
    kw = {**KW, "chunks": 128}  # the shard is the computation chunk: compare like with like
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "u.zarr"), ome=True,
                             levels=3, **kw)
    sharded = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "s.zarr"),
                                       ome=True, levels=3, shards=128, **{**KW, "chunks": 64})
    a, b = zarr.open_group(str(tmp_path / "u.zarr")), zarr.open_group(str(tmp_path / "s.zarr"))
    assert b["probabilities"].shards == (2, 128, 128)
    for path in ("probabilities", "2/probabilities", "labels/classes/0", "labels/classes/2"):
        np.testing.assert_array_equal(a[path][...], b[path][...])
    assert sharded.labels.dims == ("y", "x")


# ---------------------------------------------------------------------------------------------
# coordinates and class names
# ---------------------------------------------------------------------------------------------


def test_xarray_coords_survive_predict_zarr_open_zarr(ome_output):
    out, image, _ = ome_output
    ds = xr.open_zarr(str(out))
    np.testing.assert_array_equal(ds.y.values, image.y.values)
    np.testing.assert_array_equal(ds.x.values, image.x.values)
    assert ds.y.attrs["units"] == "um" and ds.x.attrs["units"] == "um"
    assert list(ds["class"].values) == ["background", "membrane"]
    assert ds.attrs["class_names"] == ["background", "membrane"]
    # label by name, in physical units
    window = ds.probabilities.sel({"class": "membrane", "y": slice(20, 30), "x": slice(0, 5)})
    assert window.shape == (21, 21)  # 20-30 um by 0.5, 0-5 um by 0.25


def test_geospatial_dataarray_keeps_coords_and_crs(tmp_path):
    # rioxarray-style: north-up (y decreasing), a spatial_ref scalar holding the CRS
    image = _image((130, 150))
    y = 4_500_000.0 - 10.0 * np.arange(130)
    x = 300_000.0 + 10.0 * np.arange(150)
    crs = {"crs_wkt": 'PROJCS["WGS 84 / UTM zone 33N"]', "spatial_ref": "EPSG:32633"}
    da_ = xr.DataArray(image, dims=("y", "x"),
                       coords={"y": y, "x": x, "spatial_ref": xr.Variable((), 0, crs)})
    lazy = chunkseg.predict(da_, numpy_conv3x3(), **KW)
    assert lazy.spatial_ref.attrs == crs
    out = tmp_path / "geo.zarr"
    chunkseg.predict_to_zarr(da_, numpy_conv3x3(), str(out), ome=True, levels=2, **KW)
    ds = chunkseg.open_output(str(out))
    np.testing.assert_array_equal(ds.y.values, y)
    np.testing.assert_array_equal(ds.x.values, x)
    # every node chunkseg writes carries its ownership stamp; the CRS attrs are kept as they were
    assert "spatial_ref" in ds.coords
    assert {k: v for k, v in ds.spatial_ref.attrs.items() if k != "chunkseg_version"} == crs
    np.testing.assert_array_equal(ds.logits.values, lazy.logits.values)
    # NGFF cannot say "y decreases": its transform is in pixels along both axes (never pixels
    # along y and metres along x); the coordinates and spatial_ref hold the grid
    meta = zarr.open_group(str(out), mode="r").attrs["ome"]["multiscales"][0]
    assert meta["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 1.0, 1.0]}]
    assert "unit" not in meta["axes"][1] and "unit" not in meta["axes"][2]


def test_ngff_input_scale_and_translation_become_coords(tmp_path):
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    image = _image((200, 180))
    src = tmp_path / "in.ome.zarr"
    root = zarr.open_group(str(src), mode="w", zarr_format=3)
    for path, level in (("s0", image), ("s1", image[::2, ::2])):
        root.create_array(path, data=level, chunks=(64, 64), dimension_names=("y", "x"))
    # the multiscale's own scale (2 nm) applies after each dataset's (2 px) and translation
    write_multiscales_metadata(
        root, [{"path": "s0", "coordinateTransformations": [
                    {"type": "scale", "scale": [2.0, 2.0]},
                    {"type": "translation", "translation": [50.0, 100.0]}]},
               {"path": "s1", "coordinateTransformations": [
                    {"type": "scale", "scale": [4.0, 4.0]},
                    {"type": "translation", "translation": [51.0, 101.0]}]}],
        fmt=FormatV05(), axes=[{"name": "y", "type": "space", "unit": "nanometer"},
                               {"name": "x", "type": "space", "unit": "nanometer"}])
    ome = root.attrs["ome"]  # ome-zarr-py has no argument for the multiscale-level transform
    ome["multiscales"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [2.0, 2.0]}]
    root.attrs["ome"] = ome
    models.Image.from_zarr(root)  # a valid NGFF 0.5 input
    ds = chunkseg.predict_to_zarr(str(src), numpy_conv3x3(), str(tmp_path / "o.zarr"),
                                  ome=True, levels=2, **KW)
    np.testing.assert_allclose(ds.y.values, 100.0 + 4.0 * np.arange(200))
    np.testing.assert_allclose(ds.x.values, 200.0 + 4.0 * np.arange(180))
    assert ds.y.attrs["units"] == "nanometer"
    meta = zarr.open_group(str(tmp_path / "o.zarr"), mode="r").attrs["ome"]["multiscales"][0]
    assert meta["axes"][1] == {"name": "y", "type": "space", "unit": "nanometer"}
    assert meta["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 4.0, 4.0]},
        {"type": "translation", "translation": [0.0, 100.0, 200.0]}]


def test_tiff_resolution_becomes_coords(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    image = _image((120, 90))
    path = tmp_path / "em.tif"
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / 0.25, 1 / 0.5),
                     metadata={"unit": "um"})
    ds = chunkseg.predict(str(path), numpy_conv3x3(), **KW)
    np.testing.assert_allclose(ds.y.values, 0.5 * np.arange(120))
    np.testing.assert_allclose(ds.x.values, 0.25 * np.arange(90))
    assert ds.y.attrs["units"] == "micrometer"
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, image)  # no unit: no coordinates
    assert "y" not in chunkseg.predict(str(plain), numpy_conv3x3(), **KW).coords


def test_class_names_default_and_errors(tmp_path):
    image = _image((100, 90))
    ds = chunkseg.predict(image, numpy_conv3x3(), **KW)
    assert list(ds["class"].values) == ["0", "1"]
    assert list(chunkseg.predict(image, "isbi2012-unet", tile=64, overlap=16)["class"].values) \
        == ["cell", "membrane"]
    # lazily, the names give K without running the model: a model with another K fails in
    # its tasks; the writer probes the model first
    ds = chunkseg.predict(image, numpy_conv3x3(), classes=["a"], **KW)
    with pytest.raises(ModelOutputError, match="returned 2 classes, but 1 were expected"):
        ds.logits.compute()
    with pytest.raises(InvalidValueError, match="`classes` must hold 2 distinct names"):
        chunkseg.predict_to_zarr(image, numpy_conv3x3(), tmp_path / "o.zarr", classes=["a"],
                                 **KW)
    with pytest.raises(InvalidValueError, match="distinct"):
        chunkseg.predict(image, numpy_conv3x3(), classes=["a", "a"], **KW)
    with pytest.raises(InvalidTypeError, match="`classes` must be a sequence of str"):
        chunkseg.predict(image, numpy_conv3x3(), classes="ab", **KW)
    with pytest.raises(InvalidTypeError, match="non-empty str"):
        chunkseg.predict(image, numpy_conv3x3(), classes=[0, 1], **KW)


def test_levels_need_ome(tmp_path):
    out = tmp_path / "o.zarr"
    with pytest.raises(InvalidValueError, match="`levels` must be a positive int"):
        chunkseg.predict_to_zarr(_image((64, 64)), numpy_conv3x3(), str(out), levels=2, **KW)
    with pytest.raises(InvalidValueError, match="`levels`"):
        chunkseg.predict_to_zarr(_image((64, 64)), numpy_conv3x3(), str(out), ome=True,
                                 levels=0, **KW)
    assert not out.exists()


def test_cli_ome_levels_classes(tmp_path, capsys):
    src = tmp_path / "in.zarr"
    z = zarr.create_array(str(src), shape=(200, 170), dtype="u1", chunks=(100, 100),
                          dimension_names=("y", "x"))
    z[...] = _image((200, 170))
    out = tmp_path / "seg.zarr"
    code = main(["predict", str(src), str(out), "--model", "model_factories:numpy_conv3x3",
                 "--tile", "48", "--overlap", "16", "--chunk", "64", "--ome", "--levels", "2",
                 "--classes", "cell,membrane", "--outputs", "probabilities,labels"])
    assert code == 0
    nodes = list(Reader(parse_url(str(out)))())
    assert len(nodes[0].data) == 2
    assert nodes[0].metadata["channel_names"] == ["cell", "membrane"]
    assert main(["predict", str(src), str(tmp_path / "bad.zarr"), "--model",
                 "model_factories:numpy_conv3x3", "--classes", "one"]) == 2
    assert "`--classes` must hold 2 distinct names" in capsys.readouterr().err


def test_instances_regions_and_figures_on_an_ome_output(tmp_path):
    image = _image((300, 260), seed=2)
    ome, plain = str(tmp_path / "ome.zarr"), str(tmp_path / "plain.zarr")
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), ome, ome=True, levels=2, **KW)
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), plain, **KW)
    a = chunkseg.label(ome, cls=0)
    b = chunkseg.label(plain, cls=0)
    np.testing.assert_array_equal(a.values, b.values)
    assert a.attrs["objects"] == b.attrs["objects"] > 10
    g = zarr.open_group(ome, mode="r")
    assert g["labels"].attrs["ome"]["labels"] == ["classes", "instances"]
    np.testing.assert_array_equal(g["labels/instances/1"][...],
                                  reference_halve(g["labels/instances/0"][...], "mode"))
    models.ImageLabel.from_zarr(g["labels/instances"])
    assert len([n for n in Reader(parse_url(ome))() if n.load(Label) is not None]) == 2
    chunkseg.label(ome, cls=0, overwrite=True)  # replaced, listed once
    assert zarr.open_group(ome, mode="r")["labels"].attrs["ome"]["labels"] == [
        "classes", "instances"]
    ta, tb = tmp_path / "a.parquet", tmp_path / "b.parquet"
    chunkseg.regions(ome, ta)
    chunkseg.regions(plain, tb)
    import pandas as pd

    pd.testing.assert_frame_equal(pd.read_parquet(ta), pd.read_parquet(tb))
    from chunkseg.viz import figures

    assert figures(ome, tmp_path / "figs", image=image)
