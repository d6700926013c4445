"""chunkseg.evaluate / ``chunkseg evaluate``: the chunked confusion matrix against numpy (and
scikit-learn where installed), ignore / mask / label_map, scores against independent formulas,
real predict outputs (plain and OME layout), one read per chunk, and the CLI."""

from __future__ import annotations

import json

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from model_factories import numpy_conv3x3
from reference import CountingStore

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import (
    IncompleteOutputWarning,
    InvalidTypeError,
    InvalidValueError,
    NotFoundError,
)
from chunkseg.evaluation.metrics import dice, iou, iou_from_confusion, scores_from_confusion
from chunkseg.evaluation.semantic import (
    confusion_matrix_dask,
    evaluate,
    format_report,
    parse_label_map,
    to_json,
)

SHAPE = (50, 70)


def _labels(seed, classes=3, shape=SHAPE):
    return np.random.default_rng(seed).integers(0, classes, shape).astype(np.uint8)


def _ref_cm(t, p, k, keep=None):
    """The plain reference: np.bincount over the flattened (kept) pixels."""
    t, p = t.ravel().astype(np.int64), p.ravel().astype(np.int64)
    if keep is not None:
        t, p = t[keep.ravel()], p[keep.ravel()]
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def _zarr(path_or_store, data, chunks):
    arr = zarr.create_array(path_or_store, shape=data.shape, chunks=chunks, dtype=data.dtype,
                            fill_value=0, dimension_names=("y", "x"))
    arr[...] = data
    return arr


# ---------------------------------------------------------------------------------------------
# the chunked confusion matrix against numpy
# ---------------------------------------------------------------------------------------------

# chunks that do not divide the image, a single chunk, thin strips, and different chunkings
# for the two inputs
CHUNKINGS = [((17, 23), (17, 23)), (SHAPE, SHAPE), ((7, 70), (50, 9)), ((13, 29), (20, 20))]


@pytest.mark.parametrize(("pred_chunks", "truth_chunks"), CHUNKINGS)
@pytest.mark.parametrize("classes", [3, None])
def test_confusion_matrix_equals_bincount(pred_chunks, truth_chunks, classes):
    t, p = _labels(1), _labels(2)
    lazy = confusion_matrix_dask(da.from_array(p, chunks=pred_chunks),
                                 da.from_array(t, chunks=truth_chunks), classes=classes)
    cm = lazy.compute()
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, _ref_cm(t, p, 3))
    assert cm.sum() == t.size


def test_confusion_matrix_equals_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    t, p = _labels(3, classes=4), _labels(4, classes=4)
    r = evaluate(da.from_array(p, chunks=(11, 13)), da.from_array(t, chunks=(11, 13)))
    ref = metrics.confusion_matrix(t.ravel(), p.ravel(), labels=range(4))
    np.testing.assert_array_equal(r["confusion_matrix"], ref)
    np.testing.assert_allclose(r["iou"], metrics.jaccard_score(t.ravel(), p.ravel(), average=None))
    np.testing.assert_allclose(r["dice"], metrics.f1_score(t.ravel(), p.ravel(), average=None))
    assert r["accuracy"] == pytest.approx(metrics.accuracy_score(t.ravel(), p.ravel()))


@pytest.mark.parametrize("chunks", [(17, 23), SHAPE])
def test_ignore(chunks):
    t, p = _labels(5), _labels(6)
    t[np.random.default_rng(7).random(SHAPE) < 0.3] = 255
    t[:3, :4] = 254
    r = evaluate(da.from_array(p, chunks=chunks), da.from_array(t, chunks=chunks),
                 ignore=[254, 255])
    keep = t < 254
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(t, p, 3, keep))
    assert r["pixels"] == keep.sum() and r["excluded"] == (~keep).sum()


