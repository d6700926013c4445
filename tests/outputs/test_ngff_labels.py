"""The NGFF class label image of an OME-layout output: 0 is "no prediction", class k is stored
as k + 1 (named and coloured in the image-label metadata), and every chunkseg reader still sees
class indices equal to the plain layout's ``labels``."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import chunkseg
from chunkseg import _ome

pytest.importorskip("ome_zarr")
models = pytest.importorskip("ome_zarr_models.v05")
from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Label, Reader  # noqa: E402

KW = dict(tile=48, overlap=16, chunks=64)
NAMES = ["bright", "dark", "middle"]


def three_classes(batch):
    """1 channel -> 3 classes, pointwise: bright (> 2/3), dark (< 1/3), middle (logit 0)."""
    z = batch[:, :1] / np.float32(255)
    return np.concatenate([3 * (z - 0.66), 3 * (0.33 - z), np.zeros_like(z)], axis=1)


def one_class(batch):
    """1 channel -> 1 class: foreground where the pixel is above half its range."""
    return batch[:, :1] / np.float32(255) - 0.5


def _image(shape=(200, 180), seed=3):
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)


def _mask():
    mask = np.zeros((20, 18), bool)  # one mask pixel per 10 x 10 image pixels
    mask[2:9, 3:11] = True
    return mask


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same masked run written in both layouts."""
    root = tmp_path_factory.mktemp("ngff")
    image = _image()
    kw = dict(KW, outputs="logits,labels", mask=_mask(), classes=NAMES)
    ome = chunkseg.predict_to_zarr(image, three_classes, str(root / "ome.zarr"), ome=True,
                                   levels=2, **kw)
    plain = chunkseg.predict_to_zarr(image, three_classes, str(root / "plain.zarr"), **kw)
    return root, image, ome, plain


def test_codec_by_hand():
    labels = np.array([[0, 1], [2, 0]], np.uint8)
    covered = np.array([[True, False], [True, True]])
    stored = _ome.encode_classes(labels, covered, 3)
    np.testing.assert_array_equal(stored, [[1, 0], [3, 1]])
    np.testing.assert_array_equal(_ome.encode_classes(labels, None, 3), [[1, 2], [3, 1]])
    # back to class indices; "no prediction" reads as class 0, as the plain layout holds it
    np.testing.assert_array_equal(_ome.decode_classes(stored), [[0, 0], [2, 0]])
    np.testing.assert_array_equal(_ome.decode_classes(stored, offset=0), stored)
    # K classes need K + 1 stored values (K = 1: labels 0 and 1, stored 1 and 2)
    assert _ome.stored_dtype(255) == np.uint8 and _ome.stored_dtype(256) == np.uint16
    assert _ome.stored_dtype(1) == np.uint8
    top = _ome.encode_classes(np.array([254], np.uint8), None, 255)
    assert top.dtype == np.uint8 and top[0] == 255
    wide = _ome.encode_classes(np.array([255], np.uint8), None, 256)
    assert wide.dtype == np.uint16 and wide[0] == 256
    assert _ome.decode_classes(wide, np.uint8)[0] == 255
    assert _ome.label_names(["a", "b"]) == ("a", "b")
    assert _ome.label_names(["fg"]) == ("not fg", "fg")


def test_stored_values_are_class_plus_one_and_zero_where_nothing_ran(pair):
    root, _, _, plain = pair
    level0 = zarr.open_group(str(root / "ome.zarr"), mode="r")["labels/classes/0"]
    stored = level0[...]
    logits = plain.logits.values
    covered = np.isfinite(logits).all(axis=0)  # where some tile ran (no tile: NaN logits)
    assert covered.sum() > 5000 and (~covered).sum() > 5000
    expected = np.where(covered, np.argmax(np.nan_to_num(logits, nan=0), axis=0) + 1, 0)
    np.testing.assert_array_equal(stored, expected)
    assert set(np.unique(stored)) == {0, 1, 2, 3}
    assert level0.dtype == np.uint8 and level0.attrs[_ome.CLASS_OFFSET] == 1
    # the plain layout keeps class indices, 0 where nothing ran
    np.testing.assert_array_equal(plain.labels.values, np.where(covered, expected - 1, 0))
    # level 1: the mode of each 2 x 2 of level 0 as stored, so all-masked squares stay 0
    level1 = zarr.open_group(str(root / "ome.zarr"), mode="r")["labels/classes/1"][...]
    square_masked = ~covered.reshape(100, 2, 90, 2).any(axis=(1, 3))
    assert square_masked.any() and (level1[square_masked] == 0).all()
    assert (level1[covered.reshape(100, 2, 90, 2).all(axis=(1, 3))] > 0).all()


