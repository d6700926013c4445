"""Segmentation metrics on integer label maps (numpy only).

All functions take two integer arrays of equal shape, ``labels_true`` (reference) and
``labels_pred`` (prediction), holding class indices, and pool every pixel of the arrays (any
number of dimensions; pass a stack to pool over sections). The project's class convention for
the ISBI 2012 model is 0 = cell interior, 1 = membrane.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import InvalidValueError

__all__ = ["confusion_matrix", "dice", "iou", "pixel_error"]


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
    if isinstance(classes, bool) or not isinstance(classes, (int, np.integer)) or classes < 1:
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


def _tp_fp_fn(
    labels_true: ArrayLike, labels_pred: ArrayLike, classes: int
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    cm = confusion_matrix(labels_true, labels_pred, classes).astype(np.float64)
    tp = np.diag(cm)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


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
        occurs in neither array (the ratio is 0/0).

    Raises
    ------
    ValueError
        As :func:`confusion_matrix`.
    """
    tp, fp, fn = _tp_fp_fn(labels_true, labels_pred, classes)
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


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
        occurs in neither array (the ratio is 0/0).

    Raises
    ------
    ValueError
        As :func:`confusion_matrix`.
    """
    tp, fp, fn = _tp_fp_fn(labels_true, labels_pred, classes)
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / denom, np.nan)


def pixel_error(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Fraction of pixels whose predicted label differs from the reference.

    This is the plain misclassification rate ``mean(labels_true != labels_pred)`` at the given
    labelling. It is *not* the "pixel error" of the ISBI 2012 challenge leaderboard (and of the
    U-Net paper's Table 1), which is ``1 - max F-score`` of pixel classification over
    thresholds of a membrane-probability map; the two numbers differ and must not be compared
    directly.

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
    return float(np.count_nonzero(true != pred) / true.size)
