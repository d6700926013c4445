"""Out-of-core evaluation of a segmentation against ground truth: ``chunkseg evaluate``.

A confusion matrix is accumulated chunk by chunk: one Dask task per chunk reads its block of
the prediction, the ground truth (and the mask), counts the ``(true class, predicted class)``
pairs with :func:`numpy.bincount`, and the small per-chunk matrices are added in a tree. No task
holds more than one chunk of each input, and every chunk is read once; the image can be any
size. The scores (per-class IoU and Dice, their means, pixel accuracy and error) are then
computed from the matrix by :func:`chunkseg.evaluation.metrics.scores_from_confusion`, the same formulas
as the in-memory :mod:`chunkseg.evaluation.metrics`.

The inputs are opened by :mod:`chunkseg.evaluation._labels`, the matrix is built by
:mod:`chunkseg.evaluation.confusion` and the result is printed by
:mod:`chunkseg.evaluation.report`; the argument rules (``classes``, ``label_map`` and their
command-line text) are :mod:`chunkseg._check`'s.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._check import classes_arg, label_map_arg, parse_classes, parse_ignore, parse_label_map
from .._redact import secrets_of
from ..scheduling import compute
from ._labels import open_inputs
from .confusion import MAX_INFERRED_CLASSES, add_matrices, check_ignore, confusion_matrix_dask
from .metrics import scores_from_confusion
from .report import format_report, to_json

__all__ = ["evaluate", "confusion_matrix_dask", "parse_label_map", "parse_classes",
           "parse_ignore", "format_report", "to_json", "MAX_INFERRED_CLASSES"]


def evaluate(
    pred: Any,
    truth: Any,
    *,
    classes: int | Sequence[str] | None = None,
    ignore: int | Sequence[int] | None = None,
    mask: Any = None,
    label_map: Mapping[int, int] | None = None,
    pred_variable: str = "labels",
    truth_array: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compare a segmentation with ground truth, out of core: IoU, Dice, pixel accuracy.

    Parameters
    ----------
    pred : str, os.PathLike, zarr.Group, xarray.Dataset or anything :func:`chunkseg.open_image` opens
        The prediction: a :func:`chunkseg.predict_to_zarr` output (path, URL, open group or
        the Dataset :func:`chunkseg.open_output` returns; its ``labels``, also in the
        ``ome=True`` layout where they are the NGFF label image ``labels/classes/0``, read as
        class indices: that image stores class ``k`` as ``k + 1``), or a
        label image ``(Y, X)`` of class indices: Zarr array/group, NGFF image, TIFF, PNG,
        ``.npy`` (memory-mapped), numpy/dask array or xarray DataArray. Integer or bool.
    truth : same types as ``pred``
        The ground truth ``(Y, X)``, integer or bool: class indices, or stored values that
        ``label_map`` maps to class indices. A chunkseg output gives its ``labels``.
    classes : int or sequence of str, optional
        The number of classes K, or their names (K = their number). Default: the names of the
        prediction's ``class`` coordinate when it has one (a chunkseg output), else the largest
        label seen + 1 (at most :data:`MAX_INFERRED_CLASSES`; also at least the largest
        ``label_map`` class + 1).
    ignore : int or sequence of int, optional
        Ground-truth value(s) as stored, before ``label_map`` (e.g. 255 for "unlabelled"),
        whose pixels are excluded from every count.
    mask : str, os.PathLike or array-like of shape (Y, X), optional
        Only pixels where the mask is nonzero (True) count; any type ``truth`` takes.
    label_map : mapping of int to int, optional
        Stored ground-truth value -> class index, e.g. ``{255: 0, 0: 1}`` for the ISBI 2012
        labels (white cell interior 255 is class 0, black membrane 0 is class 1). Every counted
        ground-truth value must be a key.
    pred_variable : str, default "labels"
        The variable of a chunkseg output ``pred`` to evaluate (an instances array, say); for a
        Zarr group that is not a chunkseg output, the array of that name, where ``"labels"``
        (the default) falls back to the group's image as :func:`chunkseg.open_image` picks it.
    truth_array : str, optional
        The array of a Zarr group ``truth`` (:func:`chunkseg.open_image`'s ``array_name``);
        for a chunkseg output, its variable (default ``labels``).
    storage_options : mapping, optional
        fsspec options for the inputs given as URLs (``s3://...``); unused for local paths.
    scheduler, workers, progress
        Where the graph runs, as :func:`chunkseg.predict_to_zarr` (default: dask's threads).

    Returns
    -------
    dict
        ``classes`` : list of str, the K class names (``"0"``, ``"1"``... when unnamed).
        ``iou``, ``dice`` : float64 arrays ``(K,)``, per class ``TP / (TP + FP + FN)`` and
        ``2 TP / (2 TP + FP + FN)``; NaN for a class absent from both images.
        ``mean_iou``, ``mean_dice`` : float, means over the classes that are not NaN.
        ``accuracy``, ``pixel_error`` : float, ``trace(cm) / N`` and ``1 - accuracy``.
        ``pixels`` : int, N, the pixels counted; ``excluded`` : int, the pixels ``ignore`` and
        ``mask`` left out (``Y * X - N``).
        ``pixels_true``, ``pixels_pred`` : int64 arrays ``(K,)``, pixels of each class in
        the ground truth and in the prediction (counted pixels only).
        ``confusion_matrix`` : int64 array ``(K, K)``, rows: truth, columns: prediction.
        ``shape`` : (Y, X); ``pred``, ``truth`` : str, where the inputs came from.
        :func:`to_json` turns the dict into plain JSON types (NaN as null).

    Raises
    ------
    chunkseg.errors.NotFoundError
        If a path does not exist, holds no Zarr node, or a chunkseg output lacks
        ``pred_variable``.
    chunkseg.errors.InvalidValueError
        If the shapes of ``pred``, ``truth`` and ``mask`` differ, an input has several channels
        or a float dtype, an option is out of range, or (while computing) a label lies outside
        ``[0, K)`` or a counted ground-truth value is missing from ``label_map``.
    chunkseg.errors.InvalidTypeError
        If an option has the wrong type, or an input is of none of the accepted types.

    Warns
    -----
    chunkseg.errors.IncompleteOutputWarning
        If a chunkseg output's run has not finished.
    RuntimeWarning
        If no pixel is counted (every pixel ignored or masked); the scores are then NaN.

    Notes
    -----
    One pass over the data: each Dask task reads one chunk of each input (the chunkings are
    aligned by their common refinement, so each stored chunk is read once), counts the
    ``(true, predicted)`` pairs of its kept pixels with ``np.bincount(truth * K + pred)`` and
    returns a K x K matrix; the matrices are added in a tree (:func:`confusion_matrix_dask`).
    The scores are computed from the matrix (:func:`chunkseg.evaluation.metrics.scores_from_confusion`)
    with the standard definitions: the Jaccard index of scikit-learn's ``jaccard_score`` and
    torchmetrics' ``MulticlassJaccardIndex``, Dice = F1 of ``f1_score``, accuracy of
    ``accuracy_score``. A class absent from both images has IoU and Dice 0/0 = NaN and is left
    out of the means, like torchmetrics' ``average="macro"`` (weight 0 for such a class) and
    scikit-learn's ``average="macro"`` with its default labels; a class present in only one
    of them scores 0 and counts. The pixel error is the misclassified fraction, not the ISBI
    2012 leaderboard's ``1 - max F-score`` (see :func:`chunkseg.evaluation.metrics.pixel_error`).

    Examples
    --------
    >>> import numpy as np
    >>> r = evaluate(np.array([[0, 1], [1, 1]]), np.array([[0, 0], [1, 1]]))
    >>> r["iou"].tolist(), r["accuracy"]
    ([0.5, 0.6666666666666666], 0.75)
    """
    wanted = classes_arg(classes)
    ignore_values = check_ignore(ignore)
    k = len(wanted) if isinstance(wanted, tuple) else wanted
    label_map_arg(label_map, classes=k)
    p, names, pred_source, t, truth_source, m = open_inputs(
        pred, truth, mask, pred_variable=pred_variable, default="labels",
        truth_array=truth_array, storage_options=storage_options)
    if isinstance(wanted, tuple):
        names = list(wanted)
    elif wanted is not None and (names is None or len(names) != wanted):
        names = [str(i) for i in range(wanted)]
    if names is not None:
        k = len(names)
    matrix = confusion_matrix_dask(p, t, classes=k, ignore=ignore_values, mask=m,
                                   label_map=label_map)
    (cm,) = compute(matrix, scheduler=scheduler, workers=workers, progress=progress,
                    label="evaluating: confusion matrix", secrets=secrets_of(storage_options))
    if k is None:
        k = max(cm.shape[0], 1, *(int(v) + 1 for v in (label_map or {}).values()))
        cm = add_matrices(cm, np.zeros((k, k), dtype=np.int64))
        names = [str(i) for i in range(k)]
    scores = scores_from_confusion(cm)
    if scores["pixels"] == 0:
        warnings.warn("no pixel was counted: `ignore` and `mask` exclude every pixel; the "
                      "scores are NaN.", RuntimeWarning, stacklevel=2)
    shape = tuple(int(s) for s in p.shape)
    return {
        "classes": list(names),
        **scores,
        "excluded": shape[0] * shape[1] - scores["pixels"],
        "confusion_matrix": cm,
        "shape": shape,
        "pred": pred_source,
        "truth": truth_source,
    }
