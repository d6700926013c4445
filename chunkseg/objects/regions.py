"""The region table of an instances array: one row per object, measured chunk by chunk.

:func:`regions` measures every object of an ``instances`` array (from
:func:`chunkseg.label` or :func:`chunkseg.predict_instances`) chunk by chunk (area, centroid,
bounding box, mean intensity and probability), merges the parts of objects that chunks cut,
and writes one Parquet table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import dask
import numpy as np

from .. import _ome
from .._redact import secrets_of
from ..engine.runner import BlockReader
from ..errors import InvalidValueError, NotFoundError, OutputExistsError, OutputOverlapError
from ..io import open_image
from ..kernels import components as kern
from ..outputs._identity import overlaps
from ..outputs._lifecycle import replacing
from ..outputs._manifest import open_output_group
from ..outputs._target import describe_location
from ..scheduling import compute, open_client

__all__ = ["regions", "REGION_COLUMNS"]

REGION_COLUMNS = ("label", "class", "area", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0",
                  "bbox_y1", "bbox_x1")
"""Columns :func:`regions` always writes (``bbox_*1`` exclusive, as scikit-image's bbox)."""


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
    storage_options: dict | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
):
    """Measure every object of an instances array and write one Parquet table.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        An output holding ``name`` (from :func:`label` or :func:`chunkseg.predict_instances`).
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
    storage_options, scheduler, workers, progress
        As :func:`label`.

    Returns
    -------
    pandas.DataFrame
        One row per object, sorted by ``label``: :data:`REGION_COLUMNS` (centroids in pixels,
        the mean of the pixel coordinates; bounding boxes half-open, as
        :func:`skimage.measure.regionprops_table`), ``mean_probability`` of the object's class
        where the store holds ``probabilities``, and the optional columns above. Equal to
        ``regionprops_table`` on the whole image (tested).

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

    Notes
    -----
    One task per chunk measures the parts of the objects in it (O(objects in the chunk));
    the client merges the parts of objects that chunk borders cut (sums, minima and maxima
    per id, :meth:`pandas.DataFrame.groupby`), so it holds O(objects) rows, never pixels.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

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
    found = _ome.find(group, name)
    if found is None:
        raise NotFoundError(
            f"`name` {name!r} must be an array of {describe_location(store)!r}. Got none; make "
            "it with chunkseg.instances (CLI: chunkseg label)."
        )
    ids = group[found]
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
        arr = open_image(image)
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
    pa_table = pa.Table.from_pandas(out, preserve_index=False)
    meta = {b"chunkseg": json.dumps({"store": describe_location(store), "name": name,
                                     "unit": unit, "pixel_size": list(scale) if scale else None
                                     }).encode()}
    pa_table = pa_table.replace_schema_metadata({**(pa_table.schema.metadata or {}), **meta})
    with replacing(path) as part:  # an earlier table stays whole until the new one is
        pq.write_table(pa_table, part)
    return out
