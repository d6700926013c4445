"""``labels_into_source`` / ``--labels-into-source``: the class label image also written into
the input's NGFF ``labels/`` group, and nothing else of the input touched (every other file
byte-identical); every refusal happens before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidValueError, OutputExistsError

pytest.importorskip("ome_zarr")
models = pytest.importorskip("ome_zarr_models.v05")
from ome_zarr.format import FormatV05  # noqa: E402
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Reader  # noqa: E402
from ome_zarr.writer import write_label_metadata, write_multiscales_metadata  # noqa: E402

KW = dict(tile=48, overlap=16, chunks=64, outputs="logits,labels", classes=["cell", "membrane"])


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> its bytes)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _ngff_source(path: Path, manual: bool = True) -> np.ndarray:
    """An ingested NGFF image (2 levels, 0.5 x 0.25 um pixels) with, optionally, a user's own
    label image ``labels/manual`` (written with ome-zarr-py, not by chunkseg)."""
    image = (np.random.default_rng(9).random((190, 170)) * 255).astype(np.uint8)
    y = chunkseg.open_image(image).assign_coords(y=0.5 * np.arange(190), x=0.25 * np.arange(170))
    y.y.attrs["units"] = y.x.attrs["units"] = "um"
    chunkseg.ingest(y, path, chunks=64, levels=2)
    if manual:
        root = zarr.open_group(str(path), mode="r+")
        labels = root.create_group("labels")
        mine = labels.create_group("manual")
        mine.create_array("0", data=(image > 128).astype(np.uint8), chunks=(64, 64),
                           dimension_names=("y", "x"))
        write_multiscales_metadata(
            mine, [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [0.5, 0.25]}]}], fmt=FormatV05(),
            axes=[{"name": "y", "type": "space", "unit": "micrometer"},
                  {"name": "x", "type": "space", "unit": "micrometer"}])
        write_label_metadata(labels, "manual", fmt=FormatV05())
    return image


def test_labels_go_into_the_source_and_nothing_else_changes(tmp_path):
    src, out = tmp_path / "img.zarr", tmp_path / "seg.zarr"
    image = _ngff_source(src)
    before = _files(src)
    mask = np.zeros((19, 17), bool)
    mask[3:15, 2:12] = True
    ds = chunkseg.predict_to_zarr(str(src), numpy_conv3x3(), str(out), ome=True, levels=2,
                                  mask=mask, labels_into_source=True, **KW)
    after = _files(src)
    # every file of the input is byte-identical, but the labels group's own metadata (its
    # list gains "classes"); the new files are all under labels/classes
    changed = sorted(p for p in before if after.get(p) != before[p])
    assert changed == ["labels/zarr.json"]
    new = sorted(set(after) - set(before))
    assert new and all(p.startswith("labels/classes/") for p in new)
    assert any(p.startswith("labels/classes/1/c/") for p in new)
    # the label image: the output's levels, value for value (0 where masked, class k + 1)
    s, o = zarr.open_group(str(src), mode="r"), zarr.open_group(str(out), mode="r")
    for k in (0, 1):
        np.testing.assert_array_equal(s[f"labels/classes/{k}"][...], o[f"labels/classes/{k}"][...])
    stored = s["labels/classes/0"][...]
    np.testing.assert_array_equal(stored[stored > 0] - 1, ds.labels.values[stored > 0])
    assert (stored == 0).any() and set(np.unique(stored)) == {0, 1, 2}
    # valid NGFF 0.5, listed beside the user's label image, in the image's physical space
    assert models.Labels.from_zarr(s["labels"]).attributes.ome.labels == ["manual", "classes"]
    models.ImageLabel.from_zarr(s["labels/classes"])
    meta = s["labels/classes"].attrs["ome"]
    assert [p["label-value"] for p in meta["image-label"]["properties"]] == [1, 2]
    assert meta["image-label"]["source"] == {"image": "../../"}
    image_scale = s.attrs["ome"]["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    label_scale = meta["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert label_scale[0]["scale"] == image_scale[0]["scale"][1:] == [0.5, 0.25]
    assert [a.get("unit") for a in meta["multiscales"][0]["axes"]] == ["micrometer"] * 2
    labels = [n for n in Reader(parse_url(str(src)))() if n.load(Label) is not None]
    assert len(labels) == 2
    # chunkseg still reads the input as it was
    np.testing.assert_array_equal(chunkseg.open_image(str(src)).values[..., 0], image)


def test_a_later_run_replaces_only_with_overwrite(tmp_path):
    src = tmp_path / "img.zarr"
    _ngff_source(src, manual=False)
    chunkseg.predict_to_zarr(str(src), numpy_conv3x3(), str(tmp_path / "a.zarr"), ome=True,
                             levels=1, labels_into_source=True, **KW)
    first = _files(src)
    with pytest.raises(OutputExistsError, match="earlier chunkseg run.*overwrite=True"):
        chunkseg.predict_to_zarr(str(src), numpy_conv3x3(), str(tmp_path / "b.zarr"),
                                 ome=True, levels=1, labels_into_source=True, **KW)
    assert not (tmp_path / "b.zarr").exists() and _files(src) == first
    chunkseg.predict_to_zarr(str(src), numpy_conv3x3(), str(tmp_path / "a.zarr"), ome=True,
                             levels=2, labels_into_source=True, overwrite=True, **KW)
    g = zarr.open_group(str(src), mode="r")
    assert g["labels"].attrs["ome"]["labels"] == ["classes"]  # listed once
    assert sorted(g["labels/classes"].array_keys()) == ["0", "1"]  # the new run's 2 levels
    np.testing.assert_array_equal(
        g["labels/classes/1"][...],
        zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["labels/classes/1"][...])


def test_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "img.zarr"
    _ngff_source(src, manual=False)
    out = tmp_path / "seg.zarr"

    def refused(image, error, match, **kw):
        before = _files(src)
        with pytest.raises(error, match=match):
            chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(out), labels_into_source=True,
                                     **{"ome": True, **KW, **kw})
        assert not out.exists() and _files(src) == before

    image = chunkseg.open_image(str(src)).values
    refused(image, InvalidValueError, "needs `image` to be an OME-NGFF image.*ndarray")
    refused(str(src), InvalidValueError, "needs `ome=True` and 'labels'", ome=False)
    refused(str(src), InvalidValueError, "needs `ome=True` and 'labels'", outputs="logits")
    refused(str(src), InvalidValueError, "not its full resolution level '0'",
            array_name="1")
    refused(zarr.open_group(str(src), mode="r"), InvalidValueError, "opened read-only")
    plain = tmp_path / "plain.zarr"  # a Zarr array, and a group without multiscales
    zarr.create_array(str(plain), data=image[..., 0], chunks=(64, 64))
    refused(str(plain), InvalidValueError, "not a Zarr group")
    bare = zarr.open_group(str(tmp_path / "bare.zarr"), mode="w")
    bare.create_array("image", data=image[..., 0], chunks=(64, 64))
    refused(str(tmp_path / "bare.zarr"), InvalidValueError, "without NGFF 'multiscales'")
    v2 = zarr.open_group(str(tmp_path / "v2.zarr"), mode="w", zarr_format=2)
    v2.create_array("0", data=image[..., 0], chunks=(64, 64))
    v2.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]}]
    refused(str(tmp_path / "v2.zarr"), InvalidValueError, "Zarr v2 group")
    import tifffile

    tifffile.imwrite(tmp_path / "img.tif", image[..., 0])
    refused(str(tmp_path / "img.tif"), InvalidValueError, "an image file")
    # a label image named "classes" that chunkseg did not write is never replaced
    labels = zarr.open_group(str(src), mode="r+").create_group("labels")
    labels.create_group("classes").create_array("0", data=image[..., 0], chunks=(64, 64))
    refused(str(src), OutputExistsError, "chunkseg did not write", overwrite=True)


def test_cli_labels_into_source(tmp_path, capsys):
    src = tmp_path / "img.zarr"
    _ngff_source(src, manual=False)
    args = ["predict", str(src), str(tmp_path / "seg.zarr"), "--model",
            "model_factories:numpy_conv3x3", "--tile", "48", "--overlap", "16", "--chunk", "64",
            "--outputs", "labels", "--no-progress", "--labels-into-source"]
    assert main(args) == 2  # without --ome
    assert "needs `--ome`" in capsys.readouterr().err  # the CLI names its flags
    assert main(args + ["--ome", "--levels", "2"]) == 0
    g = zarr.open_group(str(src), mode="r")
    assert g["labels"].attrs["ome"]["labels"] == ["classes"]
    np.testing.assert_array_equal(
        g["labels/classes/0"][...],
        zarr.open_group(str(tmp_path / "seg.zarr"), mode="r")["labels/classes/0"][...])
