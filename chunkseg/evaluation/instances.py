"""Out-of-core evaluation of an instance segmentation: ``chunkseg evaluate --instances``.

The Rand and information-theoretic scores are sums over the contingency table of the true and
predicted objects, so the table is accumulated chunk by chunk
(:func:`chunkseg.evaluation.contingency.contingency_table_dask`: one Dask task per chunk, a tree
merge of the small per-chunk tables) and every score is computed from it by
:mod:`chunkseg.evaluation.instance_metrics`. A semantic ground truth (the ISBI 2012 membrane
maps) is turned into objects out of core by the connected-component kernels of
:func:`chunkseg.label`; the challenge's border thinning runs chunk by chunk with a halo.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from .._check import is_int
from .._redact import secrets_of
from ..errors import InvalidTypeError, InvalidValueError
from ..scheduling import compute
from ._labels import open_inputs
from .confusion import check_ignore
from .contingency import contingency_table_dask, thin_boundaries, truth_components
from .instance_metrics import adapted_rand, object_scores, v_info, v_rand, vi_split_merge

__all__ = ["evaluate_instances", "format_instance_report", "INSTANCE_SCORES"]

INSTANCE_SCORES = ("v_rand", "v_rand_split", "v_rand_merge", "v_info", "v_info_split",
                   "v_info_merge", "adapted_rand_error", "are_precision", "are_recall",
                   "vi", "vi_split", "vi_merge", "object_precision", "object_recall",
                   "object_f1")
"""The float scores of :func:`evaluate_instances`, in the order the report prints them."""


def _truth_values(truth_class: Any) -> list[int] | None:
    if truth_class is None:
        return None
    values = [truth_class] if is_int(truth_class) else truth_class
    if not isinstance(values, Sequence) or isinstance(values, str | bytes) or not values or \
            not all(is_int(v) for v in values):
        raise InvalidTypeError(
            "`truth_class` must be None (the truth is already an instance image), an int "
            f"stored value of the object class (255 for the ISBI 2012 cells) or a non-empty "
            f"sequence of them. Got {truth_class!r}.")
    return [int(v) for v in values]


def evaluate_instances(
    pred: Any,
    truth: Any,
    *,
    truth_class: int | Sequence[int] | None = None,
    connectivity: int = 1,
    pred_variable: str = "instances",
    truth_array: str | None = None,
    mask: Any = None,
    ignore: int | Sequence[int] | None = None,
    thin: bool = True,
    halo: int = 64,
    iou_threshold: float = 0.5,
    storage_options: Mapping[str, Any] | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Compare an instance segmentation with ground truth, out of core: the ISBI 2012 V_rand and
    V_info, adapted Rand error, variation of information and object precision/recall/F1.

    Parameters
    ----------
    pred : str, os.PathLike, zarr.Group, xarray.Dataset or anything :func:`chunkseg.open_image` opens
        The predicted objects ``(Y, X)``, integer ids, 0 = background: a chunkseg output
        whose ``instances`` :func:`chunkseg.label` wrote (also in the ``ome=True`` layout), or
        any integer label image (Zarr, NGFF, TIFF, PNG, ``.npy``, numpy/dask array).
    truth : same types as ``pred``
        The ground truth ``(Y, X)``, integer: an instance image (``truth_class=None``; 0 is
        the background) or a semantic map whose objects are the connected components of the
        pixels with value ``truth_class`` (the ISBI 2012 labels: ``truth_class=255``).
    truth_class : int or sequence of int, optional
        Stored truth value(s) of the object class; None (default): ``truth`` already holds
        object ids.
    connectivity : {1, 2}, default 1
        The connectivity of the truth's components when ``truth_class`` is given (1: edges,
        the challenge's 4-connectivity).
    pred_variable : str, default "instances"
        The variable of a chunkseg output ``pred`` (the array :func:`chunkseg.label` wrote).
    truth_array : str, optional
        The array of a Zarr group ``truth``.
    mask : str, os.PathLike or array-like of shape (Y, X), optional
        Only pixels where the mask is nonzero (True) count.
    ignore : int or sequence of int, optional
        Truth values (stored values, before ``truth_class``) whose pixels count nowhere.
    thin : bool, default True
        Thin the prediction's background to 1-pixel lines before V_rand and V_info, as the
        challenge does (:func:`chunkseg.evaluation.contingency.thin_boundaries`). The other
        scores always use the prediction as given.
    halo : int, default 64
        Context, pixels, read around each chunk for the thinning.
    iou_threshold : float, default 0.5
        Objects match when their IoU exceeds it; in [0.5, 1).
    storage_options : mapping, optional
        fsspec options for the inputs given as URLs.
    scheduler, workers, progress
        Where the graph runs, as :func:`chunkseg.predict_to_zarr` (default: dask's threads).

    Returns
    -------
    dict
        ``v_rand``, ``v_rand_split``, ``v_rand_merge`` and ``v_info``, ``v_info_split``,
        ``v_info_merge``: the ISBI 2012 scores after thinning
        (:func:`~chunkseg.evaluation.instance_metrics.v_rand`,
        :func:`~chunkseg.evaluation.instance_metrics.v_info`; 1 is perfect).
        ``adapted_rand_error``, ``are_precision``, ``are_recall``: as
        ``skimage.metrics.adapted_rand_error(truth, pred, ignore_labels=(0,))`` (0 is perfect).
        ``vi_split`` = H(pred | truth), ``vi_merge`` = H(truth | pred), ``vi``, in bits, as
        ``skimage.metrics.variation_of_information(truth, pred, ignore_labels=(0,))``.
        ``objects_true``, ``objects_pred``, ``matched``, ``object_precision``,
        ``object_recall``, ``object_f1`` at ``iou_threshold``.
        ``pixels``: counted pixels; ``foreground``: those on a true object; ``shape``;
        ``iou_threshold``, ``thinned``, ``halo``; ``pred``, ``truth``: where the inputs came from.

    Raises
    ------
    chunkseg.errors.NotFoundError
        If a path does not exist or a chunkseg output lacks ``pred_variable``.
    chunkseg.errors.InvalidValueError
        If the shapes differ, an input has several channels or a float dtype, an option is out
        of range, or (while computing) an id is negative or too large.
    chunkseg.errors.InvalidTypeError
        If an option has the wrong type.

    Warns
    -----
    RuntimeWarning
        If the truth has no object pixel among the counted pixels (the scores are NaN).

    Notes
    -----
    Definitions and sources are in :mod:`chunkseg.evaluation.instance_metrics`. The challenge
    ranked by the best V_rand / V_info over 11 thresholds of a submitted probability map
    (Fiji's ``getMaximalVRandAfterThinning(0, 1, 0.1)``); here the segmentation is given, so
    there is no threshold sweep. The thinning is scikit-image's watershed per chunk with a halo,
    not Fiji's own flooding (see :func:`chunkseg.evaluation.contingency.thin_boundaries`):
    measured against an in-memory port of Fiji's code, V_rand and V_info differ by at most
    2.2e-4 on ISBI sections 20-24 (the shipped model, 256-px chunks, halo 64) and by less than
    1e-3 on the tested 128 x 160 crops (whole image and 32-px chunks); the other scores do not
    depend on the chunking at all. Passes over the data: one for the truth's components (when
    ``truth_class`` is given), then one that counts the plain and the thinned tables together.

    Examples
    --------
    >>> import numpy as np
    >>> t = np.array([[1, 1, 0, 2, 2]])
    >>> r = evaluate_instances(np.array([[3, 3, 0, 3, 3]]), t, thin=False)
    >>> r["vi_split"], r["vi_merge"], r["objects_true"], r["matched"]
    (0.0, 1.0, 2, 0)
    """
    values = _truth_values(truth_class)
    ignore_values = check_ignore(ignore)
    if not isinstance(thin, bool):
        raise InvalidTypeError(f"`thin` must be True or False. Got {thin!r}.")
    if not is_int(halo) or halo < 0:
        raise InvalidValueError(f"`halo` must be an int >= 0 (pixels). Got {halo!r}; 64 is "
                                "the default.")
    if isinstance(iou_threshold, bool) or not isinstance(iou_threshold, int | float) or \
            not 0.5 <= float(iou_threshold) < 1.0:
        raise InvalidValueError(
            f"`iou_threshold` must be a number in [0.5, 1) (matches are unique from 0.5 on). "
            f"Got {iou_threshold!r}.")
    p, _, pred_source, t, truth_source, m = open_inputs(
        pred, truth, mask, pred_variable=pred_variable, default="instances",
        truth_array=truth_array, storage_options=storage_options)
    if p.shape != t.shape:
        raise InvalidValueError(f"`pred` and `truth` must have the same shape (y, x). Got pred "
                                f"{tuple(p.shape)}, truth {tuple(t.shape)}; crop or resample "
                                "them to one grid first.")
    secrets = secrets_of(storage_options)
    if values is not None:
        if ignore_values is not None:  # ignored pixels are not objects, and are dropped below
            values = [v for v in values if v not in set(ignore_values.tolist())]
        objects, _ = truth_components(t, values, connectivity=connectivity,
                                      scheduler=scheduler, workers=workers, progress=progress,
                                      secrets=secrets)
        if ignore_values is not None:  # keep the ignored pixels out of the counts
            from dask.array import isin

            keep = ~isin(t, ignore_values)
            m = keep if m is None else keep & (m != 0)
        t, ignore_values = objects, None
    tables = [contingency_table_dask(p, t, mask=m, ignore=ignore_values)]
    if thin:
        tables.append(contingency_table_dask(thin_boundaries(p, halo), t, mask=m,
                                             ignore=ignore_values))
    done = compute(*tables, scheduler=scheduler, workers=workers, progress=progress,
                   label="evaluating: contingency tables", secrets=secrets)
    plain = done[0]
    thinned = done[-1]
    foreground = int(plain[2][plain[0] != 0].sum())
    if foreground == 0:
        warnings.warn("the ground truth has no object pixel among the counted pixels; the "
                      "scores are NaN.", RuntimeWarning, stacklevel=2)
    shape = tuple(int(s) for s in p.shape)
    return {
        **v_rand(*thinned),
        **v_info(*thinned),
        **adapted_rand(*plain),
        **vi_split_merge(*plain),
        **object_scores(*plain, threshold=float(iou_threshold)),
        "pixels": int(plain[2].sum()),
        "foreground": foreground,
        "shape": shape,
        "iou_threshold": float(iou_threshold),
        "thinned": thin,
        "halo": int(halo) if thin else 0,
        "pred": pred_source,
        "truth": truth_source,
    }