@pytest.mark.parametrize("mask_chunks", [(17, 23), (9, 70)])
def test_mask(mask_chunks):
    t, p = _labels(8), _labels(9)
    keep = np.random.default_rng(10).random(SHAPE) < 0.6
    r = evaluate(da.from_array(p, chunks=(17, 23)), t,
                 mask=da.from_array(keep, chunks=mask_chunks))
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(t, p, 3, keep))
    # a 0/1 integer mask is the same; mask and ignore combine
    t[:5] = 255
    r2 = evaluate(p, t, mask=keep.astype(np.uint8), ignore=255)
    np.testing.assert_array_equal(r2["confusion_matrix"], _ref_cm(t, p, 3, keep & (t != 255)))
    r3 = evaluate(p, t, mask=keep * 0.5, ignore=255)  # a float mask: nonzero counts
    np.testing.assert_array_equal(r3["confusion_matrix"], r2["confusion_matrix"])


def test_label_map_isbi():
    rng = np.random.default_rng(11)
    stored = np.where(rng.random(SHAPE) < 0.7, 255, 0).astype(np.uint8)  # white cells, black membrane
    stored[0, :10] = 128  # unlabelled, ignored
    p = (rng.random(SHAPE) < 0.35).astype(np.uint8)
    r = evaluate(da.from_array(p, chunks=(16, 32)), da.from_array(stored, chunks=(25, 25)),
                 label_map={255: 0, 0: 1}, ignore=128)
    classes = np.where(stored == 255, 0, 1)
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(classes, p, 2, stored != 128))
    # a counted value missing from the map is refused, naming the value
    with pytest.raises(InvalidValueError, match=r"`label_map` must map every .*\[128\]"):
        evaluate(p, stored, label_map={255: 0, 0: 1})


def test_label_map_class_above_seen_labels_sets_classes():
    t = np.zeros((4, 4), np.uint8)
    r = evaluate(np.zeros((4, 4), np.uint8), t, label_map={0: 0, 9: 2})
    assert r["classes"] == ["0", "1", "2"] and np.isnan(r["iou"][1:]).all()


# ---------------------------------------------------------------------------------------------
# the scores
# ---------------------------------------------------------------------------------------------


def test_scores_equal_independent_formulas():
    t, p = _labels(12, classes=4), _labels(13, classes=4)
    r = evaluate(da.from_array(p, chunks=(20, 30)), da.from_array(t, chunks=(20, 30)))
    for c in range(4):
        a, b = t == c, p == c
        assert r["iou"][c] == pytest.approx((a & b).sum() / (a | b).sum(), rel=1e-12)
        assert r["dice"][c] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), rel=1e-12)
        assert r["pixels_true"][c] == a.sum() and r["pixels_pred"][c] == b.sum()
    assert r["mean_iou"] == pytest.approx(np.mean(r["iou"]))
    assert r["accuracy"] == pytest.approx((t == p).mean(), abs=1e-15)
    assert r["pixel_error"] == pytest.approx((t != p).mean(), abs=1e-15)
    # the in-memory metrics give the same numbers, by the same formula
    np.testing.assert_array_equal(iou(t, p, 4), r["iou"])
    np.testing.assert_array_equal(dice(t, p, 4), r["dice"])
    np.testing.assert_array_equal(iou_from_confusion(r["confusion_matrix"]), r["iou"])


def test_absent_class_is_nan_and_left_out_of_the_mean():
    t = np.array([[0, 0, 1], [1, 1, 0]])
    p = np.array([[0, 1, 1], [1, 3, 0]])  # class 2 in neither; class 3 predicted only
    r = evaluate(p, t, classes=["a", "b", "c", "d"])
    assert r["classes"] == ["a", "b", "c", "d"]
    assert np.isnan(r["iou"][2]) and np.isnan(r["dice"][2])
    assert r["iou"][3] == 0.0 and r["dice"][3] == 0.0  # present in one image: 0, counted
    np.testing.assert_allclose(r["iou"][:2], [2 / 3, 2 / 4])
    assert r["mean_iou"] == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    assert r["mean_dice"] == pytest.approx((4 / 5 + 4 / 6 + 0) / 3)
    report = format_report(r)
    assert "n/a" in report and "not in the means: c" in report
    assert to_json(r)["iou"][2] is None  # NaN is JSON null