def test_readers_see_class_indices_equal_to_the_plain_layout(pair, tmp_path):
    root, image, ome, plain = pair
    ome_path, plain_path = str(root / "ome.zarr"), str(root / "plain.zarr")
    opened = chunkseg.open_output(ome_path)
    for ds in (opened, ome):
        np.testing.assert_array_equal(ds.labels.values, plain.labels.values)
        assert ds.labels.dtype == plain.labels.dtype
        assert _ome.CLASS_OFFSET not in ds.labels.attrs
    # evaluate: the same confusion matrix against the same truth
    truth = (np.asarray(image) // 86).astype(np.uint8)
    a, b = chunkseg.evaluate(ome_path, truth), chunkseg.evaluate(plain_path, truth)
    np.testing.assert_array_equal(a["confusion_matrix"], b["confusion_matrix"])
    assert a["classes"] == NAMES
    # ... also given the label image itself (its group, a level's path, the zarr.Array)
    level0 = zarr.open_group(ome_path, mode="r")["labels/classes/0"]
    for pred in (f"{ome_path}/labels/classes", f"{ome_path}/labels/classes/0", level0):
        np.testing.assert_array_equal(chunkseg.evaluate(pred, truth, classes=NAMES)[
            "confusion_matrix"], b["confusion_matrix"])
    # label: the same objects of class 2 ("middle")
    la = chunkseg.label(ome_path, cls=2, name="mid")
    lb = chunkseg.label(plain_path, cls=2, name="mid")
    np.testing.assert_array_equal(la.values, lb.values)
    assert la.attrs["objects"] == lb.attrs["objects"] > 5
    # the figures' reader
    from chunkseg.viz.data import _Output

    view = _Output(ome_path).arrays["labels"]
    np.testing.assert_array_equal(view[10:150, 20:170], plain.labels.values[10:150, 20:170])
    assert view.shape == (200, 180) and view.dtype == plain.labels.dtype


def test_image_label_metadata_names_and_colours_k_plus_one(pair):
    root, _, _, _ = pair
    group = zarr.open_group(str(root / "ome.zarr"), mode="r")
    label = models.ImageLabel.from_zarr(group["labels/classes"])  # valid NGFF 0.5
    meta = group["labels/classes"].attrs["ome"]
    image_label = meta["image-label"]
    # by hand: NGFF 0.5 image-label rules
    assert image_label["source"] == {"image": "../../"}
    assert [c["label-value"] for c in image_label["colors"]] == [1, 2, 3]
    assert [p["label-value"] for p in image_label["properties"]] == [1, 2, 3]
    assert [p["class"] for p in image_label["properties"]] == NAMES
    for c in image_label["colors"]:
        assert len(c["rgba"]) == 4 and all(isinstance(v, int) and 0 <= v <= 255
                                             for v in c["rgba"])
    assert len({tuple(c["rgba"]) for c in image_label["colors"]}) == 3
    assert [c.label_value for c in label.attributes.ome.image_label.colors] == [1, 2, 3]
    # multiscales: one dataset per level, a scale transform first, the y, x axes
    ms = meta["multiscales"][0]
    assert [d["path"] for d in ms["datasets"]] == ["0", "1"]
    assert [d["coordinateTransformations"][0]["type"] for d in ms["datasets"]] == ["scale"] * 2
    assert [a["name"] for a in ms["axes"]] == ["y", "x"]
    assert group["labels"].attrs["ome"]["labels"][0] == "classes"
    # ome-zarr-py reads label value k + 1 as class k
    node = next(n for n in Reader(parse_url(str(root / "ome.zarr")))()
                if n.load(Label) is not None)
    assert node.metadata["properties"] == {k + 1: {"class": n} for k, n in enumerate(NAMES)}
    assert 0 not in node.metadata["color"]


def test_one_class_output(tmp_path):
    image = _image((130, 120), seed=4)
    kw = dict(KW, outputs="logits,labels", classes=["fg"])
    ome = chunkseg.predict_to_zarr(image, one_class, str(tmp_path / "o.zarr"), ome=True,
                                   levels=1, **kw)
    plain = chunkseg.predict_to_zarr(image, one_class, str(tmp_path / "p.zarr"), **kw)
    stored = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["labels/classes/0"][...]
    np.testing.assert_array_equal(stored, (plain.logits.values[0] > 0) + 1)
    np.testing.assert_array_equal(ome.labels.values, plain.labels.values)
    props = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")["labels/classes"].attrs[
        "ome"]["image-label"]["properties"]
    assert props == [{"label-value": 1, "class": "not fg"}, {"label-value": 2, "class": "fg"}]


def test_torch_kernel_marks_the_same_pixels_no_prediction(tmp_path):
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(1, 3, kernel_size=3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(
            np.random.default_rng(0).normal(size=(3, 1, 3, 3)).astype(np.float32) / 255))
        conv.bias.zero_()
    image = _image()
    kw = dict(KW, outputs="labels", mask=_mask(), ome=True, levels=1)
    chunkseg.predict_to_zarr(image, conv, str(tmp_path / "t.zarr"), kernel="torch", **kw)
    chunkseg.predict_to_zarr(image, conv, str(tmp_path / "n.zarr"), kernel="numpy", **kw)
    t = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["labels/classes/0"][...]
    n = zarr.open_group(str(tmp_path / "n.zarr"), mode="r")["labels/classes/0"][...]
    np.testing.assert_array_equal(t == 0, n == 0)
    assert 0 < (n == 0).sum() < n.size
    # the two kernels' float sums may differ in the last bit: at most a near-tie flips
    assert (t != n).mean() < 1e-3
