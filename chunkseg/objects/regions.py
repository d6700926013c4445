"""The region table of an instances array: one row per object, measured chunk by chunk.

:func:`regions` measures every object of an ``instances`` array (from
:func:`chunkseg.label` or :func:`chunkseg.predict_instances`) chunk by chunk (area, centroid,
bounding box, mean intensity and probability), merges the parts of objects that chunks cut,
then measures each object's shape (perimeter, eccentricity, solidity) on its whole bounding box
in a second pass, and writes one Parquet table.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

from .. import _ome
from .._check import parse_planes, positive_int
from .._redact import secrets_of
from ..engine.runner import BlockReader
from ..errors import InvalidValueError, NotFoundError, OutputExistsError, OutputOverlapError
from ..io import open_image
from ..kernels import components as kern
from ..outputs._identity import overlaps
from ..outputs._lifecycle import replacing
from ..outputs._manifest import open_output_group, refuse_stack
from ..outputs._target import describe_location
from ..scheduling import compute, open_client

__all__ = ["regions", "REGION_COLUMNS", "SHAPE_COLUMNS", "MAX_OBJECT_PIXELS"]

REGION_COLUMNS = ("label", "class", "area", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0",
                  "bbox_y1", "bbox_x1")
"""Columns :func:`regions` always writes (``bbox_*1`` exclusive, as scikit-image's bbox)."""

SHAPE_COLUMNS = ("perimeter", "eccentricity", "solidity")
"""The shape columns :func:`regions` adds with ``shape=True`` (its default), after the others:
scikit-image's :func:`~skimage.measure.regionprops` properties of these names, in pixels
(NaN for an object whose bounding box is over ``max_object_pixels``). Not part of
:data:`REGION_COLUMNS`, the columns every table has."""

MAX_OBJECT_PIXELS = 2**22
"""Default ``max_object_pixels`` of :func:`regions`: the largest bounding box (height x width,
4194304 px, e.g. 2048 x 2048) whose shape is measured; the box is held in memory whole."""

_SHAPE_PROPERTIES = ("label",) + SHAPE_COLUMNS


def _region_task(ids_array, ys, xs, image, prob, cls_of) -> dict:
    """Partial measurements of the objects in one chunk (parts of cut objects)."""
    from scipy import ndimage

    ids = np.asarray(ids_array[ys[0]:ys[1], xs[0]:xs[1]])
    uniq, local = np.unique(ids, return_inverse=True)
    local = local.reshape(ids.shape).astype(np.int32)
    if uniq[0] == 0:
        uniq = uniq[1:]
    else:
        local += 1
    m = len(uniq)
    part: dict[str, np.ndarray] = {"label": uniq.astype(np.int64)}
    if m == 0:
        return part
    flat = local.ravel()
    yy, xx = np.indices(ids.shape)
    part["area"] = np.bincount(flat, minlength=m + 1)[1:].astype(np.int64)
    part["sum_y"] = np.bincount(flat, weights=(yy + ys[0]).ravel(), minlength=m + 1)[1:]
    part["sum_x"] = np.bincount(flat, weights=(xx + xs[0]).ravel(), minlength=m + 1)[1:]
    boxes = ndimage.find_objects(local, max_label=m)
    part["bbox_y0"] = np.array([b[0].start + ys[0] for b in boxes], np.int64)
    part["bbox_x0"] = np.array([b[1].start + xs[0] for b in boxes], np.int64)
    part["bbox_y1"] = np.array([b[0].stop + ys[0] for b in boxes], np.int64)
    part["bbox_x1"] = np.array([b[1].stop + xs[0] for b in boxes], np.int64)
    if image is not None:
        block = image(ys, xs)  # (C, h, w)
        for c in range(block.shape[0]):
            part[f"sum_intensity_{c}"] = np.bincount(
                flat, weights=block[c].astype(np.float64).ravel(), minlength=m + 1)[1:]
    if prob is not None:
        p = np.asarray(prob[cls_of, ys[0]:ys[1], xs[0]:xs[1]], dtype=np.float64)
        part["sum_probability"] = np.bincount(flat, weights=p.ravel(), minlength=m + 1)[1:]
    return part


def _shape_props(window: np.ndarray, keep: np.ndarray) -> dict:
    """``regionprops_table`` of the objects ``keep`` in ``window`` (ids), the others set to 0:
    each region is the object's bounding box crop ``window[bbox] == label``, as on the whole
    image when the window holds the object's whole bounding box."""
    from skimage.measure import regionprops_table

    lab = np.where(np.isin(window, keep), window, 0).astype(np.int64)
    return regionprops_table(lab, properties=_SHAPE_PROPERTIES)


def _shape_task(ids_array, ys, xs, labels: np.ndarray, boxes: np.ndarray) -> dict:
    """The shape of the objects one chunk owns (their bounding box starts in it; ``boxes``:
    ``(n, 4)`` global ``y0, x0, y1, x1``): those within twice the chunk's size from its
    start from one window, the union of their boxes (at most 4 chunks); each other from its
    own box."""
    part: dict[str, list] = {c: [] for c in _SHAPE_PROPERTIES}
    if not len(labels):
        return {c: np.zeros(0) for c in _SHAPE_PROPERTIES}
    near = (boxes[:, 2] <= ys[0] + 2 * (ys[1] - ys[0])) & (
        boxes[:, 3] <= xs[0] + 2 * (xs[1] - xs[0]))
    groups = []
    if near.any():
        y1, x1 = boxes[near, 2].max(), boxes[near, 3].max()
        groups.append(((ys[0], xs[0], y1, x1), labels[near]))
    groups += [(tuple(b), labels[i:i + 1]) for i, b in zip(np.flatnonzero(~near), boxes[~near])]
    for (y0, x0, y1, x1), keep in groups:
        props = _shape_props(np.asarray(ids_array[y0:y1, x0:x1]), keep)
        for c in _SHAPE_PROPERTIES:
            part[c].extend(props[c])
    return {c: np.asarray(v) for c, v in part.items()}


def _shapes(ids, df, ys_: Sequence, xs_: Sequence, max_object_pixels: int, sched,
            progress: bool, secrets):
    """The :data:`SHAPE_COLUMNS` of every object of ``df`` (merged bounding boxes), in its
    order: one task per chunk measures the objects whose box starts in it, each on its whole
    box (objects over ``max_object_pixels`` are NaN, with a warning)."""
    import pandas as pd

    n = len(df)
    labels = df["label"].to_numpy(np.int64) if n else np.zeros(0, np.int64)
    boxes = (df[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]].to_numpy(np.int64) if n
             else np.zeros((0, 4), np.int64))
    size = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    big = size > max_object_pixels
    if big.any():
        worst = int(np.argmax(size))
        warnings.warn(
            f"regions: {int(big.sum())} object(s) have a bounding box over `max_object_pixels` "
            f"= {max_object_pixels} pixels (the largest, label {int(labels[worst])}, "
            f"{int(boxes[worst, 2] - boxes[worst, 0])} x {int(boxes[worst, 3] - boxes[worst, 1])}"
            f"); their {', '.join(SHAPE_COLUMNS)} are NaN. Raise `max_object_pixels` (CLI: "
            "--max-object-pixels) to measure "
            "them (each box is held in memory whole).", stacklevel=3)
    jobs = []
    for ys in ys_:
        for xs in xs_:
            mine = (~big & (boxes[:, 0] >= ys[0]) & (boxes[:, 0] < ys[1])
                    & (boxes[:, 1] >= xs[0]) & (boxes[:, 1] < xs[1]))
            if mine.any():
                jobs.append(dask.delayed(_shape_task, pure=False)(ids, ys, xs, labels[mine],
                                                                  boxes[mine]))
    parts = compute(*jobs, scheduler=sched, progress=progress, secrets=secrets) if jobs else ()
    shapes = pd.DataFrame({c: pd.Series(dtype=np.float64) for c in SHAPE_COLUMNS},
                          index=pd.Index(labels, name="label"))
    for part in parts:
        shapes.loc[part["label"].astype(np.int64), list(SHAPE_COLUMNS)] = np.stack(
            [part[c] for c in SHAPE_COLUMNS], axis=1)
    return shapes


