"""Instance segmentation scores from a contingency table (numpy only).

Every function takes the sparse contingency table of a ground truth and a prediction as three
equal-length 1-D arrays: ``truth`` ids, ``pred`` ids and ``counts`` (pixels of the image with
that truth id and that pred id; each pair once, counts > 0), as
:func:`chunkseg.evaluation.contingency.contingency_table_dask` returns it. Id 0 is the
background in both (ISBI 2012: the membrane). The table covers every counted pixel, truth
background included; each score restricts it as its definition says.

Three families of scores, each with its source:

- The ISBI 2012 challenge's foreground-restricted scores :func:`v_rand` and :func:`v_info`
  (Arganda-Carreras et al. 2015, "Crowdsourcing the creation of image segmentation algorithms
  for connectomics", Front. Neuroanat. 9:142, doi:10.3389/fnana.2015.00142), ported from
  Fiji's Trainable_Segmentation (github.com/fiji/Trainable_Segmentation, commit 41c7083),
  ``trainableSegmentation/metrics/RandError.java``
  (``getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor)`` and
  ``ClassificationStatistics``) and ``VariationOfInformation.java``
  (``foregroundRestrictedFscore``). Only pixels of the truth's foreground count (``n`` of
  them); a pixel the prediction puts in its background (id 0) is an object of its own (a
  singleton); the F-score weighs split and merge equally (alpha = 0.5).
- scikit-image's :func:`skimage.metrics.adapted_rand_error` and
  :func:`skimage.metrics.variation_of_information` with ``ignore_labels=(0,)`` on the truth
  (:func:`adapted_rand` and :func:`vi_split_merge`): truth-background pixels are dropped, the
  prediction's id 0 is one object like any other.
- Object precision, recall and F1 at IoU > 0.5 (:func:`object_scores`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["v_rand", "v_info", "adapted_rand", "vi_split_merge", "object_scores"]


def _drop_truth_background(truth, pred, counts):
    t, p = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    c = np.asarray(counts, np.int64)
    keep = t != 0
    return t[keep], p[keep], c[keep]


def _foreground(truth: np.ndarray, pred: np.ndarray, counts: np.ndarray):
    """The Fiji quantities: ``n``, the truth's object sizes ``a_i``, the prediction's object
    sizes inside the truth's foreground ``b_j`` (j > 0), the joint counts ``n_ij`` (i, j > 0)
    and ``n_i0``, the truth-foreground pixels the prediction leaves in its background."""
    t, p, c = _drop_truth_background(truth, pred, counts)
    inside = p != 0
    return (int(c.sum()), _sizes(t, c), _sizes(p[inside], c[inside]), c[inside],
            int(c[~inside].sum()))


def _sizes(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pixels per id (int64), in the order of the sorted unique ids."""
    if not ids.size:
        return np.zeros(0, np.int64)
    return np.bincount(np.unique(ids, return_inverse=True)[1], weights=counts,
                       ).round().astype(np.int64)


def _sumsq(x: np.ndarray) -> int:
    """``sum(x ** 2)`` as an exact Python int (no int64 overflow on huge images)."""
    return int(np.sum(x.astype(object) ** 2)) if x.size else 0


def v_rand(truth: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """The ISBI 2012 foreground-restricted Rand score ``V_rand`` (the challenge's F-score).

    Parameters
    ----------
    truth, pred, counts : numpy.ndarray, shape (K,), integer
        The contingency table (module docstring); rows with truth 0 are left out, pred 0
        pixels are singletons.

    Returns
    -------
    dict
        ``v_rand``: ``2 P R / (P + R)``; ``v_rand_split``: R, the Rand recall
        ``sum n_ij^2 / sum a_i^2`` (1 when nothing is split); ``v_rand_merge``: P, the Rand
        precision ``sum n_ij^2 / sum b_j^2`` (1 when nothing is merged), where the sums run over
        the truth's foreground and each pixel the prediction leaves in its background adds 1
        to both ``sum n_ij^2`` and ``sum b_j^2``. NaN when the truth has no foreground pixel.

    Notes
    -----
    A port of Fiji Trainable_Segmentation's ``RandError.getForegroundRestrictedRandIndexStatsN2``
    (``p_ij = n_ij / n``, ``sumAB2 = sum p_ij^2 + sum p_i0 / n``, ``sumB2 = sum b_j^2 +
    sum p_i0 / n``, ``sumA2 = sum a_i^2``; ``tp = n^2 sumAB2``, ``fp = n^2 sumB2 - tp``,
    ``fn = n^2 sumA2 - tp``) and of ``ClassificationStatistics`` (precision 1 when fp = 0,
    recall 1 when fn = 0, F = 2 P R / (P + R), 0 when P + R = 0). Computed in exact integer
    pixel counts (Fiji's ``n^2 p_ij^2``), so only the final ratios round.
    """
    n, a, b, nij, n0 = _foreground(truth, pred, counts)
    if n == 0:
        return {"v_rand": math.nan, "v_rand_split": math.nan, "v_rand_merge": math.nan}
    tp = _sumsq(nij) + n0
    fp = _sumsq(b) + n0 - tp
    fn = _sumsq(a) - tp
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"v_rand": f, "v_rand_split": recall, "v_rand_merge": precision}


