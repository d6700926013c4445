"""Out-of-core evaluation of a segmentation against ground truth: ``chunkseg evaluate``.

A confusion matrix is accumulated chunk by chunk: one Dask task per chunk reads its block of
the prediction, the ground truth (and the mask), counts the ``(true class, predicted class)``
pairs with :func:`numpy.bincount`, and the small per-chunk matrices are added in a tree. No task
holds more than one chunk of each input, and every chunk is read once; the image can be any
size. The scores (per-class IoU and Dice, their means, pixel accuracy and error) are then
computed from the matrix by :func:`chunkseg.evaluation.metrics.scores_from_confusion`, the same formulas
as the in-memory :mod:`chunkseg.evaluation.metrics`.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .. import _ome
from .._redact import secrets_of
from ..engine.scheduling import compute
from ..errors import (
    InvalidTypeError,
    InvalidValueError,
    NotFoundError,
)
from ..io import is_zarr_url_or_path, open_image
from ..io._files import _read_npy
from ..io._locations import _fspath, _is_url, _redact
from ..outputs._manifest import warn_if_incomplete
from ..outputs._target import MARKER
from .metrics import scores_from_confusion

__all__ = ["evaluate", "confusion_matrix_dask", "parse_label_map", "parse_classes",
           "parse_ignore", "format_report", "to_json"]

MAX_INFERRED_CLASSES = 1024
"""With ``classes=None``, the largest label + 1 may be at most this (a 1024 x 1024 matrix per
chunk); a larger label (a uint16 ground truth's 65535, say) needs ``classes``, ``label_map``
or ``ignore``."""

_SPLIT_EVERY = 8  # matrices added per task of the tree sum


# ---------------------------------------------------------------------------------------------
# arguments
# ---------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _check_classes(classes: Any) -> int | list[str] | None:
    if classes is None:
        return None
    if _is_int(classes):
        if classes < 1:
            raise InvalidValueError(f"`classes` must be a positive number of classes. Got {classes}.")
        return int(classes)
    if isinstance(classes, Sequence) and not isinstance(classes, str | bytes):
        names = [str(c) for c in classes]
        if not names:
            raise InvalidValueError("`classes` must name at least one class. Got an empty "
                                    "sequence; pass None to infer the classes.")
        return names
    raise InvalidTypeError("`classes` must be None, a positive int or a sequence of class "
                           f"names. Got {type(classes).__name__} {classes!r}.")


def _check_ignore(ignore: Any) -> np.ndarray | None:
    if ignore is None:
        return None
    values = [ignore] if _is_int(ignore) else ignore
    if not isinstance(values, Sequence | np.ndarray) or isinstance(values, str | bytes) or \
            not all(_is_int(v) for v in values):
        raise InvalidTypeError("`ignore` must be None, an int ground-truth value (e.g. 255) or "
                               f"a sequence of them. Got {ignore!r}.")
    return np.unique(np.asarray(values, dtype=np.int64)) if len(values) else None


def _check_label_map(label_map: Any, classes: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    if label_map is None:
        return None
    if not isinstance(label_map, Mapping):
        raise InvalidTypeError("`label_map` must be a mapping of stored ground-truth value -> "
                               f"class index, e.g. {{255: 0, 0: 1}}. Got {type(label_map).__name__}.")
    if not label_map:
        raise InvalidValueError("`label_map` must map at least one value. Got {}; pass None to "
                                "use the stored values as classes.")
    for key, value in label_map.items():
        if not _is_int(key) or not _is_int(value) or value < 0:
            raise InvalidValueError(
                "`label_map` must map int ground-truth values to class indices >= 0. Got "
                f"{key!r}: {value!r}; e.g. {{255: 0, 0: 1}} for the ISBI 2012 labels.")
        if classes is not None and value >= classes:
            raise InvalidValueError(
                f"`label_map` must map to classes in [0, classes) = [0, {classes}). Got "
                f"{key}: {value}; pass a larger `classes` or fix the map.")
    keys = np.array(sorted(int(k) for k in label_map), dtype=np.int64)
    values = np.array([int(label_map[k]) for k in sorted(label_map, key=int)], dtype=np.int64)
    return keys, values


def parse_label_map(text: str) -> dict[int, int]:
    """``"255:0,0:1"`` -> ``{255: 0, 0: 1}`` (the CLI's ``--label-map``).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If ``text`` is not comma-separated ``STORED:CLASS`` integer pairs, or a value repeats.
    """
    out: dict[int, int] = {}
    for part in str(text).split(","):
        key, sep, value = part.strip().partition(":")
        try:
            if not sep:
                raise ValueError
            k, v = int(key), int(value)
        except ValueError:
            raise InvalidValueError(
                "`label_map` must be comma-separated STORED:CLASS integer pairs, e.g. "
                f"255:0,0:1. Got {text!r}.") from None
        if k in out:
            raise InvalidValueError(f"`label_map` must map each stored value once. Got {k} twice "
                                    f"in {text!r}.")
        out[k] = v
    return out


def parse_classes(text: str | None) -> int | list[str] | None:
    """The CLI's ``--classes``: ``"3"`` -> 3, ``"cell,membrane"`` -> ``["cell", "membrane"]``."""
    if text is None:
        return None
    text = str(text).strip()
    if text.isdigit():
        return int(text)
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise InvalidValueError("`classes` must be a number of classes or comma-separated class "
                                f"names, e.g. 2 or cell,membrane. Got {text!r}.")
    return names


def parse_ignore(text: str | None) -> list[int] | None:
    """The CLI's ``--ignore``: ``"255"`` -> ``[255]``, ``"254,255"`` -> ``[254, 255]``."""
    if text is None:
        return None
    try:
        return [int(v) for v in str(text).split(",")]
    except ValueError:
        raise InvalidValueError("`ignore` must be an integer ground-truth value or several, "
                                f"comma-separated, e.g. 255. Got {text!r}.") from None


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------


def _class_names(values: Any) -> list[str] | None:
    if values is None:
        return None
    arr = np.asarray(values)
    return [str(v) for v in arr.ravel()] if arr.ndim == 1 and arr.size else None


def _warn_incomplete(group: zarr.Group, source: str) -> None:
    if MARKER in group.attrs:  # a chunkseg output, finished or not
        warn_if_incomplete(group, source, stacklevel=5)


def _open_group_labels(group: zarr.Group, param: str, option: str, variable: str | None,
                       default: str | None, source: str) -> tuple[xr.DataArray, list | None, str]:
    """The label array of a Zarr group: a chunkseg output's variable (either layout), else the
    group's image as :func:`open_image` picks it."""
    wanted = variable or "labels"
    path = _ome.find(group, wanted)
    if path is None and variable is not None and isinstance(group.get(variable), zarr.Array):
        path = variable
    if path is not None:
        _warn_incomplete(group, source)
        names = None
        if isinstance(group.get("class"), zarr.Array):
            names = _class_names(group["class"][...])
        return open_image(group[path]), names, f"{source} ({path})"
    if MARKER in group.attrs:
        arrays = sorted(group.array_keys())
        raise NotFoundError(
            f"`{option}` must name a variable of the chunkseg output `{param}`. Got "
            f"{wanted!r}, which {source!r} does not hold (its arrays: {arrays}); pass one of "
            "them, or write labels with predict_to_zarr(..., outputs='...,labels').")
    explicit = variable if variable is not None and variable != default else None
    return open_image(group, array_name=explicit), None, source


def _open_labels(obj: Any, param: str, option: str, variable: str | None, default: str | None,
                 storage_options: Mapping[str, Any] | None) -> tuple[da.Array, list | None, str]:
    """``obj`` as a 2-D Dask label array, the class names it carries, and a description."""
    names = None
    source = type(obj).__name__
    if isinstance(obj, xr.Dataset):
        wanted = variable or "labels"
        if wanted not in obj.data_vars:
            raise NotFoundError(
                f"`{option}` must name a variable of the Dataset `{param}`. Got {wanted!r}; it "
                f"has {sorted(map(str, obj.data_vars))}.")
        names = _class_names(obj.coords["class"].values) if "class" in obj.coords else None
        obj = obj[wanted]
    if isinstance(obj, str | os.PathLike):
        location = _fspath(obj, param)
        source = _redact(location)
        so = dict(storage_options) if storage_options is not None and _is_url(location) else None
        if not _is_url(location) and not os.path.exists(location):
            raise NotFoundError(f"`{param}` must be an existing path or a URL. Got "
                                f"{location!r}, which does not exist.")
        if location.endswith(".npy") and not _is_url(location):
            image = open_image(_read_npy(location, param, mmap_mode="r"))
        elif is_zarr_url_or_path(location):
            try:
                node = zarr.open(store=location, mode="r", **({"storage_options": so} if so else {}))
            except (FileNotFoundError, NotADirectoryError) as err:
                raise NotFoundError(f"`{param}` must be a Zarr store, an image file or an array. "
                                    f"Got {source!r}, where no Zarr array or group was "
                                    "found.") from err
            if isinstance(node, zarr.Group):
                image, names, source = _open_group_labels(node, param, option, variable,
                                                          default, source)
            else:
                image = open_image(node)
        else:
            image = open_image(location, storage_options=so)
    elif isinstance(obj, zarr.Group):
        source = _redact(str(obj.store_path))
        image, names, source = _open_group_labels(obj, param, option, variable, default,
                                                  source)
    else:
        image = open_image(obj)
    if image.sizes["c"] != 1:
        raise InvalidValueError(
            f"`{param}` must be a single-channel label image (y, x). Got {image.sizes['c']} "
            f"channels, shape {tuple(image.shape)} (y, x, c); pass one channel.")
    data = image.data[..., 0]
    if data.dtype.kind not in ("biuf" if param == "mask" else "biu"):
        raise InvalidValueError(
            f"`{param}` must hold integer (or boolean) class labels. Got dtype {data.dtype}; "
            "take the argmax of probabilities or cast with `.astype(int)`.")
    return data, names, source


# ---------------------------------------------------------------------------------------------
# the per-chunk kernel and the tree sum
# ---------------------------------------------------------------------------------------------


def _where(block_info: Any) -> str:
    try:
        (y0, y1), (x0, x1) = block_info[0]["array-location"]
        return f" (in the chunk at y {y0}..{y1}, x {x0}..{x1})"
    except (TypeError, KeyError, IndexError, ValueError):
        return ""


def _block_confusion(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                     classes: int | None, ignore: np.ndarray | None,
                     label_map: tuple[np.ndarray, np.ndarray] | None,
                     block_info: Any = None) -> np.ndarray:
    """The confusion matrix of one chunk, as a (1, 1) object array holding an int64 ``(n, n)``
    matrix (``n = classes``, or the chunk's largest label + 1 when ``classes`` is None)."""
    p = np.asarray(pred).ravel()
    t = np.asarray(truth).ravel()
    keep = None
    if mask is not None:
        keep = np.asarray(mask).ravel() != 0
    if ignore is not None:
        kept = ~np.isin(t, ignore)
        keep = kept if keep is None else keep & kept
    if keep is not None:
        p, t = p[keep], t[keep]
    t = t.astype(np.int64, copy=False)
    p = p.astype(np.int64, copy=False)
    if label_map is not None and t.size:
        keys, values = label_map
        idx = np.minimum(np.searchsorted(keys, t), keys.size - 1)
        found = keys[idx] == t
        if not found.all():
            bad = np.unique(t[~found])[:5].tolist()
            raise InvalidValueError(
                f"`label_map` must map every ground-truth value that is counted. Got values "
                f"{bad} not in the map{_where(block_info)}; add them to the map or to `ignore`.")
        t = values[idx]
    for name, lab in (("truth", t), ("pred", p)):
        if not lab.size:
            continue
        lo, hi = int(lab.min()), int(lab.max())
        limit = classes if classes is not None else MAX_INFERRED_CLASSES
        if lo < 0 or hi >= limit:
            fix = ("pass a larger `classes`, a `label_map` or `ignore`" if classes is not None
                   else "pass `classes`, a `label_map` (e.g. {255: 0, 0: 1}) or `ignore`")
            what = f"[0, classes) = [0, {classes})" if classes is not None else \
                f"[0, {MAX_INFERRED_CLASSES}) when `classes` is None"
            raise InvalidValueError(f"`{name}` must hold class labels in {what}. Got min {lo}, "
                                    f"max {hi}{_where(block_info)}; {fix}.")
    if classes is not None:
        n = classes
    else:
        n = int(max(t.max(initial=-1), p.max(initial=-1))) + 1
    counts = np.bincount(t * n + p, minlength=n * n).reshape(n, n) if n else np.zeros((0, 0))
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = counts.astype(np.int64, copy=False)
    return out


def _add(*matrices: np.ndarray) -> np.ndarray:
    """Sum of confusion matrices of possibly different sizes (the smaller padded with 0)."""
    n = max(m.shape[0] for m in matrices)
    total = np.zeros((n, n), dtype=np.int64)
    for m in matrices:
        total[: m.shape[0], : m.shape[1]] += m
    return total


def _unwrap(*blocks: np.ndarray) -> np.ndarray:
    return _add(*(b[0, 0] for b in blocks))


def confusion_matrix_dask(
    pred: Any,
    truth: Any,
    *,
    classes: int | None = None,
    ignore: int | Sequence[int] | None = None,
    mask: Any = None,
    label_map: Mapping[int, int] | None = None,
) -> Any:
    """A lazy confusion matrix of two label images, one task per chunk and a tree sum.

    Parameters
    ----------
    pred : dask.array.Array or numpy.ndarray, shape (Y, X), integer or bool
        Predicted class indices.
    truth : dask.array.Array or numpy.ndarray, shape (Y, X), integer or bool
        Ground-truth values (class indices, or the stored values ``label_map`` maps).
    classes : int, optional
        Number of classes K. Default: the largest label seen + 1 (at most
        :data:`MAX_INFERRED_CLASSES`).
    ignore : int or sequence of int, optional
        Ground-truth value(s), as stored (before ``label_map``), whose pixels count nowhere.
    mask : dask.array.Array or numpy.ndarray, shape (Y, X), optional
        Only pixels where it is nonzero (True) count.
    label_map : mapping of int to int, optional
        Stored ground-truth value -> class index; every counted value must be a key.

    Returns
    -------
    dask.delayed.Delayed
        Computes to an int64 array ``(K, K)``: entry ``[i, j]`` counts the pixels of true
        class ``i`` predicted as ``j`` (rows: truth, columns: prediction, as
        :func:`sklearn.metrics.confusion_matrix`). With ``classes=None``, K is the largest
        label seen + 1.

    Raises
    ------
    chunkseg.errors.InvalidValueError
        Here: if the shapes differ, or an argument is out of its range. When computed: if a
        label lies outside ``[0, K)`` or a counted ground-truth value is not in ``label_map``
        (the message names the chunk).
    chunkseg.errors.InvalidTypeError
        If ``classes``, ``ignore`` or ``label_map`` has the wrong type.

    Notes
    -----
    The inputs are aligned with Dask's usual chunk unification (the common refinement of
    their chunkings), so each stored chunk is still read once. Each block task runs
    ``np.bincount(truth * K + pred)`` over its kept pixels and returns a K x K matrix; the
    matrices are added ``8`` at a time in a tree, so no task ever holds more than one block
    of each input.
    """
    k = _check_classes(classes)
    if isinstance(k, list):
        k = len(k)
    ignore_values = _check_ignore(ignore)
    mapping = _check_label_map(label_map, k)
    arrays = [da.asarray(pred), da.asarray(truth)]
    if mask is not None:
        arrays.append(da.asarray(mask))
    for name, arr in zip(("pred", "truth", "mask"), arrays, strict=False):
        if arr.ndim != 2:
            raise InvalidValueError(f"`{name}` must be a 2-D (y, x) array. Got shape {arr.shape}.")
    shapes = {name: a.shape for name, a in zip(("pred", "truth", "mask"), arrays, strict=False)}
    if len(set(shapes.values())) > 1:
        got = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise InvalidValueError(f"`pred`, `truth` (and `mask`) must have the same shape (y, x). "
                                f"Got {got}; crop or resample them to one grid first.")
    kernel = functools.partial(_block_confusion, classes=k, ignore=ignore_values,
                               label_map=mapping)
    # align the chunkings (their common refinement), then one (1, 1) object block per chunk
    _, aligned = da.core.unify_chunks(*[x for a in arrays for x in (a, "yx")])
    ny, nx = aligned[0].numblocks
    blocks = da.map_blocks(kernel, *aligned, dtype=object, meta=np.empty((0, 0), dtype=object),
                           chunks=((1,) * ny, (1,) * nx), token="confusion-block")
    cells = list(blocks.to_delayed().ravel())
    parts = [dask.delayed(_unwrap, pure=True)(*cells[i : i + _SPLIT_EVERY])
             for i in range(0, len(cells), _SPLIT_EVERY)]
    while len(parts) > 1:
        parts = [dask.delayed(_add, pure=True)(*parts[i : i + _SPLIT_EVERY])
                 for i in range(0, len(parts), _SPLIT_EVERY)]
    return parts[0]


# ---------------------------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------------------------


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
        ``ome=True`` layout where they are the NGFF label image ``labels/classes/0``), or a
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
    wanted = _check_classes(classes)
    ignore_values = _check_ignore(ignore)
    k = len(wanted) if isinstance(wanted, list) else wanted
    _check_label_map(label_map, k)
    if not isinstance(pred_variable, str) or not pred_variable:
        raise InvalidTypeError(f"`pred_variable` must be a variable name (str). Got {pred_variable!r}.")
    p, names, pred_source = _open_labels(pred, "pred", "pred_variable", pred_variable, "labels",
                                         storage_options)
    t, _, truth_source = _open_labels(truth, "truth", "truth_array", truth_array, None,
                                      storage_options)
    m = None
    if mask is not None:
        m, _, _ = _open_labels(mask, "mask", "mask", None, None, storage_options)
    if isinstance(wanted, list):
        names = wanted
    elif wanted is not None and (names is None or len(names) != wanted):
        names = [str(i) for i in range(wanted)]
    if names is not None:
        k = len(names)
    matrix = confusion_matrix_dask(p, t, classes=k, ignore=ignore_values, mask=m,
                                   label_map=label_map)
    (cm,) = compute(matrix, scheduler=scheduler, workers=workers, progress=progress,
                    secrets=secrets_of(storage_options))
    if k is None:
        k = max(cm.shape[0], 1, *(int(v) + 1 for v in (label_map or {}).values()))
        cm = _add(cm, np.zeros((k, k), dtype=np.int64))
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


def to_json(result: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`evaluate`'s result in plain JSON types: arrays as lists, NaN as None (null)."""

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            return [plain(v) for v in value.tolist()]
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        if isinstance(value, float | np.floating):
            return None if math.isnan(value) else float(value)
        if isinstance(value, np.integer):
            return int(value)
        return value

    return {key: plain(value) for key, value in result.items()}


def _score(value: float) -> str:
    return "     n/a" if math.isnan(value) else f"{value:8.4f}"


_MAX_ROWS = 20


def format_report(result: Mapping[str, Any]) -> str:
    """:func:`evaluate`'s result as a readable table: one row per class (IoU, Dice, pixels in
    the ground truth and in the prediction; with more than 20 classes, only the classes
    present), then mean IoU and Dice, accuracy, pixel error."""
    names = [str(n) for n in result["classes"]]
    width = max(12, *(len(n) + 2 for n in names))
    lines = [
        f"pred   {result['pred']}",
        f"truth  {result['truth']}",
        f"pixels {result['pixels']} counted, {result['excluded']} excluded (ignore, mask) of "
        f"{result['shape'][0]} x {result['shape'][1]}",
        "",
        f"{'class':<{width}}{'IoU':>8}  {'Dice':>8}  {'GT pixels':>14}  {'pred pixels':>14}",
    ]
    absent = [n for i, n in enumerate(names) if math.isnan(result["iou"][i])]
    many = len(names) > _MAX_ROWS  # then the rows of absent classes are left out
    for i, name in enumerate(names):
        if many and name in absent:
            continue
        lines.append(f"{name:<{width}}{_score(result['iou'][i])}  {_score(result['dice'][i])}  "
                     f"{int(result['pixels_true'][i]):>14}  {int(result['pixels_pred'][i]):>14}")
    note = ""
    if absent:
        listed = ", ".join(absent) if len(absent) <= 10 else f"{len(absent)} classes"
        note = f"  (n/a: absent from both, not in the means: {listed})"
    lines += [
        "",
        f"{'mean IoU':<{width}}{_score(result['mean_iou'])}{note}",
        f"{'mean Dice':<{width}}{_score(result['mean_dice'])}",
        f"{'accuracy':<{width}}{_score(result['accuracy'])}",
        f"{'pixel error':<{width}}{_score(result['pixel_error'])}",
    ]
    return "\n".join(lines)