def test_scores_from_confusion_edge_cases():
    s = scores_from_confusion(np.zeros((2, 2), np.int64))
    assert np.isnan(s["iou"]).all() and np.isnan(s["mean_iou"]) and np.isnan(s["accuracy"])
    assert s["pixels"] == 0
    with pytest.raises(ValueError, match="`cm` must be a square"):
        scores_from_confusion(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="non-negative"):
        scores_from_confusion([[1, -1], [0, 1]])
    with pytest.warns(RuntimeWarning, match="no pixel was counted"):
        r = evaluate(np.zeros((3, 3), np.uint8), np.zeros((3, 3), np.uint8),
                     mask=np.zeros((3, 3), bool), classes=2)
    assert r["pixels"] == 0 and r["excluded"] == 9


# ---------------------------------------------------------------------------------------------
# real chunkseg outputs
# ---------------------------------------------------------------------------------------------

KW = dict(tile=48, overlap=16, chunks=64)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    image = (np.random.default_rng(14).random((100, 90)) * 255).astype(np.uint8)
    plain = chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(root / "seg.zarr"),
                                     outputs="labels", **KW)
    gt = (image > 100).astype(np.uint8)
    _zarr(str(root / "gt.zarr"), gt, (40, 40))
    return root, plain.labels.values, gt


def test_predict_output_against_gt_zarr(outputs):
    root, labels, gt = outputs
    r = evaluate(str(root / "seg.zarr"), str(root / "gt.zarr"))
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(gt, labels, 2))
    stored = zarr.open_group(str(root / "seg.zarr"), mode="r")["class"][...]
    assert r["classes"] == [str(c) for c in stored]  # the output's class coordinate
    assert r["pred"].endswith("seg.zarr (labels)") and r["shape"] == (100, 90)
    # the Dataset open_output returns, and an open group, give the same
    same = evaluate(chunkseg.open_output(str(root / "seg.zarr")), str(root / "gt.zarr"))
    np.testing.assert_array_equal(same["confusion_matrix"], r["confusion_matrix"])
    group = zarr.open_group(str(root / "seg.zarr"), mode="r")
    np.testing.assert_array_equal(evaluate(group, gt)["confusion_matrix"], r["confusion_matrix"])


def test_ome_output(outputs, tmp_path):
    pytest.importorskip("ome_zarr")
    root, labels, gt = outputs
    image = (np.random.default_rng(14).random((100, 90)) * 255).astype(np.uint8)
    chunkseg.predict_to_zarr(image, numpy_conv3x3(), str(tmp_path / "ome.zarr"), ome=True,
                             outputs="probabilities,labels", classes=["cell", "membrane"], **KW)
    r = evaluate(str(tmp_path / "ome.zarr"), str(root / "gt.zarr"))
    assert r["pred"].endswith("(labels/classes/0)")
    assert r["classes"] == ["cell", "membrane"]
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(gt, labels, 2))


def test_incomplete_output_warns_and_missing_variable_is_named(outputs, tmp_path):
    import shutil

    root, _, gt = outputs
    copy = tmp_path / "copy.zarr"
    shutil.copytree(root / "seg.zarr", copy)
    zarr.open_group(str(copy), mode="a").attrs["complete"] = False
    with pytest.warns(IncompleteOutputWarning, match="incomplete"):
        evaluate(str(copy), gt)
    with pytest.raises(NotFoundError, match=r"`pred_variable` .*'probabilities'"):
        evaluate(str(copy), gt, pred_variable="probabilities")


# ---------------------------------------------------------------------------------------------
# out of core: every chunk read once, no task holds more than one chunk
# ---------------------------------------------------------------------------------------------