def _xlogx(x: np.ndarray) -> float:
    x = x[x > 0]
    return float(np.sum(x * np.log(x)))


def v_info(truth: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """The ISBI 2012 foreground-restricted information-theoretic score ``V_info``.

    Parameters
    ----------
    truth, pred, counts : numpy.ndarray, shape (K,), integer
        The contingency table (module docstring), used as :func:`v_rand` uses it.

    Returns
    -------
    dict
        ``v_info``: ``2 P R / (P + R)``; ``v_info_split``: R = ``I(T; S) / H(S)`` (1 when
        nothing is split); ``v_info_merge``: P = ``I(T; S) / H(T)`` (1 when nothing is merged),
        T the truth's objects and S the prediction's on the truth's foreground, each
        prediction-background pixel a singleton (natural log; the ratios do not depend on it).
        Fiji's conventions for empty entropies: ``H(T) = 0`` gives P = 0, R = 1; ``H(S) = 0``
        gives P = 1, R = 0, so one true object scores 0 even when predicted exactly. NaN when
        the truth has no foreground pixel.

    Notes
    -----
    A port of Fiji Trainable_Segmentation's ``VariationOfInformation.foregroundRestrictedFscore``:
    ``sumA = sum a_i log a_i``, ``sumB = sum b_j log b_j - sum p_i0 log n``,
    ``sumAB = sum p_ij log p_ij - sum p_i0 log n`` (probabilities ``/ n``), ``H(A) = -sumA``,
    ``H(B) = -sumB``, ``H(A|B) = sumB - sumAB``, ``H(B|A) = sumA - sumAB``,
    precision ``(H(A) - H(A|B)) / H(A)``, recall ``(H(B) - H(B|A)) / H(B)``. One deviation:
    when P = R = 0 (truth and prediction independent) Fiji's ``2 P R / (P + R)`` is 0/0 = NaN;
    here it is 0, as ``ClassificationStatistics`` does for ``V_rand``.
    """
    n, a, b, nij, n0 = _foreground(truth, pred, counts)
    if n == 0:
        return {"v_info": math.nan, "v_info_split": math.nan, "v_info_merge": math.nan}
    p0 = n0 / n
    sum_a = _xlogx(a / n)
    sum_b = _xlogx(b / n) - p0 * math.log(n)
    sum_ab = _xlogx(nij / n) - p0 * math.log(n)
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    if hb == 0:
        precision, recall = 1.0, 0.0
    elif ha == 0:
        precision, recall = 0.0, 1.0
    else:
        precision, recall = (ha - hab) / ha, (hb - hba) / hb
    f = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"v_info": f, "v_info_split": recall, "v_info_merge": precision}


