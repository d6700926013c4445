"""chunkseg.evaluation.instances / ``chunkseg evaluate --instances``: the chunked contingency
table against the whole image, the scores against scikit-image and against the in-memory port
of the ISBI 2012 challenge's Fiji code (tests/fiji_isbi.py), split/merge directions, object
matching by hand, bad arguments, and the CLI on a predict + label output."""

from __future__ import annotations

import json

import dask.array as da
import fiji_isbi
import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3
from PIL import Image
from scipy import ndimage

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidTypeError, InvalidValueError
from chunkseg.evaluation.contingency import contingency_table_dask, thin_boundaries
from chunkseg.evaluation.instance_metrics import v_info, v_rand, vi_split_merge
from chunkseg.evaluation.instances import evaluate_instances

skm = pytest.importorskip("skimage.metrics")

SHAPE = (45, 58)
CHUNKINGS = [None, (45, 58), (7, 11), (16, 13), (45, 5)]
DATA = "data/isbi2012/train"


def _table(t, p):
    """The reference table: np.unique over (truth, pred) pixel pairs of the whole image."""
    pairs, counts = np.unique(np.stack([t.ravel(), p.ravel()]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts


def _random(seed, ids, shape=SHAPE):
    return np.random.default_rng(seed).integers(0, ids, shape)


def _blocky(seed, ids, shape=SHAPE, cell=5):
    """Random labels constant on cell x cell squares (objects bigger than a pixel)."""
    small = _random(seed, ids, (shape[0] // cell + 1, shape[1] // cell + 1))
    return np.kron(small, np.ones((cell, cell), int))[: shape[0], : shape[1]]


def _chunked(a, chunks):
    return a if chunks is None else da.from_array(a, chunks=chunks)


@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_table_equals_the_whole_image_for_any_chunking(chunks):
    t, p = _random(1, 9), _random(2, 2**32 - 1).astype(np.uint32)
    got = contingency_table_dask(_chunked(p, chunks), da.from_array(t, chunks=(10, 20))).compute()
    for g, r in zip(got, _table(t, p), strict=True):
        np.testing.assert_array_equal(g, r)
    keep = t != 3
    got = contingency_table_dask(_chunked(p, chunks), t, ignore=np.array([3])).compute()
    np.testing.assert_array_equal(got[2], _table(t[keep], p[keep])[2])


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_against_skimage_for_any_chunking(seed):
    t, p = _blocky(seed, 12), _blocky(seed + 50, 9, cell=4)
    are, prec, rec = skm.adapted_rand_error(t, p, ignore_labels=(0,))
    split, merge = skm.variation_of_information(t, p, ignore_labels=(0,))
    results = [evaluate_instances(_chunked(p, c), _chunked(t, c), thin=False) for c in CHUNKINGS]
    r = results[0]
    assert r["adapted_rand_error"] == pytest.approx(are, rel=1e-12, abs=1e-15)
    assert r["are_precision"] == pytest.approx(prec, rel=1e-12)
    assert r["are_recall"] == pytest.approx(rec, rel=1e-12)
    assert r["vi_split"] == pytest.approx(split, rel=1e-12)
    assert r["vi_merge"] == pytest.approx(merge, rel=1e-12)
    for other in results[1:]:  # the same table, so exactly the same numbers
        assert {k: other[k] for k in r if k not in ("pred", "truth")} == \
            {k: r[k] for k in r if k not in ("pred", "truth")}


def test_isbi_formulas_equal_the_fiji_port_on_its_thinning():
    for seed in range(6):
        t = _blocky(seed, 7, cell=6) > 0
        p = _blocky(seed + 9, 5, cell=3) > 0
        ref = fiji_isbi.isbi_scores(t, p)
        table = _table(ref["truth"], ref["thinned"])
        for key, value in {**v_rand(*table), **v_info(*table)}.items():
            assert value == pytest.approx(ref[key], rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("section,threshold", [("20", 130), ("03", 100), ("03", 130)])
def test_isbi_scores_against_the_fiji_port_on_real_sections(section, threshold):
    """A real membrane map (ISBI section, 128 x 160) and a crude proposal (the smoothed image
    thresholded): V_rand and V_info with the chunked thinning lie within 1e-3 of the Fiji port
    (measured: at most 8e-4, whole image or 32- and 40 x 64-px chunks)."""
    gt = np.asarray(Image.open(f"{DATA}/label/{section}.png"))[:128, :160]
    image = np.asarray(Image.open(f"{DATA}/image/{section}.png"))[:128, :160]
    proposal = ndimage.gaussian_filter(image.astype(float), 1.5) > threshold
    ref = fiji_isbi.isbi_scores(gt == 255, proposal)
    instances = fiji_isbi.components4(proposal)
    for chunks in (None, 32, (40, 64)):
        r = evaluate_instances(_chunked(instances, chunks), gt, truth_class=255, halo=32)
        assert abs(r["v_rand"] - ref["v_rand"]) < 1e-3
        assert abs(r["v_info"] - ref["v_info"]) < 1e-3


def test_thinning_leaves_one_pixel_lines():
    ids = np.zeros((20, 30), int)
    ids[:, :12], ids[:, 18:] = 1, 2  # a 6-px wide boundary
    thinned = thin_boundaries(da.from_array(ids, chunks=(7, 9)), halo=8).compute()
    assert (thinned[:, :12] == 1).all() and (thinned[:, 18:] == 2).all()
    assert ((thinned == 0).sum(axis=1) == 1).all()  # one line pixel per row


def test_perfect_segmentation():
    yy, xx = np.indices(SHAPE)
    cells = (yy % 7 > 0) & (xx % 6 > 1)  # 7 x 6 px cells, 1- and 2-px membranes
    gt = np.where(cells, 255, 0).astype(np.uint8)
    objects = ndimage.label(cells)[0]
    assert objects.max() > 50
    r = evaluate_instances(_chunked(objects * 3, (16, 16)), gt, truth_class=255)
    assert r["v_rand"] == 1.0 and r["v_info"] == 1.0
    assert r["adapted_rand_error"] == 0.0 and r["vi"] == 0.0
    assert r["object_f1"] == 1.0 and r["matched"] == r["objects_true"] == objects.max()


def test_merge_and_split_directions():
    t = np.zeros((10, 32), int)
    t[:, :10], t[:, 11:21], t[:, 22:] = 1, 2, 3  # three cells, 1-px membranes
    merged = np.where(t == 3, 8, np.where(t > 0, 7, 0))  # cells 1 and 2 as one object
    r = evaluate_instances(merged, t, thin=False)
    # H(truth | pred) = 1 bit on the 2/3 of the pixels predicted 7
    assert r["vi_split"] == 0.0 and r["vi_merge"] == pytest.approx(2 / 3)
    assert r["v_rand_split"] == 1.0 and r["v_rand_merge"] < 1.0
    assert r["v_info_split"] == 1.0 and r["v_info_merge"] < 1.0
    assert r["are_precision"] == 1.0 and r["are_recall"] < 1.0  # scikit-image's names
    split = t.copy()
    split[:5] *= 10  # each cell cut in two halves
    r = evaluate_instances(split, t, thin=False)
    assert r["vi_merge"] == 0.0 and r["vi_split"] == pytest.approx(1.0)
    assert r["v_rand_merge"] == 1.0 and r["v_rand_split"] < 1.0
    assert r["v_info_merge"] == 1.0 and r["v_info_split"] < 1.0
    assert r["are_recall"] == 1.0 and r["are_precision"] < 1.0
    nats = vi_split_merge(*_table(t, split), base=np.e)
    assert nats["vi_split"] == pytest.approx(np.log(2)) and nats["vi_merge"] == 0.0
    one = evaluate_instances(np.where(t > 0, 7, 0), t, thin=False)  # Fiji: H(pred) = 0 -> 0
    assert one["v_info"] == 0.0 and one["v_info_merge"] == 1.0 and one["v_info_split"] == 0.0


def test_object_scores_by_hand():
    t = np.zeros((10, 10), int)
    t[0:4, 0:4] = 1  # 16 px
    t[0:4, 6:10] = 2  # 16 px
    t[6:10, 0:4] = 3  # 16 px
    p = np.zeros((10, 10), int)
    p[0:4, 0:3] = 5  # 12 of object 1: IoU 12/16 -> match
    p[0:4, 8:10] = 6  # 8 of object 2: IoU 8/16 = 0.5, not > 0.5 -> no match
    p[6:10, 0:4] = 7  # object 3 exactly -> match
    p[6:10, 6:10] = 8  # on the background -> false positive
    r = evaluate_instances(da.from_array(p, chunks=(3, 4)), t, thin=False)
    assert (r["objects_true"], r["objects_pred"], r["matched"]) == (3, 4, 2)
    assert r["object_precision"] == 0.5 and r["object_recall"] == pytest.approx(2 / 3)
    assert r["object_f1"] == pytest.approx(4 / 7)


def test_truth_components_out_of_core_equal_scipy():
    gt = np.where(_blocky(13, 3, cell=3) > 0, 255, 0).astype(np.uint8)
    p = _blocky(14, 8, cell=4)
    whole = evaluate_instances(p, ndimage.label(gt == 255)[0], thin=False)
    chunked = evaluate_instances(p, da.from_array(gt, chunks=(8, 11)), truth_class=255,
                                 thin=False)
    for key in ("adapted_rand_error", "vi_split", "vi_merge", "object_f1", "objects_true"):
        assert chunked[key] == whole[key]


def test_ignore_and_mask():
    t, p = _blocky(15, 6), _blocky(16, 6)
    t[:5] = 99
    r = evaluate_instances(p, t, ignore=99, thin=False)
    keep = t != 99
    assert r["adapted_rand_error"] == pytest.approx(
        skm.adapted_rand_error(t[keep], p[keep], ignore_labels=(0,))[0], rel=1e-12)
    m = evaluate_instances(p, t, mask=keep, thin=False)
    assert m["adapted_rand_error"] == r["adapted_rand_error"] and m["pixels"] == keep.sum()


def test_ignore_with_truth_class():
    gt = np.where(_blocky(20, 3, cell=4) > 0, 255, 0).astype(np.uint8)
    gt[:6] = 7  # unlabelled
    p = _blocky(21, 6)
    r = evaluate_instances(p, da.from_array(gt, chunks=(9, 10)), truth_class=255, ignore=7)
    objects = ndimage.label(gt == 255)[0]
    keep = gt != 7
    ref = evaluate_instances(p, objects, mask=keep)
    for key in ("v_rand", "v_info", "adapted_rand_error", "vi", "object_f1", "pixels"):
        assert r[key] == ref[key], key
    assert r["pixels"] == keep.sum()


@pytest.mark.parametrize("kwargs,error,words", [
    ({"truth_class": "cell"}, InvalidTypeError, "`truth_class`"),
    ({"halo": -1}, InvalidValueError, "`halo`"),
    ({"iou_threshold": 0.3}, InvalidValueError, "`iou_threshold`"),
    ({"thin": "yes"}, InvalidTypeError, "`thin`"),
    ({"connectivity": 4, "truth_class": 1}, InvalidValueError, "`connectivity`"),
])
def test_bad_arguments(kwargs, error, words):
    t = _blocky(17, 3)
    with pytest.raises(error, match=words):
        evaluate_instances(t, t, **kwargs)


def test_bad_inputs():
    t = _blocky(18, 3)
    with pytest.raises(InvalidValueError, match="same shape"):
        evaluate_instances(t, t[:-1])
    with pytest.raises(InvalidValueError, match=r"`pred` must hold object ids"):
        evaluate_instances(t - 1, t, thin=False)
    with pytest.warns(RuntimeWarning, match="no object pixel"):
        r = evaluate_instances(t, np.zeros_like(t), thin=False)
    assert np.isnan(r["v_rand"]) and np.isnan(r["vi"])


def test_cli_on_a_predict_and_label_output(tmp_path, capsys):
    image = (ndimage.gaussian_filter(np.random.default_rng(19).random((60, 70)), 3) * 2550
             ).clip(0, 255).astype(np.uint8)
    store = str(tmp_path / "seg.zarr")
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), store, outputs="labels", tile=32,
                             overlap=8, chunks=32)
    chunkseg.label(store, cls=1)
    gt = np.where(image > 128, 255, 0).astype(np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt.png")
    out = tmp_path / "scores.json"
    assert main(["evaluate", store, str(tmp_path / "gt.png"), "--instances", "--truth-class",
                 "255", "--json", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "V_rand" in text and "V_info" in text and "adapted Rand error" in text
    d = json.loads(out.read_text())
    instances = zarr.open_group(store, mode="r")["instances"][...]
    ref = evaluate_instances(instances, gt, truth_class=255)
    for key in ("v_rand", "v_info", "adapted_rand_error", "vi_split", "vi_merge", "object_f1"):
        assert d[key] == pytest.approx(ref[key], rel=1e-12, nan_ok=True)
        assert f"{d[key]:8.4f}" in text
    assert main(["evaluate", store, str(tmp_path / "gt.png"), "--truth-class", "255",
                 "--no-progress"]) == 2
    assert "--instances" in capsys.readouterr().err
