"""The out-of-core contingency table of two label images, and the lazy inputs it is built on:
the connected components of a semantic ground truth and the ISBI-style thinning of a
prediction's boundaries.

One Dask task per chunk counts the ``(truth id, pred id)`` pairs of its block with
:func:`numpy.unique` over one combined int64 key; the small per-chunk tables are merged in a
tree. No task holds more than one chunk of each input (plus, for the thinning, a halo).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from ..errors import InvalidValueError
from ..kernels import components as kern
from ..scheduling import compute
from .confusion import _where, kept_pixels, reduce_blocks

__all__ = ["contingency_table_dask", "merge_tables", "truth_components", "thin_boundaries"]

_KEY_SHIFT = 32  # key = truth << 32 | pred: truth < 2**31, pred < 2**32


def merge_tables(*tables: tuple[np.ndarray, np.ndarray, np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum sparse contingency tables ``(truth ids, pred ids, counts)``: one row per pair, the
    pairs sorted (truth first), counts int64."""
    t = np.concatenate([tb[0] for tb in tables]).astype(np.int64, copy=False)
    p = np.concatenate([tb[1] for tb in tables]).astype(np.int64, copy=False)
    c = np.concatenate([tb[2] for tb in tables]).astype(np.int64, copy=False)
    keys, inverse = np.unique((t << _KEY_SHIFT) | p, return_inverse=True)
    counts = np.bincount(inverse.ravel(), weights=c, minlength=keys.size).round()
    return keys >> _KEY_SHIFT, keys & ((1 << _KEY_SHIFT) - 1), counts.astype(np.int64)


def _block_table(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                 ignore: np.ndarray | None, block_info: Any = None) -> np.ndarray:
    """The contingency table of one chunk, as a (1, 1) object array holding
    ``(truth ids, pred ids, counts)``."""
    p, t = kept_pixels(pred, truth, mask, ignore)
    for name, ids, limit in (("truth", t, 1 << 31), ("pred", p, 1 << _KEY_SHIFT)):
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= limit):
            raise InvalidValueError(
                f"`{name}` must hold object ids in [0, {limit}). Got min {int(ids.min())}, max "
                f"{int(ids.max())}{_where(block_info)}; relabel the objects (e.g. "
                "skimage.segmentation.relabel_sequential) or pass `ignore`.")
    keys, counts = np.unique((t.astype(np.int64) << _KEY_SHIFT) | p.astype(np.int64),
                             return_counts=True)
    out = np.empty((1, 1), dtype=object)
    out[0, 0] = (keys >> _KEY_SHIFT, keys & ((1 << _KEY_SHIFT) - 1), counts.astype(np.int64))
    return out


def contingency_table_dask(pred: Any, truth: Any, *, mask: Any = None,
                           ignore: np.ndarray | None = None) -> Any:
    """A lazy sparse contingency table of two label images, one task per chunk and a tree merge.

    Parameters
    ----------
    pred : dask.array.Array or numpy.ndarray, shape (Y, X), integer
        Predicted object ids in ``[0, 2**32)``.
    truth : dask.array.Array or numpy.ndarray, shape (Y, X), integer
        True object ids in ``[0, 2**31)``.
    mask : dask.array.Array or numpy.ndarray, shape (Y, X), optional
        Only pixels where it is nonzero (True) count.
    ignore : numpy.ndarray of int64, optional
        Truth ids whose pixels count nowhere (sorted, as
        :func:`chunkseg.evaluation.confusion.check_ignore` returns them).

    Returns
    -------
    dask.delayed.Delayed
        Computes to ``(truth_ids, pred_ids, counts)``: three int64 arrays ``(K,)``, one entry
        per ``(truth id, pred id)`` pair present among the counted pixels (sorted by truth id,
        then pred id), ``counts`` its pixels. Row and column sums are the objects' sizes.

    Raises
    ------
    chunkseg.errors.InvalidValueError
        Here: if the arrays are not 2-D or their shapes differ. When computed: if an id lies
        outside its range (the message names the chunk).

    Notes
    -----
    The chunkings are aligned by their common refinement (each stored chunk is read once). A
    block task forms the int64 key ``truth << 32 | pred`` of its kept pixels and counts it with
    ``np.unique(..., return_counts=True)``; the tables (a few entries per object of the chunk)
    are merged ``8`` at a time in a tree, by the same ``np.unique`` over their concatenated
    keys. The table equals that of the whole image for any chunking.
    """
    return reduce_blocks(functools.partial(_block_table, ignore=ignore), merge_tables, pred,
                         truth, mask, token="contingency-block")


# --- the truth's objects, out of core ----------------------------------------------------------


def _summary(block: np.ndarray, values: np.ndarray, origin: tuple[int, int], width: int,
             connectivity: int) -> kern.BlockSummary:
    labels, n = kern.label_block(np.isin(block, values), connectivity)
    return kern.summarise_block(labels, n, origin, width)


