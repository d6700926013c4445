"""The out-of-core confusion matrix: one Dask task per chunk counts the ``(true class,
predicted class)`` pairs of its block with :func:`numpy.bincount`, and the small per-chunk
matrices are added in a tree. No task holds more than one chunk of each input."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from .._check import classes_arg, is_int, label_map_arg
from ..errors import InvalidTypeError, InvalidValueError

__all__ = ["confusion_matrix_dask", "add_matrices", "check_ignore", "reduce_blocks", "kept_pixels",
           "MAX_INFERRED_CLASSES"]

MAX_INFERRED_CLASSES = 1024
"""With ``classes=None``, the largest label + 1 may be at most this (a 1024 x 1024 matrix per
chunk); a larger label (a uint16 ground truth's 65535, say) needs ``classes``, ``label_map``
or ``ignore``."""

_SPLIT_EVERY = 8  # matrices added per task of the tree sum


def check_ignore(ignore: Any) -> np.ndarray | None:
    """``ignore`` (ground-truth values counted nowhere) as sorted unique int64 values.

    Parameters
    ----------
    ignore : None, int or sequence of int
        Stored ground-truth value(s), e.g. 255.

    Returns
    -------
    numpy.ndarray of int64 or None
        None for None or an empty sequence.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``ignore`` is not an int or a sequence of ints (``True``/``False`` are not ints).
    """
    if ignore is None:
        return None
    values = [ignore] if is_int(ignore) else ignore
    if not isinstance(values, Sequence | np.ndarray) or isinstance(values, str | bytes) or \
            not all(is_int(v) for v in values):
        raise InvalidTypeError("`ignore` must be None, an int ground-truth value (e.g. 255) or "
                               f"a sequence of them. Got {ignore!r}.")
    return np.unique(np.asarray(values, dtype=np.int64)) if len(values) else None


def _lookup(mapping: dict[int, int] | None) -> tuple[np.ndarray, np.ndarray] | None:
    """A checked label map as sorted keys and their classes, for :func:`numpy.searchsorted`."""
    if mapping is None:
        return None
    keys = sorted(mapping)
    return (np.array(keys, dtype=np.int64),
            np.array([mapping[k] for k in keys], dtype=np.int64))


def _where(block_info: Any) -> str:
    try:
        (y0, y1), (x0, x1) = block_info[0]["array-location"]
        return f" (in the chunk at y {y0}..{y1}, x {x0}..{x1})"
    except (TypeError, KeyError, IndexError, ValueError):
        return ""


def kept_pixels(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None,
                ignore: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The flat ``(pred, truth)`` values of one block's counted pixels: those where ``mask``
    (if any) is nonzero and ``truth`` is not in ``ignore`` (if any)."""
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
    return p, t


def _block_confusion(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                     classes: int | None, ignore: np.ndarray | None,
                     label_map: tuple[np.ndarray, np.ndarray] | None,
                     block_info: Any = None) -> np.ndarray:
    """The confusion matrix of one chunk, as a (1, 1) object array holding an int64 ``(n, n)``
    matrix (``n = classes``, or the chunk's largest label + 1 when ``classes`` is None)."""
    p, t = kept_pixels(pred, truth, mask, ignore)
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


def add_matrices(*matrices: np.ndarray) -> np.ndarray:
    """Sum of square confusion matrices of possibly different sizes (the smaller padded with 0).

    Parameters
    ----------
    *matrices : numpy.ndarray, shape (n_i, n_i), integer
        At least one.

    Returns
    -------
    numpy.ndarray of int64, shape (max n_i, max n_i)
    """
    n = max(m.shape[0] for m in matrices)
    total = np.zeros((n, n), dtype=np.int64)
    for m in matrices:
        total[: m.shape[0], : m.shape[1]] += m
    return total


def _unwrap(combine: Any, *blocks: np.ndarray) -> Any:
    return combine(*(b[0, 0] for b in blocks))


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
    k = classes_arg(classes)
    if isinstance(k, tuple):
        k = len(k)
    ignore_values = check_ignore(ignore)
    mapping = _lookup(label_map_arg(label_map, classes=k))
    kernel = functools.partial(_block_confusion, classes=k, ignore=ignore_values,
                               label_map=mapping)
    return reduce_blocks(kernel, add_matrices, pred, truth, mask, token="confusion-block")


def reduce_blocks(kernel: Any, combine: Any, pred: Any, truth: Any, mask: Any = None, *,
                  token: str) -> Any:
    """One task per chunk of ``pred``, ``truth`` (and ``mask``), then a tree of ``combine``.

    Parameters
    ----------
    kernel : callable
        ``kernel(pred_block, truth_block[, mask_block], block_info=...)`` -> a (1, 1) object
        array holding the chunk's partial result.
    combine : callable
        ``combine(*partials)`` -> one partial; associative.
    pred, truth, mask : array-like, shape (Y, X)
        ``mask`` optional (None).
    token : str
        The name of the block tasks in the graph.

    Returns
    -------
    dask.delayed.Delayed
        The combined result of every chunk.

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If an input is not 2-D or the shapes differ.

    Notes
    -----
    The inputs are aligned with Dask's chunk unification (the common refinement of their
    chunkings), so each stored chunk is read once; partials are combined ``8`` at a time, so
    no task holds more than one block of each input.
    """
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
    # align the chunkings (their common refinement), then one (1, 1) object block per chunk
    _, aligned = da.core.unify_chunks(*[x for a in arrays for x in (a, "yx")])
    ny, nx = aligned[0].numblocks
    blocks = da.map_blocks(kernel, *aligned, dtype=object, meta=np.empty((0, 0), dtype=object),
                           chunks=((1,) * ny, (1,) * nx), token=token)
    cells = list(blocks.to_delayed().ravel())
    unwrap = functools.partial(_unwrap, combine)
    parts = [dask.delayed(unwrap, pure=True)(*cells[i : i + _SPLIT_EVERY])
             for i in range(0, len(cells), _SPLIT_EVERY)]
    while len(parts) > 1:
        parts = [dask.delayed(combine, pure=True)(*parts[i : i + _SPLIT_EVERY])
                 for i in range(0, len(parts), _SPLIT_EVERY)]
    return parts[0]