_LABELS = {
    "v_rand": "V_rand (ISBI, thinned)", "v_rand_split": "  split", "v_rand_merge": "  merge",
    "v_info": "V_info (ISBI, thinned)", "v_info_split": "  split", "v_info_merge": "  merge",
    "adapted_rand_error": "adapted Rand error", "are_precision": "  precision",
    "are_recall": "  recall", "vi": "VI (bits)", "vi_split": "  split H(pred|truth)",
    "vi_merge": "  merge H(truth|pred)", "object_precision": "object precision",
    "object_recall": "object recall", "object_f1": "object F1",
}


def format_instance_report(result: Mapping[str, Any]) -> str:
    """:func:`evaluate_instances`' result as a readable table."""
    lines = [
        f"pred   {result['pred']}",
        f"truth  {result['truth']}",
        f"pixels {result['pixels']} counted ({result['foreground']} on true objects) of "
        f"{result['shape'][0]} x {result['shape'][1]}",
        f"objects {result['objects_true']} true, {result['objects_pred']} predicted, "
        f"{result['matched']} matched (IoU > {result['iou_threshold']:g})",
        "",
    ]
    for key in INSTANCE_SCORES:
        label = _LABELS[key]
        if key.startswith("v_") and not result["thinned"]:
            label = label.replace("thinned", "not thinned")
        lines.append(f"{label:<24}{result[key]:8.4f}")
    return "\n".join(lines)