def _merge_parts(parts: Sequence[dict]):
    import pandas as pd

    frames = [pd.DataFrame(p) for p in parts if len(p["label"])]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="int64") for c in ("label", "area")})
    df = pd.concat(frames, ignore_index=True)
    how = {c: ("min" if c in ("bbox_y0", "bbox_x0") else "max" if c in ("bbox_y1", "bbox_x1")
               else "sum") for c in df.columns if c != "label"}
    return df.groupby("label", sort=True).agg(how).reset_index()


def regions(
    store: Any,
    table: Any,
    *,
    name: str = "instances",
    image: Any = None,
    pixel_size: float | tuple[float, float] | None = None,
    unit: str = "micrometer",
    overwrite: bool = False,
    shape: bool = True,
    max_object_pixels: int = MAX_OBJECT_PIXELS,
    storage_options: dict | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
):
    """Measure every object of an instances array and write one Parquet table.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        An output holding ``name`` (from :func:`chunkseg.label` or
        :func:`chunkseg.predict_instances`).
    table : str or os.PathLike
        The Parquet file to write (pyarrow); read it with ``pandas.read_parquet`` or
        ``dask.dataframe.read_parquet``.
    name : str, default "instances"
    image : optional
        The input image (anything :func:`chunkseg.open_image` takes, same height and width):
        adds ``mean_intensity`` (one column per channel, ``mean_intensity_{c}`` with several).
    pixel_size : float or (float, float), optional
        Pixel size ``(y, x)`` in ``unit``: adds ``area_physical`` (``unit``^2) and
        ``centroid_y_physical`` / ``centroid_x_physical``.
    unit : str, default "micrometer"
    overwrite : bool, default False
        Replace an existing ``table`` file.
    shape : bool, default True
        Add :data:`SHAPE_COLUMNS`: ``perimeter`` (px, scikit-image's 4-connected contour
        length), ``eccentricity`` (of the ellipse of the same second moments, 0 for a disc, to
        1) and ``solidity`` (area / convex hull area), as
        :func:`skimage.measure.regionprops` measures them on the object's whole bounding box.
    max_object_pixels : int, default :data:`MAX_OBJECT_PIXELS` (2**22)
        Largest bounding box (height x width, px) whose shape is measured: the box of ids is
        held in memory (8 bytes a pixel, a few times over while measured). Larger objects get
        NaN shape columns, and a warning says how many and the largest.
    storage_options, scheduler, workers, progress
        As :func:`chunkseg.label`.

    Returns
    -------
    pandas.DataFrame
        One row per object, sorted by ``label``: :data:`REGION_COLUMNS` (centroids in pixels,
        the mean of the pixel coordinates; bounding boxes half-open, as
        :func:`skimage.measure.regionprops_table`), ``mean_probability`` of the object's class
        where the store holds ``probabilities``, the optional columns above, and last
        :data:`SHAPE_COLUMNS` (with ``shape``). Equal to ``regionprops_table`` on the whole
        image (tested, also the shape columns, for objects cut by chunk borders).

    Raises
    ------
    chunkseg.errors.NotFoundError
        If ``store`` has no group or no array ``name``.
    chunkseg.errors.OutputExistsError
        If ``table`` exists and ``overwrite`` is False.
    chunkseg.errors.OutputOverlapError
        If ``table`` is, contains or lies inside ``store`` or a path ``image`` (even with
        ``overwrite``).
    chunkseg.errors.InvalidValueError
        If ``image`` does not have the output's height and width, or ``pixel_size`` is not
        positive.
    chunkseg.errors.InvalidTypeError, chunkseg.errors.InvalidValueError
        If ``max_object_pixels`` is not a positive int.

    Notes
    -----
    One task per chunk measures the parts of the objects in it (O(objects in the chunk));
    the client merges the parts of objects that chunk borders cut (sums, minima and maxima
    per id, :meth:`pandas.DataFrame.groupby`), so it holds O(objects) rows, never pixels.

    The shape needs each object whole, which chunks cut, so it takes a second pass once the
    first has given every object's bounding box: one task per chunk measures the objects
    whose bounding box *starts* in that chunk (each object has one owner), reading the window
    of ``name`` that covers their boxes and running :func:`skimage.measure.regionprops_table`
    on it, the other objects' ids set to 0, so each region is ``ids[bbox] == label``, exactly
    what scikit-image measures on the whole image. Objects are assumed small next to the
    image: a task holds the union of the boxes that end within twice the chunk's size from
    its start (at most 2 x 2 chunks), and each longer object's own box, one at a time, up to
    ``max_object_pixels``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    max_object_pixels = positive_int(max_object_pixels, "max_object_pixels",
                                     "e.g. 2**22 (a 2048 x 2048 box).")
    path = os.fspath(table)
    for what, other in (("store", store), ("image", image)):
        if overlaps(other, path):  # never write the table over or into the data it measures
            raise OutputOverlapError(
                f"`table` must not be, contain or lie inside the `{what}`. Got table {path!r} "
                f"for {what} {describe_location(other)!r}. Write the table elsewhere."
            )
    if os.path.exists(path) and not overwrite:
        raise OutputExistsError(
            f"`table` {path!r} already exists. Pass `overwrite=True` to replace it, or choose "
            "another path."
        )
    if os.path.isdir(path):
        raise OutputExistsError(f"`table` {path!r} is a folder; chunkseg writes one file there. "
                                "Choose a file path.")
    group = open_output_group(store, storage_options=storage_options, mode="r")
    refuse_stack(group, describe_location(store), "store", "chunkseg.regions")
    found = _ome.find(group, name)
    if found is None:
        raise NotFoundError(
            f"`name` {name!r} must be an array of {describe_location(store)!r}. Got none; make "
            "it with chunkseg.instances (CLI: chunkseg label)."
        )
    ids = _ome.class_labels(group[found])  # class labels as class indices; ids as they are
    height, width = ids.shape
    scale = None
    if pixel_size is not None:
        scale = (tuple(float(v) for v in pixel_size) if isinstance(pixel_size, Sequence)
                 else (float(pixel_size), float(pixel_size)))
        if len(scale) != 2 or min(scale) <= 0:
            raise InvalidValueError(
                f"`pixel_size` must be one positive number or (y, x). Got {pixel_size!r}."
            )
    reader = None
    if image is not None:
        # a plane of a stack: read at the planes the output was predicted from (--planes)
        arr = open_image(image, isel=parse_planes(group.attrs.get("planes")))
        if arr.shape[:2] != (height, width):
            raise InvalidValueError(
                f"`image` must have the output's height and width {(height, width)}. Got "
                f"{arr.shape[:2]}."
            )
        reader = BlockReader(arr.data, arr.encoding.get("chunkseg_reader"))
    cls_of = ids.attrs.get("class")
    prob = group["probabilities"] if ("probabilities" in group and cls_of is not None) else None
    ys_, xs_ = kern.block_grid((kern.axis_chunks(height, ids.chunks[0]),
                                kern.axis_chunks(width, ids.chunks[1])))
    with open_client(scheduler, workers) as client:
        sched = scheduler if client is None else client
        jobs = [dask.delayed(_region_task, pure=False)(ids, ys, xs, reader, prob, cls_of)
                for ys in ys_ for xs in xs_]
        parts = compute(*jobs, scheduler=sched, progress=progress, label="measuring regions",
                        secrets=secrets_of(storage_options))
        df = _merge_parts(parts)
        shapes = _shapes(ids, df, ys_, xs_, max_object_pixels, sched, progress,
                         secrets_of(storage_options)) if shape else None
    out = df[["label"]].copy()
    out["class"] = -1 if cls_of is None else int(cls_of)
    out["area"] = df["area"]
    if len(df) and "sum_y" in df:
        out["centroid_y"] = df["sum_y"] / df["area"]
        out["centroid_x"] = df["sum_x"] / df["area"]
        for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"):
            out[c] = df[c]
    else:
        for c in REGION_COLUMNS[3:]:
            out[c] = np.zeros(0, np.float64 if c.startswith("centroid") else np.int64)
    channels = sorted(c for c in df.columns if c.startswith("sum_intensity_"))
    for c in channels:
        col = "mean_intensity" if len(channels) == 1 else f"mean_{c[4:]}"
        out[col] = df[c] / df["area"]
    if "sum_probability" in df:
        out["mean_probability"] = df["sum_probability"] / df["area"]
    if scale is not None:
        out["area_physical"] = out["area"] * scale[0] * scale[1]
        out["centroid_y_physical"] = out["centroid_y"] * scale[0]
        out["centroid_x_physical"] = out["centroid_x"] * scale[1]
    if shapes is not None:
        for c in SHAPE_COLUMNS:
            out[c] = shapes[c].to_numpy(np.float64)
    pa_table = pa.Table.from_pandas(out, preserve_index=False)
    meta = {b"chunkseg": json.dumps({"store": describe_location(store), "name": name,
                                     "unit": unit, "pixel_size": list(scale) if scale else None
                                     }).encode()}
    pa_table = pa_table.replace_schema_metadata({**(pa_table.schema.metadata or {}), **meta})
    with replacing(path) as part:  # an earlier table stays whole until the new one is
        pq.write_table(pa_table, part)
    return out