def adapted_rand(truth: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> dict[str, float]:
    """scikit-image's adapted Rand error, the truth's background ignored.

    Parameters
    ----------
    truth, pred, counts : numpy.ndarray, shape (K,), integer
        The table (module docstring); truth 0 left out, pred 0 one object.

    Returns
    -------
    dict
        ``adapted_rand_error``, ``are_precision``, ``are_recall``: the three values of
        ``skimage.metrics.adapted_rand_error(truth_image, pred_image, ignore_labels=(0,))``, in
        its order and with its names: ``are_precision = sum(n_ij^2 - n_ij) / sum(a_i^2 - a_i)``
        (a_i: the truth's object sizes; 1 when nothing is split) and ``are_recall =
        sum(n_ij^2 - n_ij) / sum(b_j^2 - b_j)`` (b_j: the prediction's, 1 when nothing is
        merged), error ``1 - sum(n_ij^2 - n_ij) / (sum(a_i^2 - a_i) / 2 + sum(b_j^2 - b_j) / 2)``.
        Only pixels whose truth is not 0 count; the prediction's id 0 is one object. NaN
        when the denominators are 0.

    Notes
    -----
    The formulas of scikit-image 0.26 ``skimage/metrics/_adapted_rand_error.py`` (with
    ``alpha = 0.5``), from the SNEMI3D / Arganda-Carreras et al. (2015) adapted Rand error.
    """
    t, p, c = _drop_truth_background(truth, pred, counts)
    n = int(c.sum())
    sum_ij = _sumsq(c) - n
    sum_a = _sumsq(_sizes(t, c)) - n
    sum_b = _sumsq(_sizes(p, c)) - n

    def ratio(num: float, den: float) -> float:
        return num / den if den else math.nan

    return {"adapted_rand_error": 1.0 - ratio(sum_ij, 0.5 * sum_a + 0.5 * sum_b),
            "are_precision": ratio(sum_ij, sum_a), "are_recall": ratio(sum_ij, sum_b)}


def vi_split_merge(truth: np.ndarray, pred: np.ndarray, counts: np.ndarray,
                   base: float = 2.0) -> dict[str, float]:
    """scikit-image's variation of information, in bits, the truth's background ignored.

    Parameters
    ----------
    truth, pred, counts : numpy.ndarray, shape (K,), integer
        The table (module docstring), used as :func:`adapted_rand` uses it.
    base : float, default 2
        The logarithm's base (2: bits, as scikit-image).

    Returns
    -------
    dict
        ``vi_split``: ``H(pred | truth)``, the over-segmentation (false splits);
        ``vi_merge``: ``H(truth | pred)``, the under-segmentation (false merges); ``vi``:
        their sum. ``skimage.metrics.variation_of_information(truth_image, pred_image,
        ignore_labels=(0,))`` returns ``[vi_split, vi_merge]`` in that order. Base-2 logs;
        only pixels whose truth is not 0 count. NaN when no pixel counts.

    Notes
    -----
    Meila (2007), "Comparing clusterings - an information based distance", J. Multivar.
    Anal. 98(5), as scikit-image 0.26 ``skimage/metrics/_variation_of_information.py``
    computes it: ``H(Y|X) = -sum p_ij log2(p_ij / p_i)``, ``H(X|Y) = -sum p_ij log2(p_ij / q_j)``.
    """
    t, p, c = _drop_truth_background(truth, pred, counts)
    n = float(c.sum())
    if n == 0:
        return {"vi_split": math.nan, "vi_merge": math.nan, "vi": math.nan}
    ti = np.unique(t, return_inverse=True)[1]
    pj = np.unique(p, return_inverse=True)[1]
    a = np.bincount(ti, weights=c)
    b = np.bincount(pj, weights=c)
    c = c.astype(np.float64)
    pij = c / n
    scale = 1.0 if base == 2.0 else math.log(2.0) / math.log(base)
    split = float(-np.sum(pij * np.log2(c / a[ti]))) * scale + 0.0  # no -0.0
    merge = float(-np.sum(pij * np.log2(c / b[pj]))) * scale + 0.0
    return {"vi_split": split, "vi_merge": merge, "vi": split + merge}


def object_scores(truth: np.ndarray, pred: np.ndarray, counts: np.ndarray,
                  threshold: float = 0.5) -> dict[str, Any]:
    """Object-level precision, recall and F1: a predicted object matches a true one when their
    intersection over union exceeds ``threshold``.

    Parameters
    ----------
    truth, pred, counts : numpy.ndarray, shape (K,), integer
        The contingency table of every counted pixel (truth background included, so that a
        predicted object's size counts its pixels on the truth's background).
    threshold : float, default 0.5
        IoU above which two objects match. At 0.5 or more each object matches at most one
        other (two objects each overlapping one object by more than half its union cannot
        exist), so the matching is unique without an assignment step.

    Returns
    -------
    dict
        ``objects_true``, ``objects_pred``: objects (ids != 0) in each; ``matched``: matched
        pairs (true positives); ``object_precision`` = matched / objects_pred,
        ``object_recall`` = matched / objects_true, ``object_f1`` = 2 matched /
        (objects_true + objects_pred); NaN for 0/0.

    Notes
    -----
    ``IoU_ij = n_ij / (a_i + b_j - n_ij)`` with ``a_i``, ``b_j`` the objects' sizes (the
    table's row and column sums), as the matching of the Data Science Bowl 2018 and of
    StarDist's ``matching`` (which uses the same IoU > threshold rule at 0.5).
    """
    t, p = np.asarray(truth, np.int64), np.asarray(pred, np.int64)
    c = np.asarray(counts, np.float64)
    tu, ti = np.unique(t, return_inverse=True)
    pu, pj = np.unique(p, return_inverse=True)
    a = np.bincount(ti, weights=c)[ti]
    b = np.bincount(pj, weights=c)[pj]
    both = (t != 0) & (p != 0)
    iou = c / (a + b - c)
    matched = int(np.count_nonzero(both & (iou > threshold)))
    n_true, n_pred = int(np.count_nonzero(tu)), int(np.count_nonzero(pu))

    def ratio(num: float, den: float) -> float:
        return num / den if den else math.nan

    return {"objects_true": n_true, "objects_pred": n_pred, "matched": matched,
            "object_precision": ratio(matched, n_pred), "object_recall": ratio(matched, n_true),
            "object_f1": ratio(2 * matched, n_true + n_pred)}
