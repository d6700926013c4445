"""Segmentation metrics on integer label maps (numpy only).

All functions take two integer arrays of equal shape, ``labels_true`` (reference) and
``labels_pred`` (prediction), holding class indices, and pool every pixel of the arrays (any
number of dimensions; pass a stack to pool over sections). The project's class convention for
the ISBI 2012 model is 0 = cell interior, 1 = membrane.

Every score is computed from a confusion matrix by one formula each (the ``*_from_confusion``
functions): :func:`iou`, :func:`dice` and :func:`pixel_error` build the matrix in memory, and
:func:`chunkseg.evaluate` accumulates it chunk by chunk over images of any size.

A class that occurs in neither the reference nor the prediction (``TP + FP + FN = 0``) has an
undefined IoU and Dice (0/0): they are NaN, and the means leave the class out, as
torchmetrics' ``MulticlassJaccardIndex(average="macro")`` does (it gives such a class weight 0)
and as scikit-learn's ``jaccard_score(average="macro")`` does with its default ``labels`` (the
classes present). A class only predicted, or only in the reference, scores 0 and counts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._check import is_int
from ..errors import InvalidValueError

__all__ = ["confusion_matrix", "dice", "iou", "pixel_error", "iou_from_confusion",
           "dice_from_confusion", "pixel_error_from_confusion", "scores_from_confusion"]


def _as_label_array(name: str, labels: ArrayLike) -> NDArray[np.integer]:
    arr = np.asarray(labels)
    if arr.dtype == np.bool_:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InvalidValueError(f"`{name}` must hold integer (or boolean) class labels. Got dtype {arr.dtype}; "
            "take the argmax of probabilities or cast with `.astype(int)`.")
    return arr


def _check_pair(
    labels_true: ArrayLike, labels_pred: ArrayLike
) -> tuple[NDArray[np.integer], NDArray[np.integer]]:
    true = _as_label_array("labels_true", labels_true)
    pred = _as_label_array("labels_pred", labels_pred)
    if true.shape != pred.shape:
        raise InvalidValueError(
            "`labels_true` and `labels_pred` must have the same shape. "
            f"Got labels_true {true.shape} and labels_pred {pred.shape}."
        )
    return true, pred


def _check_range(name: str, labels: NDArray[np.integer], classes: int) -> None:
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise InvalidValueError(
            f"`{name}` must hold labels in [0, classes) = [0, {classes}). Got min {lo}, "
            f"max {hi}; pass a larger `classes` or remap the labels."
        )


def _check_classes(classes: int) -> None:
    if not is_int(classes) or classes < 1:
        raise InvalidValueError(f"`classes` must be a positive int. Got {classes!r}.")


def confusion_matrix(
    labels_true: ArrayLike, labels_pred: ArrayLike, classes: int
) -> NDArray[np.int64]:
    """Count pixels per (true class, predicted class) pair.

    Parameters
    ----------
    labels_true : array_like of int
        Reference class labels, any shape, values in ``[0, classes)``. Booleans count as 0/1.
    labels_pred : array_like of int
        Predicted class labels, same shape as ``labels_true``, values in ``[0, classes)``.
    classes : int
        Number of classes.

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(classes, classes)``; entry ``[i, j]`` is the number of pixels
        whose true class is ``i`` and predicted class is ``j`` (rows: truth, columns: prediction,
        as in scikit-learn).

    Raises
    ------
    ValueError
        If ``classes`` is not a positive int, the inputs are not integer arrays, their shapes
        differ, or either holds a label outside ``[0, classes)`` (the message names the
        parameter).
    """
    _check_classes(classes)
    true, pred = _check_pair(labels_true, labels_pred)
    _check_range("labels_true", true, classes)
    _check_range("labels_pred", pred, classes)
    flat = true.ravel().astype(np.int64) * classes + pred.ravel().astype(np.int64)
    counts = np.bincount(flat, minlength=classes * classes)
    return counts.reshape(classes, classes).astype(np.int64)


def _check_confusion(cm: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(cm)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise InvalidValueError(
            f"`cm` must be a square (classes, classes) confusion matrix. Got shape {arr.shape}; "
            "build one with `confusion_matrix(labels_true, labels_pred, classes)`.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InvalidValueError(f"`cm` must hold pixel counts (integers). Got dtype {arr.dtype}.")
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise InvalidValueError("`cm` must hold finite, non-negative pixel counts. Got "
                                f"min {out.min() if out.size else 0}; pass counts, not rates.")
    return out


def _tp_fp_fn(
    cm: ArrayLike,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    counts = _check_confusion(cm)
    tp = np.diag(counts)
    return tp, counts.sum(axis=0) - tp, counts.sum(axis=1) - tp


def _ratio(num: NDArray[np.float64], denom: NDArray[np.float64]) -> NDArray[np.float64]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, num / np.where(denom > 0, denom, 1), np.nan)


def iou_from_confusion(cm: ArrayLike) -> NDArray[np.float64]:
    """Per-class intersection over union (Jaccard index) ``TP / (TP + FP + FN)`` of a
    confusion matrix.

    The definition of scikit-learn's ``jaccard_score(average=None)`` and torchmetrics'
    ``MulticlassJaccardIndex(average="none")``.

    Parameters
    ----------
    cm : array_like of int, shape (classes, classes)
        Pixel counts, rows: reference class, columns: predicted class (as
        :func:`confusion_matrix` returns).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(classes,)``, values in [0, 1]; NaN for a class absent from both the
        reference and the prediction (``TP + FP + FN = 0``).

    Raises
    ------
    ValueError
        If ``cm`` is not square, or holds negative or non-finite counts.
    """
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(tp, tp + fp + fn)


def dice_from_confusion(cm: ArrayLike) -> NDArray[np.float64]:
    """Per-class Dice coefficient (pixel F1 score) ``2 TP / (2 TP + FP + FN)`` of a confusion
    matrix.

    The definition of scikit-learn's ``f1_score(average=None)`` and torchmetrics'
    ``MulticlassF1Score(average="none")`` on the pixels.

    Parameters
    ----------
    cm : array_like of int, shape (classes, classes)
        As :func:`iou_from_confusion`.

    Returns
    -------
    numpy.ndarray
        float64, shape ``(classes,)``, values in [0, 1]; NaN for a class absent from both.

    Raises
    ------
    ValueError
        As :func:`iou_from_confusion`.
    """
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def pixel_error_from_confusion(cm: ArrayLike) -> float:
    """Misclassified fraction ``(N - trace(cm)) / N`` of a confusion matrix of ``N`` pixels
    (``1 -`` scikit-learn's ``accuracy_score``).

    Parameters
    ----------
    cm : array_like of int, shape (classes, classes)
        As :func:`iou_from_confusion`.

    Returns
    -------
    float
        In [0, 1]; NaN when ``cm`` counts no pixel.

    Raises
    ------
    ValueError
        As :func:`iou_from_confusion`.
    """
    counts = _check_confusion(cm)
    total = counts.sum()
    return float((total - np.trace(counts)) / total) if total > 0 else float("nan")


def _nanmean(values: NDArray[np.float64]) -> float:
    good = values[~np.isnan(values)]
    return float(good.mean()) if good.size else float("nan")


def scores_from_confusion(cm: ArrayLike) -> dict[str, Any]:
    """Every score of a confusion matrix: per-class IoU and Dice, their means, pixel accuracy
    and error, pixel counts.

    Parameters
    ----------
    cm : array_like of int, shape (classes, classes)
        Pixel counts, rows: reference class, columns: predicted class.

    Returns
    -------
    dict
        ``iou``, ``dice`` : float64 arrays ``(classes,)``, see :func:`iou_from_confusion` and
        :func:`dice_from_confusion` (NaN for a class absent from both).
        ``mean_iou``, ``mean_dice`` : float, the mean over the classes whose score is not NaN
        (torchmetrics' ``average="macro"``); NaN if there is none.
        ``accuracy``, ``pixel_error`` : float, ``trace(cm) / N`` and ``1 - accuracy``
        (NaN when ``N = 0``).
        ``pixels`` : int, ``N = cm.sum()``. ``pixels_true``, ``pixels_pred`` : int64 arrays
        ``(classes,)``, the reference's and the prediction's pixels of each class (row and
        column sums).

    Raises
    ------
    ValueError
        As :func:`iou_from_confusion`.

    Examples
    --------
    >>> s = scores_from_confusion([[1, 1], [0, 2]])
    >>> s["iou"].tolist(), s["accuracy"]
    ([0.5, 0.6666666666666666], 0.75)
    """
    counts = _check_confusion(cm)
    ious, dices = iou_from_confusion(counts), dice_from_confusion(counts)
    error = pixel_error_from_confusion(counts)
    raw = np.asarray(cm)
    exact = raw if np.issubdtype(raw.dtype, np.integer) else np.rint(counts)
    return {
        "iou": ious,
        "dice": dices,
        "mean_iou": _nanmean(ious),
        "mean_dice": _nanmean(dices),
        "accuracy": 1.0 - error,
        "pixel_error": error,
        "pixels": int(exact.sum()),
        "pixels_true": exact.sum(axis=1).astype(np.int64),
        "pixels_pred": exact.sum(axis=0).astype(np.int64),
    }


def iou(labels_true: ArrayLike, labels_pred: ArrayLike, classes: int) -> NDArray[np.float64]:
    """Per-class intersection over union (Jaccard index), ``TP / (TP + FP + FN)``.

    Parameters
    ----------
    labels_true, labels_pred, classes
        As in :func:`confusion_matrix`.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(classes,)`` with values in [0, 1]; ``NaN`` for a class that
        occurs in neither array (the ratio is 0/0). Computed by :func:`iou_from_confusion`.

    Raises
    ------
    ValueError
        As :func:`confusion_matrix`.
    """
    return iou_from_confusion(confusion_matrix(labels_true, labels_pred, classes))


def dice(labels_true: ArrayLike, labels_pred: ArrayLike, classes: int) -> NDArray[np.float64]:
    """Per-class Dice coefficient (pixel F1 score), ``2 TP / (2 TP + FP + FN)``.

    Parameters
    ----------
    labels_true, labels_pred, classes
        As in :func:`confusion_matrix`.

    Returns
    -------
    numpy.ndarray
        float64 array of shape ``(classes,)`` with values in [0, 1]; ``NaN`` for a class that
        occurs in neither array (the ratio is 0/0). Computed by :func:`dice_from_confusion`.

    Raises
    ------
    ValueError
        As :func:`confusion_matrix`.
    """
    return dice_from_confusion(confusion_matrix(labels_true, labels_pred, classes))


def pixel_error(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Fraction of pixels whose predicted label differs from the reference.

    This is the plain misclassification rate ``mean(labels_true != labels_pred)`` at the given
    labelling (:func:`pixel_error_from_confusion` of the pair's confusion matrix over the
    labels that occur). It is *not* the "pixel error" of the ISBI 2012 challenge leaderboard
    (and of the U-Net paper's Table 1), which is ``1 - max F-score`` of pixel classification
    over thresholds of a membrane-probability map; the two numbers differ and must not be
    compared directly.

    Parameters
    ----------
    labels_true : array_like of int
        Reference class labels, any shape (booleans count as 0/1).
    labels_pred : array_like of int
        Predicted class labels, same shape as ``labels_true``.

    Returns
    -------
    float
        Misclassified fraction in [0, 1].

    Raises
    ------
    ValueError
        If the inputs are not integer arrays, their shapes differ, or they are empty.
    """
    true, pred = _check_pair(labels_true, labels_pred)
    if true.size == 0:
        raise InvalidValueError("`labels_true` and `labels_pred` must not be empty (the pixel error of no "
                                f"pixels is undefined). Got shape {true.shape}.")
    # any integer labels (negative, sparse): number them by the values that occur
    values, codes = np.unique(np.concatenate([true.ravel(), pred.ravel()]), return_inverse=True)
    k = values.size
    cm = np.bincount(codes[: true.size] * k + codes[true.size :], minlength=k * k)
    return pixel_error_from_confusion(cm.reshape(k, k))
