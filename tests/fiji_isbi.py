"""A faithful in-memory port of the ISBI 2012 challenge's V_rand and V_info after thinning, the
independent reference of ``tests/evaluation/test_evaluate_instances.py``.

Ported line by line from Fiji's Trainable_Segmentation (github.com/fiji/Trainable_Segmentation,
commit 41c7083), with its loops kept as loops (dense matrices, probabilities ``/ n``):

- ``metrics/RandError.java``: ``getForegroundRestrictedRandAfterThinningStatsN2`` (binarise,
  4-connected components of the truth, watershed of the inverted proposal) and
  ``getForegroundRestrictedRandIndexStatsN2(ShortProcessor, ShortProcessor)``;
  ``metrics/ClassificationStatistics.java`` (precision, recall, F-score).
- ``metrics/VariationOfInformation.java``: ``foregroundRestrictedScoreAfterThinningN2`` and
  ``foregroundRestrictedFscore``.
- ``utils/WatershedTransform2D.java``: ``apply`` (Vincent-Soille flooding with the global
  ``flag``, the pixel list in Java's x-major order sorted stably by value, the 4-neighbours in
  the order of ``Neighborhood2DC4``: x-1, y-1, x+1, y+1).

``Utils.connectedComponents(..., 4)`` is :func:`scipy.ndimage.label` with 4-connectivity (the
numbering does not change the scores). Images are indexed ``[y, x]`` here, Java's ``[x][y]``.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np
from scipy import ndimage

MASK, WSHED, INIT, INQUEUE = -2, 0, -1, -3


def components4(binary: np.ndarray) -> np.ndarray:
    labels, _ = ndimage.label(binary, structure=ndimage.generate_binary_structure(2, 1))
    return labels


def watershed_fiji(image: np.ndarray) -> np.ndarray:
    """``WatershedTransform2D(image, 4).apply()`` of a 2-D image (binary: 0 basins, 255 dams)."""
    h_img, w_img = image.shape
    tab = np.full((h_img, w_img), INIT, dtype=np.int64)
    current_label = 0
    flag = False
    # extractPixelValues: x outer, y inner; Collections.sort: by value, then by creation order
    records = [(float(image[y, x]), x, y) for x in range(w_img) for y in range(h_img)]
    order = sorted(range(len(records)), key=lambda k: (records[k][0], k))
    pixels = [records[k] for k in order]

    def neighbours(x, y):
        return ((x - 1, y), (x, y - 1), (x + 1, y), (x, y + 1))

    def inside(u, v):
        return 0 <= u < w_img and 0 <= v < h_img

    fifo: deque = deque()
    current = 0
    h1 = h2 = 0
    while current < len(pixels):
        h = pixels[current][0]
        for idx in range(h1, len(pixels)):
            value, x, y = pixels[idx]
            if value != h:
                h1 = idx
                break
            tab[y, x] = MASK
            for u, v in neighbours(x, y):
                if inside(u, v) and tab[v, u] >= WSHED:
                    fifo.append((x, y))
                    tab[y, x] = INQUEUE
                    break
        while fifo:
            x, y = fifo.popleft()
            for u, v in neighbours(x, y):
                if not inside(u, v):
                    continue
                if tab[v, u] > 0:
                    if tab[y, x] == INQUEUE or (tab[y, x] == WSHED and flag):
                        tab[y, x] = tab[v, u]
                    elif tab[y, x] > 0 and tab[y, x] != tab[v, u]:
                        tab[y, x] = WSHED
                        flag = False
                elif tab[v, u] == WSHED:
                    if tab[y, x] == INQUEUE:
                        tab[y, x] = WSHED
                        flag = True
                elif tab[v, u] == MASK:
                    tab[v, u] = INQUEUE
                    fifo.append((u, v))
        idx = h2
        while idx < len(pixels):
            value, x, y = pixels[idx]
            if value != h:
                h2 = idx
                break
            if tab[y, x] == MASK:
                current_label += 1
                fifo.append((x, y))
                tab[y, x] = current_label
                while fifo:
                    px, py = fifo.popleft()
                    for u, v in neighbours(px, py):
                        if inside(u, v) and tab[v, u] == MASK:
                            fifo.append((u, v))
                            tab[v, u] = current_label
            idx += 1
            current += 1
    tab[tab == INIT] = 0
    return tab


def thin(proposal_binary: np.ndarray) -> np.ndarray:
    """The proposal after thinning: watershed of the inverted binary proposal (True = cell)."""
    return watershed_fiji(np.where(proposal_binary, 0, 255))


def _tables(c1: np.ndarray, c2: np.ndarray):
    n = float(np.count_nonzero(c1))
    pij = np.zeros((int(c1.max()) + 1, int(c2.max()) + 1))
    np.add.at(pij, (c1.ravel(), c2.ravel()), 1.0)
    pij /= n
    ai = np.zeros(pij.shape[0])
    for i in range(1, pij.shape[0]):
        ai[i] = pij[i, :].sum()
    bj = np.zeros(pij.shape[1])
    for j in range(1, pij.shape[1]):
        bj[j] = pij[1:, j].sum()
    aux = float(pij[1:, 0].sum())
    return n, pij, ai, bj, aux


def rand_stats(c1: np.ndarray, c2: np.ndarray) -> dict:
    """``getForegroundRestrictedRandIndexStatsN2`` + ``ClassificationStatistics``."""
    n, pij, ai, bj, aux = _tables(c1, c2)
    sum_a2 = float(np.sum(ai * ai))
    sum_b2 = float(np.sum(bj * bj)) + aux / n
    sum_ab2 = float(np.sum(pij[1:, 1:] ** 2)) + aux / n
    n2 = n * n
    tp = n2 * sum_ab2
    fp = n2 * sum_b2 - tp
    fn = n2 * sum_a2 - tp
    precision = 1.0 if fp == 0 else tp / (tp + fp)
    recall = 1.0 if fn == 0 else tp / (tp + fn)
    f = 2.0 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"v_rand": f, "v_rand_merge": precision, "v_rand_split": recall}


def info_stats(c1: np.ndarray, c2: np.ndarray) -> dict:
    """``foregroundRestrictedFscore`` (precision C(A|B), recall C(B|A))."""
    n, pij, ai, bj, aux = _tables(c1, c2)
    sum_a = sum(a * math.log(a) for a in ai if a != 0)
    sum_b = sum(b * math.log(b) for b in bj if b != 0) - aux * math.log(n)
    sum_ab = sum(p * math.log(p) for p in pij[1:, 1:].ravel() if p != 0) - aux * math.log(n)
    ha, hb = -sum_a, -sum_b
    hab, hba = sum_b - sum_ab, sum_a - sum_ab
    prec = (ha - hab) / ha if ha != 0 else 0.0
    rec = (hb - hba) / hb if hb != 0 else 1.0
    if ha == 0:
        prec, rec = 0.0, 1.0
    if hb == 0:
        prec, rec = 1.0, 0.0
    f = 2.0 * prec * rec / (prec + rec) if prec + rec else math.nan  # Java: 0.0 / 0.0
    return {"v_info": f, "v_info_merge": prec, "v_info_split": rec}


def isbi_scores(truth_binary: np.ndarray, proposal_binary: np.ndarray) -> dict:
    """V_rand and V_info after thinning of a binary truth and proposal (True = cell), with
    the thinned proposal and the truth's components."""
    c1 = components4(truth_binary)
    c2 = thin(proposal_binary)
    return {**rand_stats(c1, c2), **info_stats(c1, c2), "truth": c1, "thinned": c2}