def _relabel(block: np.ndarray, values: np.ndarray, connectivity: int,
             lookups: dict, block_info: Any = None) -> np.ndarray:
    labels, _ = kern.label_block(np.isin(block, values), connectivity)
    lookup = lookups[tuple(block_info[0]["chunk-location"])]
    return kern.relabel_block(labels, lookup, np.dtype(np.int64))


def truth_components(truth: da.Array, values: Sequence[int], *, connectivity: int = 1,
                     scheduler: Any = None, workers: int | None = None, progress: bool = False,
                     secrets: Sequence[str] = ()) -> tuple[da.Array, int]:
    """The connected components of the pixels of a semantic label image whose value is in
    ``values``, numbered ``1..N`` as :func:`scipy.ndimage.label` numbers the whole image.

    Parameters
    ----------
    truth : dask.array.Array, shape (Y, X), integer
    values : sequence of int
        The stored values of the object class (ISBI 2012: 255, the cell interior).
    connectivity : {1, 2}, default 1
        1: pixels touching by an edge are connected (the ISBI challenge's 4-connectivity).
    scheduler, workers, progress, secrets
        As :func:`chunkseg.scheduling.compute`.

    Returns
    -------
    (dask.array.Array of int64, int)
        The lazy instance image (0 for the other pixels), chunked as ``truth``, and N.

    Notes
    -----
    The two passes of :func:`chunkseg.label` (:mod:`chunkseg.kernels.components`): one task per
    chunk labels and summarises its block (computed now), the summaries are merged on the
    client, and the returned array labels each block again and maps it through its lookup
    when it is computed. No task holds more than one chunk.
    """
    kern.check_connectivity(connectivity)
    vals = np.asarray(values, dtype=np.int64)
    width = truth.shape[1]
    ys_, xs_ = kern.block_grid(truth.chunks)
    cells = truth.to_delayed()
    tasks = {(iy, ix): dask.delayed(_summary, pure=True)(cells[iy, ix], vals, (ys[0], xs[0]),
                                                         width, connectivity)
             for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_)}
    done = compute(*tasks.values(), scheduler=scheduler, workers=workers, progress=progress,
                   label="evaluating: true objects", secrets=secrets)
    lookups, n = kern.merge_summaries(dict(zip(tasks, done)), (len(ys_), len(xs_)), connectivity)
    out = truth.map_blocks(_relabel, vals, connectivity, lookups, dtype=np.int64,
                           token="truth-components")
    return out, n


# --- the ISBI 2012 thinning of the prediction's boundaries --------------------------------------


def _thin_block(block: np.ndarray) -> np.ndarray:
    from skimage.segmentation import watershed

    ids = np.asarray(block).astype(np.int64, copy=False)
    if not ids.any():
        return ids
    return watershed(np.zeros(ids.shape, np.uint8), markers=ids, connectivity=1,
                     watershed_line=True)


def thin_boundaries(pred: da.Array, halo: int) -> da.Array:
    """The prediction with its background (boundary) pixels given to the adjacent objects but
    for a 1-pixel line between them: the ISBI 2012 challenge's "border thinning", chunk by
    chunk with a halo.

    Parameters
    ----------
    pred : dask.array.Array, shape (Y, X), integer
        Object ids, 0 for the boundary/background.
    halo : int
        Pixels of context read around each chunk (clipped to the smallest chunk).

    Returns
    -------
    dask.array.Array of int64, shape (Y, X)
        The thinned ids: 0 only on the watershed lines (and on background out of every
        object's reach within the halo).

    Notes
    -----
    The challenge (Fiji Trainable_Segmentation ``RandError
    .getForegroundRestrictedRandAfterThinningStatsN2``, ``VariationOfInformation
    .foregroundRestrictedScoreAfterThinningN2``) floods the binary boundary map with its
    ``utils/WatershedTransform2D`` (Vincent and Soille's flooding, 4-connectivity): each
    boundary pixel goes to the basin whose breadth-first front reaches it first, the pixels
    where two fronts meet become the 1-pixel dam. Here the flooding is scikit-image's
    :func:`skimage.segmentation.watershed` of a flat image from the objects as markers
    (``connectivity=1``, ``watershed_line=True``), the same breadth-first flooding but with
    another tie-breaking where two fronts arrive together, so a dam can lie one pixel off
    Fiji's. Per chunk it is an approximation: a boundary pixel farther than ``halo`` from
    every object of its chunk's window, or a front whose order depends on pixels beyond the
    halo, can be assigned differently than in a whole-image flooding. The differences in
    V_rand and V_info are measured in ``tests/evaluation/test_evaluate_instances.py`` and in docs/evaluate.md.
    """
    depth = int(min(halo, *(min(c) for c in pred.chunks)))
    if depth <= 0:
        return pred.map_blocks(_thin_block, dtype=np.int64)
    return pred.map_overlap(_thin_block, depth=depth, boundary="none", dtype=np.int64,
                            trim=True)
