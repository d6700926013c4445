from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chunkseg.evaluation.metrics import confusion_matrix, dice, iou, pixel_error


def _ref_confusion(t: np.ndarray, p: np.ndarray, classes: int) -> np.ndarray:
    cm = np.zeros((classes, classes), dtype=np.int64)
    for a, b in zip(t.ravel().tolist(), p.ravel().tolist(), strict=True):
        cm[a, b] += 1
    return cm


def _ref_scores(t: np.ndarray, p: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    ious, dices = [], []
    for c in range(classes):
        tp = fp = fn = 0
        for a, b in zip(t.ravel().tolist(), p.ravel().tolist(), strict=True):
            tp += a == c and b == c
            fp += a != c and b == c
            fn += a == c and b != c
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else np.nan)
        dices.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(ious), np.array(dices)


@pytest.mark.parametrize(
    ("shape", "classes", "dtype"),
    [((7, 9), 2, np.uint8), ((3, 5, 4), 3, np.int64), ((50,), 5, np.int32), ((1, 1), 1, np.int16)],
)
def test_random_inputs_match_loop_reference(shape, classes, dtype) -> None:
    rng = np.random.default_rng(sum(shape) + classes)
    t = rng.integers(0, classes, size=shape).astype(dtype)
    p = rng.integers(0, classes, size=shape).astype(dtype)
    cm = confusion_matrix(t, p, classes)
    assert cm.dtype == np.int64 and cm.shape == (classes, classes)
    np.testing.assert_array_equal(cm, _ref_confusion(t, p, classes))
    ref_iou, ref_dice = _ref_scores(t, p, classes)
    got_iou, got_dice = iou(t, p, classes), dice(t, p, classes)
    assert got_iou.dtype == np.float64 and got_iou.shape == (classes,)
    assert got_dice.dtype == np.float64 and got_dice.shape == (classes,)
    np.testing.assert_allclose(got_iou, ref_iou, rtol=1e-12)
    np.testing.assert_allclose(got_dice, ref_dice, rtol=1e-12)
    ref_err = (
        sum(a != b for a, b in zip(t.ravel().tolist(), p.ravel().tolist(), strict=True)) / t.size
    )
    assert pixel_error(t, p) == pytest.approx(ref_err, abs=1e-15)


def test_known_small_case() -> None:
    t = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 1])
    np.testing.assert_array_equal(confusion_matrix(t, p, 2), [[1, 1], [0, 2]])
    np.testing.assert_allclose(iou(t, p, 2), [1 / 2, 2 / 3])
    np.testing.assert_allclose(dice(t, p, 2), [2 / 3, 4 / 5])
    assert pixel_error(t, p) == 0.25


def test_perfect_and_all_wrong() -> None:
    t = np.array([[0, 1], [1, 0]])
    np.testing.assert_array_equal(iou(t, t, 2), [1.0, 1.0])
    np.testing.assert_array_equal(dice(t, t, 2), [1.0, 1.0])
    assert pixel_error(t, t) == 0.0
    np.testing.assert_array_equal(iou(t, 1 - t, 2), [0.0, 0.0])
    assert pixel_error(t, 1 - t) == 1.0


def test_absent_class_is_nan_and_bool_accepted() -> None:
    t = np.zeros((3, 3), dtype=bool)
    scores = iou(t, t, 3)
    assert scores[0] == 1.0 and np.isnan(scores[1]) and np.isnan(scores[2])
    assert np.isnan(dice(t, t, 2)[1])


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"labels_true.*labels_pred.*same shape|same shape"):
        confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int), 2)
    with pytest.raises(ValueError, match="labels_pred"):
        pixel_error(np.zeros(4, int), np.zeros(5, int))


@pytest.mark.parametrize("fn", [confusion_matrix, iou, dice])
def test_out_of_range_labels_raise_naming_parameter(fn) -> None:
    good = np.zeros(4, dtype=int)
    with pytest.raises(ValueError, match=r"`labels_pred` .*\[0, 2\)"):
        fn(good, np.array([0, 1, 2, 0]), 2)
    with pytest.raises(ValueError, match=r"`labels_true` .*\[0, 2\)"):
        fn(np.array([0, -1, 0, 0]), good, 2)


def test_bad_dtype_classes_and_empty_raise() -> None:
    with pytest.raises(ValueError, match="`labels_true` must hold integer"):
        iou(np.zeros(3), np.zeros(3, int), 2)
    with pytest.raises(ValueError, match="`labels_pred` must hold integer"):
        pixel_error(np.zeros(3, int), np.zeros(3))
    with pytest.raises(ValueError, match="`classes` must be a positive int"):
        confusion_matrix(np.zeros(3, int), np.zeros(3, int), 0)
    with pytest.raises(ValueError, match="empty"):
        pixel_error(np.zeros(0, int), np.zeros(0, int))
    assert confusion_matrix(np.zeros(0, int), np.zeros(0, int), 2).sum() == 0


def test_metrics_module_does_not_import_torch() -> None:
    root = Path(__file__).resolve().parents[2]
    code = "import sys, chunkseg.evaluation.metrics\nassert 'torch' not in sys.modules, 'torch imported'\n"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