class ReadCountingStore(CountingStore):
    """:class:`reference.CountingStore`, also counting reads per key."""

    def __init__(self, store):
        super().__init__(store)
        self.reads: dict[str, int] = {}

    async def get(self, key, prototype, byte_range=None):
        with self.lock:
            self.reads[key] = self.reads.get(key, 0) + 1
        return await super().get(key, prototype, byte_range)


def test_each_chunk_read_once_with_different_chunkings():
    t, p = _labels(15, shape=(100, 90)), _labels(16, shape=(100, 90))
    keep = np.random.default_rng(17).random((100, 90)) < 0.5
    stores = {name: ReadCountingStore(zarr.storage.MemoryStore()) for name in ("p", "t", "m")}
    chunks = {"p": (30, 30), "t": (25, 40), "m": (100, 45)}
    for name, data in (("p", p), ("t", t), ("m", keep)):
        _zarr(stores[name], data, chunks[name])
        stores[name].reads.clear()
    opened = {n: zarr.open_array(s, mode="r") for n, s in stores.items()}
    r = evaluate(opened["p"], opened["t"], mask=opened["m"])
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(t, p, 3, keep))
    for name, store in stores.items():
        reads = {k: v for k, v in store.reads.items() if k.startswith("c/")}
        ny = -(-100 // chunks[name][0])
        nx = -(-90 // chunks[name][1])
        assert len(reads) == ny * nx, name
        assert set(reads.values()) == {1}, (name, reads)


def test_no_task_result_larger_than_a_chunk():
    from dask.callbacks import Callback

    shape, chunk = (120, 100), (30, 25)
    p = da.from_array(_labels(18, shape=shape), chunks=chunk)
    t = da.from_array(_labels(19, shape=shape), chunks=chunk)
    sizes = []

    class Sizes(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            sizes.append(getattr(result, "nbytes", 0))

    with Sizes():
        evaluate(p, t, scheduler="threads")
    assert sizes and max(sizes) <= chunk[0] * chunk[1]  # one uint8 chunk; matrices are tiny
    # and the graph holds one kernel task per chunk pair
    lazy = confusion_matrix_dask(p, t, classes=3)
    keys = dict(lazy.__dask_graph__())
    assert sum(1 for k in keys if isinstance(k, tuple) and "confusion-block" in k[0]) == 4 * 4
    assert dask.compute(lazy)[0].sum() == 120 * 100


# ---------------------------------------------------------------------------------------------
# inputs and errors
# ---------------------------------------------------------------------------------------------


def test_files_and_paths(tmp_path):
    from PIL import Image

    t, p = _labels(20, classes=2), _labels(21, classes=2)
    Image.fromarray(t * 255).save(tmp_path / "gt.png")
    np.save(tmp_path / "pred.npy", p)
    r = evaluate(str(tmp_path / "pred.npy"), tmp_path / "gt.png", label_map={0: 0, 255: 1})
    np.testing.assert_array_equal(r["confusion_matrix"], _ref_cm(t, p, 2))


def test_bad_inputs_raise_clear_errors(tmp_path):
    t = _labels(22)
    with pytest.raises(InvalidValueError, match=r"same shape.*pred \(50, 70\), truth \(50, 69\)"):
        evaluate(t, t[:, :69])
    with pytest.raises(InvalidValueError, match=r"same shape.*mask \(5, 5\)"):
        evaluate(t, t, mask=np.ones((5, 5), bool))
    with pytest.raises(InvalidValueError, match="`pred` must hold integer"):
        evaluate(t.astype(np.float32), t)
    with pytest.raises(InvalidValueError, match="`truth` must be a single-channel"):
        evaluate(t, np.stack([t, t], axis=-1))
    with pytest.raises(InvalidValueError, match=r"`pred` must hold class labels in \[0, classes\)"):
        evaluate(t, np.minimum(t, 1), classes=2)
    with pytest.raises(InvalidValueError, match=r"`truth` .*\[0, 1024\).*`classes`"):
        evaluate(t, t.astype(np.uint16) * 1000)
    with pytest.raises(NotFoundError, match="`truth` must be an existing path"):
        evaluate(t, str(tmp_path / "missing.zarr"))
    with pytest.raises(InvalidTypeError, match="`classes`"):
        evaluate(t, t, classes=2.5)
    with pytest.raises(InvalidTypeError, match="`label_map` must be a mapping"):
        evaluate(t, t, label_map=[(0, 1)])
    with pytest.raises(InvalidValueError, match="`label_map` must map to classes"):
        evaluate(t, t, label_map={0: 5}, classes=3)
    with pytest.raises(InvalidTypeError, match="`ignore`"):
        evaluate(t, t, ignore="255")
    assert parse_label_map("255:0, 0:1") == {255: 0, 0: 1}
    for bad in ("255-0", "255:a", "1:0,1:1", ""):
        with pytest.raises(InvalidValueError, match="`label_map`"):
            parse_label_map(bad)


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------


def test_cli_table_and_json(outputs, tmp_path, capsys):
    root, labels, gt = outputs
    out = tmp_path / "scores.json"
    assert main(["evaluate", str(root / "seg.zarr"), str(root / "gt.zarr"), "--json", str(out),
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "IoU" in text and "Dice" in text and "GT pixels" in text
    assert "mean IoU" in text and "accuracy" in text and "pixel error" in text
    d = json.loads(out.read_text())
    np.testing.assert_array_equal(d["confusion_matrix"], _ref_cm(gt, labels, 2))
    assert d["pixels"] == gt.size and len(d["iou"]) == 2 and isinstance(d["mean_iou"], float)
    for row, name in enumerate(d["classes"]):
        line = next(x for x in text.splitlines() if x.startswith(name + " "))
        assert f"{d['iou'][row]:.4f}" in line and str(d["pixels_true"][row]) in line


def test_cli_options(tmp_path, capsys):
    stored = np.where(_labels(23, classes=2) == 1, 255, 0).astype(np.uint8)
    stored[0] = 7
    p = _labels(24, classes=2)
    _zarr(str(tmp_path / "gt.zarr"), stored, (20, 32))
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "mask.npy", np.ones(SHAPE, bool))
    assert main(["evaluate", str(tmp_path / "p.npy"), str(tmp_path / "gt.zarr"),
                 "--label-map", "255:0,0:1", "--ignore", "7", "--mask", str(tmp_path / "mask.npy"),
                 "--classes", "cell,membrane", "--json", str(tmp_path / "r.json"),
                 "--no-progress"]) == 0
    assert "cell" in capsys.readouterr().out
    d = json.loads((tmp_path / "r.json").read_text())
    assert d["classes"] == ["cell", "membrane"] and d["excluded"] == SHAPE[1]
    keep = stored != 7
    np.testing.assert_array_equal(d["confusion_matrix"],
                                  _ref_cm(np.where(stored == 255, 0, 1), p, 2, keep))


@pytest.mark.parametrize("case", ["shape", "label_map", "missing"])
def test_cli_bad_input_exit_2_one_line(tmp_path, capsys, case):
    np.save(tmp_path / "p.npy", _labels(25))
    np.save(tmp_path / "gt.npy", _labels(26, shape=(50, 60) if case == "shape" else SHAPE))
    gt = str(tmp_path / ("missing.zarr" if case == "missing" else "gt.npy"))
    extra = ["--label-map", "255=0"] if case == "label_map" else []
    assert main(["evaluate", str(tmp_path / "p.npy"), gt, *extra, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("chunkseg evaluate: error: `") and "\n" not in err
    assert {"shape": "same shape", "label_map": "`--label-map`",
            "missing": "does not exist"}[case] in err
