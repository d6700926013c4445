"""The tilings a seam report compares and how each is measured against the reference.

The private half of :mod:`chunkseg.evaluation.seams`: the geometry of a grid's tile edges
(:func:`edge_distance`), the whole-image reference pass, the crop-only stitching, the engine's
blends, and the per-bin statistics of one method.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from .._redact import redact_text
from ..engine import predict
from ..engine.runner import reflect_index
from ..errors import ModelOutputError
from ..kernels.blend import check_model_output, labels_from_logits, run_tiles
from ..plan import TilePlan

__all__ = ["bin_labels", "edge_distance", "grid_summary", "reference_logits", "crop_only_logits",
           "engine_logits", "measure"]


def bin_labels(bins: Sequence[float]) -> tuple[str, ...]:
    """Names of the distance bins of edges ``bins``: ``("0-4", "4-8", ..., "32+")``."""
    labels = [f"{a:g}-{b:g}" for a, b in zip(bins[:-1], bins[1:])]
    return tuple(labels + [f"{bins[-1]:g}+"])


# -- geometry ---------------------------------------------------------------------------------

def tile_edges(plan: TilePlan, axis: int) -> np.ndarray:
    """All tile edges of the grid along ``axis``, inside the image or not: the coordinate of the
    first pixel after each edge (``origin_k`` and ``origin_k + T``), ascending, unique."""
    origins = plan.tile_origins()[axis]
    return np.unique(np.concatenate([origins, origins + plan.tile[axis]])).astype(np.int64)


def axis_distance(length: int, edges: np.ndarray) -> np.ndarray:
    """Per pixel of an axis, the px between it and the nearest edge (0 when it touches one)."""
    p = np.arange(length, dtype=np.int64)[:, None]
    e = edges[None, :]
    return np.where(p >= e, p - e, e - 1 - p).min(axis=1)


def edge_distance(plan: TilePlan) -> np.ndarray:
    """Distance of every pixel to the nearest tile edge of a grid, px.

    Parameters
    ----------
    plan : TilePlan
        The grid (:func:`chunkseg.plan_tiles`): tile ``k`` along an axis spans
        ``[origin_k, origin_k + T)`` (:meth:`TilePlan.tile_origins`); its two edges are the
        lines before pixel ``origin_k`` and before pixel ``origin_k + T``.

    Returns
    -------
    (H, W) ndarray of int64
        ``min(d_y, d_x)``, where ``d_y`` is the number of pixels between the pixel's row and the
        nearest horizontal tile edge (0 for a row touching an edge: for the edge before row
        ``e``, row ``p >= e`` is ``p - e`` away and row ``p < e`` is ``e - 1 - p`` away), and
        ``d_x`` the same for columns. Every tile edge of a regular grid runs across the whole
        image, so this is the distance to the nearest tile edge. Edges in the padding count
        too: the first tile of an overlapping grid starts ``overlap // 2`` px before the image,
        so the image's first row is that far from it; the naive grid's first edge is the image
        border itself (a naive patch has no context there).
    """
    h, w = plan.image_shape
    dy = axis_distance(h, tile_edges(plan, 0))
    dx = axis_distance(w, tile_edges(plan, 1))
    return np.minimum(dy[:, None], dx[None, :])


def grid_summary(plan: TilePlan) -> dict:
    """The grid a method ran on, as JSON (``grid`` of :attr:`SeamReport.methods`)."""
    return {"tile": list(plan.tile), "overlap": list(plan.overlap), "stride": list(plan.stride),
            "n_tiles": int(plan.n_tiles),
            "edges_y": tile_edges(plan, 0).tolist(),
            "edges_x": tile_edges(plan, 1).tolist()}


# -- the methods ------------------------------------------------------------------------------

def reference_logits(raw: np.ndarray, predictor, multiple: tuple[int, int],
                     margin: tuple[int, int]) -> tuple[np.ndarray, dict]:
    """The reference: one model call on the whole image, reflect-padded by ``margin`` on every
    side and after the last row and column to a multiple of ``multiple``, cropped back.

    Parameters
    ----------
    raw : (H, W, C) ndarray
    predictor : callable
        float32 ``(1, C, H', W')`` -> logits ``(1, K, H', W')``.
    multiple, margin : (int, int)

    Returns
    -------
    (K, H, W) ndarray of float32, dict
        The logits, and how they were computed (:attr:`SeamReport.reference`).

    Raises
    ------
    chunkseg.ModelOutputError
        If the model raises on the padded image, or returns a bad output.
    """

    h, w, _ = raw.shape
    extra = ((-(h + 2 * margin[0])) % multiple[0], (-(w + 2 * margin[1])) % multiple[1])
    iy = reflect_index(-margin[0], h + margin[0] + extra[0], h)
    ix = reflect_index(-margin[1], w + margin[1] + extra[1], w)
    padded = raw[iy][:, ix] if any(margin) or any(extra) else raw
    batch = np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)
    t0 = time.perf_counter()
    try:
        out = predictor(batch)
    except Exception as err:  # the model's own error: say what it was given and the fix
        msg = redact_text(" ".join(str(err).split())) or type(err).__name__
        raise ModelOutputError(
            f"`model` must accept the whole image for the reference pass; it failed on the image "
            f"reflect-padded to {batch.shape[2]} x {batch.shape[3]} px ({type(err).__name__}: "
            f"{msg}). If the model needs a height and width divisible by N, pass multiple=N "
            f"(CLI --multiple N).") from err
    logits = check_model_output(out, batch.shape)[0]
    logits = logits[:, margin[0]:margin[0] + h, margin[1]:margin[1] + w]
    info = {"method": "whole-image forward pass: one model call on the full, normalised image",
            "padding": "reflect (the engine's: numpy.pad mode='reflect'), `margin` px on every "
                       "side plus `extra` after the last row and column to reach a multiple of "
                       "`multiple`; the logits are cropped back to the image",
            "margin": list(margin), "multiple": list(multiple), "extra": list(extra),
            "padded_shape": [int(batch.shape[2]), int(batch.shape[3])],
            "seconds": time.perf_counter() - t0}
    return np.ascontiguousarray(logits), info


def crop_only_logits(raw: np.ndarray, predictor, plan: TilePlan, batch_size: int,
                     classes: int) -> np.ndarray:
    """``(K, H, W)`` float32 logits of ``raw`` ``(H, W, C)``, each pixel from the grid tile whose
    centre is nearest: the tile whose stride cell holds it (ties, possible with an odd
    overlap, go to the later tile). The tiles run through
    :func:`chunkseg.kernels.blend.run_tiles`, ``batch_size`` at a time, and must return
    ``classes`` classes."""

    h, w, _ = raw.shape
    (by, bx), (sy, sx), (ty, tx) = plan.halo_before, plan.stride, plan.tile
    py, px = plan.padded_shape
    padded = raw[reflect_index(-by, py - by, h)][:, reflect_index(-bx, px - bx, w)]
    padded = np.ascontiguousarray(padded.transpose(2, 0, 1))  # (C, P_y, P_x)
    gy, gx = plan.grid_shape
    out = np.empty((classes, gy * sy, gx * sx), np.float32)
    origins = [(i * sy, j * sx) for i in range(gy) for j in range(gx)]  # in the padded image
    for part, z in run_tiles(predictor, lambda y, x: padded[:, y:y + ty, x:x + tx], origins,
                             batch_size, classes):
        for (y, x), zt in zip(part, z):
            out[:, y:y + sy, x:x + sx] = zt[:, by:by + sy, bx:bx + sx]
    return out[:, :h, :w]


def engine_logits(raw, predictor, plan: TilePlan, window: str, batch_size: int) -> np.ndarray:
    """``(K, H, W)`` float32 logits of :func:`chunkseg.predict` on ``raw`` with the grid and
    chunks of ``plan`` and the blending ``window``."""

    ds = predict(raw, predictor, tile=plan.tile, overlap=plan.overlap, window=window,
                 chunks=plan.chunks, batch_size=batch_size, outputs="logits")
    return np.asarray(ds["logits"].data.compute(), dtype=np.float32)


def measure(logits: np.ndarray, ref: np.ndarray, ref_labels: np.ndarray, dist: np.ndarray,
            bins: tuple[float, ...]) -> tuple[dict, np.ndarray]:
    """One method's numbers against the reference.

    Parameters
    ----------
    logits, ref : (K, H, W) ndarray of float32
        The method's logits and the reference's.
    ref_labels : (H, W) ndarray
        Argmax of ``ref``.
    dist : (H, W) ndarray of int64
        :func:`edge_distance` of the method's grid.
    bins : tuple of float
        Bin edges of ``dist``; the last bin is open.

    Returns
    -------
    dict, (H, W) ndarray of float32
        ``disagreement``, ``mean_abs_logit_diff``, ``max_abs_logit_diff`` and ``bins`` (one dict
        per bin), as in :attr:`SeamReport.methods`; and ``|logits - ref|`` averaged over the
        classes.
    """

    diff = np.abs(logits - ref).mean(axis=0, dtype=np.float32)  # (H, W)
    disagree = labels_from_logits(logits) != ref_labels
    idx = (np.searchsorted(np.asarray(bins, np.float64), dist, side="right") - 1).ravel()
    nb = len(bins)
    counts = np.bincount(idx, minlength=nb)
    sums = np.bincount(idx, weights=diff.ravel().astype(np.float64), minlength=nb)
    wrong = np.bincount(idx, weights=disagree.ravel().astype(np.float64), minlength=nb)
    rows = []
    for b, label in enumerate(bin_labels(bins)):
        n = int(counts[b])
        rows.append({"range": label, "lo": bins[b], "hi": bins[b + 1] if b + 1 < nb else None,
                     "pixels": n,
                     "disagreement": float(wrong[b] / n) if n else None,
                     "mean_abs_logit_diff": float(sums[b] / n) if n else None})
    stats = {"disagreement": float(disagree.mean()),
             "mean_abs_logit_diff": float(diff.mean(dtype=np.float64)),
             "max_abs_logit_diff": float(np.abs(logits - ref).max()),
             "bins": rows}
    return stats, diff
