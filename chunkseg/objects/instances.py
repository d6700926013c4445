"""Objects of a written output: global instance ids across chunks, and their region table.

:func:`label` labels the connected components of one class of a :func:`predict_to_zarr`
output (its ``labels``, or a thresholded probability) with one id per object across the whole
image, and writes them to the same group as ``instances`` (the kernels and the method are in
:mod:`chunkseg.kernels.components`). :func:`regions` measures every object of an ``instances`` array
chunk by chunk (area, centroid, bounding box, mean intensity and probability), merges the parts
of objects that chunks cut, and writes one Parquet table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from zarr.codecs import ZstdCodec

from .. import _ome
from .._check import class_index_arg
from .._redact import secrets_of
from ..engine.runner import BlockReader
from ..errors import (
    InvalidValueError,
    NotFoundError,
    OutputExistsError,
    OutputOverlapError,
)
from ..io import open_image
from ..kernels import components as kern
from ..outputs import _pyramid
from ..outputs._arrays import ArrayWriter, create_array
from ..outputs._identity import overlaps
from ..outputs._lifecycle import leased, replacing
from ..outputs._manifest import _so, consolidate, open_output_group
from ..outputs._ownership import require_group
from ..outputs._target import describe_location
from ..outputs._variables import class_names
from ..scheduling import compute, open_client
from .watershed import SCRATCH_SUFFIXES, WatershedSettings, watershed_lookup

__all__ = ["label", "regions", "REGION_COLUMNS"]

_RESERVED = ("logits", "probabilities", "labels", "chunkseg", "class", "y", "x")

REGION_COLUMNS = ("label", "class", "area", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0",
                  "bbox_y1", "bbox_x1")
"""Columns :func:`regions` always writes (``bbox_*1`` exclusive, as scikit-image's bbox)."""


def _open_group(store: Any, storage_options, mode: str):
    return open_output_group(store, storage_options=storage_options, mode=mode)


def _check_complete(group, store) -> None:
    if group.attrs.get("complete") is not True:
        raise InvalidValueError(
            f"`store` must hold a finished run. Got {describe_location(store)!r}, which is "
            "incomplete; finish it first with predict_to_zarr(..., resume=True) (CLI: --resume)."
        )


class _Foreground:
    """Reads one block of the foreground: ``labels == cls`` or ``probabilities[cls] >= t``."""

    def __init__(self, array, cls: int, threshold: float | None):
        self.array = array
        self.cls = cls
        self.threshold = threshold

    def __call__(self, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
        if self.threshold is None:
            return np.asarray(self.array[ys[0]:ys[1], xs[0]:xs[1]]) == self.cls
        return np.asarray(self.array[self.cls, ys[0]:ys[1], xs[0]:xs[1]]) >= self.threshold


def _summary_task(read: _Foreground, ys, xs, connectivity: int, width: int):
    labels, n = kern.label_block(read(ys, xs), connectivity)
    return kern.summarise_block(labels, n, (ys[0], xs[0]), width)


class _Components:
    """One chunk's global component ids: label it again, map through its lookup table."""

    def __init__(self, read: _Foreground, connectivity: int, lookups: dict):
        self.read = read
        self.connectivity = connectivity
        self.lookups = lookups

    def __call__(self, iy: int, ix: int, ys, xs) -> np.ndarray:
        labels, _ = kern.label_block(self.read(ys, xs), self.connectivity)
        return self.lookups[(iy, ix)][labels]


def _relabel_task(block, iy: int, ix: int, ys, xs, writer, what) -> int:
    writer.write((slice(*ys), slice(*xs)), block(iy, ix, ys, xs).astype(writer.dtype), what)
    return 1


@leased("chunkseg label")
def label(
    store: Any,
    *,
    cls: int | str | None = None,
    threshold: float | None = None,
    connectivity: int = 1,
    method: str = "components",
    seed_threshold: float = 0.98,
    min_seed_size: int = 10,
    boundary_weight: float = 10.0,
    max_cost: float = 32.0,
    merge_threshold: float | None = None,
    agglomeration: str = "threshold",
    name: str = "instances",
    overwrite: bool = False,
    storage_options: dict | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
):
    """Objects of one class of a written output, one global id each, written beside it.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        A finished :func:`chunkseg.predict_to_zarr` output.
    cls : int or str, optional
        The class whose connected components are the objects: its index (``0``), its name in
        the output's ``class`` coordinate (``"cell"``), or a ``str`` of digits, the index,
        when no class has that name (see :func:`chunkseg._check.class_index_arg`). Default:
        the object class, the first class whose name is not background-like (background, bg,
        membrane, boundary, border, edge, their plurals; case-insensitive); for classes
        without names (``"0"``, ``"1"``, ...) class 1, class 0 being usually the background.
        For the shipped ISBI U-Net (``["cell", "membrane"]``) the default is 0, the cell
        interior.
    threshold : float, optional
        Foreground is ``probabilities[cls] >= threshold`` (the store must hold
        ``probabilities``); by default it is ``labels == cls``.
    connectivity : {1, 2}, default 1
        Pixels touching by an edge (1) or by an edge or a corner (2) belong to one object
        (:func:`scipy.ndimage.generate_binary_structure`); with ``method="watershed"``, of the
        seeds.
    method : {"components", "watershed"}, default "components"
        ``"components"``: connected components of the foreground. ``"watershed"``: a seeded
        watershed over the boundary probability ``1 - probabilities[cls]`` (the store must
        hold ``probabilities``), which splits objects that a thin gap in their boundary joins:
        seeds are the components of ``probabilities[cls] >= seed_threshold`` of at least
        ``min_seed_size`` pixels; every pixel goes to the seed it reaches at the lowest cost,
        entering a pixel costing ``step * (1 + boundary_weight * boundary)`` (an image
        foresting transform, Falcao et al. 2004, IEEE TPAMI 26(1)); pixels whose cost exceeds
        ``max_cost`` stay 0; with ``merge_threshold``, touching fragments whose shared border
        has a mean boundary probability below it are joined. See
        :mod:`chunkseg.objects.watershed` and :mod:`chunkseg.kernels.watershed`.
    seed_threshold : float, default 0.98
        Watershed only: seeds are pixels with ``probabilities[cls] >= seed_threshold``.
    min_seed_size : int, default 10
        Watershed only: seeds of fewer pixels are dropped.
    boundary_weight : float, default 10.0
        Watershed only: extra cost of entering a pixel of boundary probability 1.
    max_cost : float, default 32.0
        Watershed only: the largest path cost flooded (1 to 256); it bounds the reach of a seed to
        ``floor(max_cost)`` pixels, which is the halo each chunk is computed with.
    merge_threshold : float, optional
        Watershed only: join touching fragments whose border's mean boundary probability is
        below it (a thresholded region adjacency graph). None (default): no merging. With
        ``agglomeration="multicut"`` or ``"mutex"``: required, in (0, 1), the mean boundary
        probability at which joining and cutting cost the same (elf's ``beta`` is
        ``1 - merge_threshold``).
    agglomeration : {"threshold", "multicut", "mutex"}, default "threshold"
        Watershed only: how fragments are joined on their region adjacency graph: the
        threshold above, a multicut or a mutex watershed (these two need ``pip install
        'chunkseg[agglomerate]'``); see :mod:`chunkseg.kernels.agglomerate`.
    name : str, default "instances"
        The array written in the group.
    overwrite : bool, default False
        Replace an array ``name`` that :func:`label` wrote before.
    storage_options : dict, optional
        fsspec options for a URL ``store``.
    scheduler, workers, progress
        As :func:`chunkseg.predict_to_zarr`.

    Returns
    -------
    xarray.DataArray
        ``(y, x)``, uint32 (uint64 beyond 2**32 - 1 objects), 0 for background and ``1..N``
        for the objects, numbered in the raster order of their first pixel: equal to
        :func:`scipy.ndimage.label` of the whole foreground (components) or to
        :func:`chunkseg.kernels.watershed.flood_block` on the whole image (watershed), for
        any chunking. Chunked as the output's ``labels``; ``attrs["objects"]`` is ``N``,
        ``attrs["method"]`` the method and, for the watershed, ``attrs["watershed"]`` its
        settings.

    Raises
    ------
    chunkseg.errors.NotFoundError
        If ``store`` holds no Zarr group.
    chunkseg.errors.InvalidValueError
        If the run is not finished, ``cls`` is not a class of it (or is None where every class
        name is background-like), the variable the foreground needs is missing,
        ``connectivity`` is not 1 or 2, ``method`` is unknown, a watershed setting is out of
        range (or ``threshold`` is given with the watershed), or ``name`` is one of the
        output's own variables.
    chunkseg.errors.InvalidTypeError
        If ``cls`` is not None, an int or a str, or a watershed setting has the wrong type.
    chunkseg.errors.OutputExistsError
        If ``name`` exists and ``overwrite`` is False, or it was not written by this function.

    Notes
    -----
    Two passes over the chunks, each task holding one chunk (see :mod:`chunkseg.kernels.components`):
    label and summarise, merge the summaries on the client (memory: a few int64 per object
    plus the chunk edges), label again and relabel, writing each chunk once. Method: the
    block-wise labelling and face merge of ``dask_image.ndmeasure.label``, with ids numbered
    as :func:`scipy.ndimage.label` numbers the whole image; it was 50 times faster than
    dask-image at 10000^2 in ``benchmarks/instances.py`` (see :mod:`chunkseg.kernels.components`).
    """
    # zarr v3 node names: not empty, no "/", not made of dots only, not starting with "__"
    if (not isinstance(name, str) or not name or "/" in name or "\\" in name
            or not name.strip(".") or name.startswith("__") or name in _RESERVED):
        raise InvalidValueError(
            f"`name` must be a new array name: not empty, no '/' or '\\', not '.' or '..', not "
            f"starting with '__', not one of {_RESERVED}. Got {name!r}. Choose a plain name "
            "such as 'instances' or 'cells' (CLI: --name)."
        )
    kern.foreground_structure(connectivity)  # checks it
    if method not in ("components", "watershed"):
        raise InvalidValueError(
            f"`method` must be 'components' or 'watershed'. Got {method!r}.")
    settings = None
    if method == "watershed":
        if threshold is not None:
            raise InvalidValueError(
                f"`threshold` is for method='components'. Got {threshold!r} with "
                "method='watershed'; pass `seed_threshold` instead.")
        settings = WatershedSettings(seed_threshold, min_seed_size, boundary_weight, max_cost,
                                     merge_threshold, agglomeration)
    group = _open_group(store, storage_options, "r+")
    _check_complete(group, store)
    cls = class_index_arg(cls, class_names(group), fix="(CLI: --class NAME or --class INDEX)")
    variable = "labels" if threshold is None and settings is None else "probabilities"
    source_path = _ome.find(group, variable)
    if source_path is None:
        raise InvalidValueError(
            (f"`method` 'watershed' needs the output variable {variable!r}"
             if settings is not None else
             f"`threshold` {'None' if threshold is None else repr(threshold)} needs the output "
             f"variable {variable!r}")
            + f", which {describe_location(store)!r} does not hold. Run "
            f"predict with outputs including {variable!r}"
            + (", or pass `threshold` to use probabilities."
               if threshold is None and settings is None else ".")
        )
    if threshold is not None and not (isinstance(threshold, int | float)
                                      and 0.0 <= float(threshold) <= 1.0):
        raise InvalidValueError(f"`threshold` must be a probability in [0, 1]. Got {threshold!r}.")
    ome = group.attrs.get("layout") == _ome.LAYOUT
    # the OME layout: an NGFF label image labels/<name> (levels 0, 1, ...) beside labels/classes
    path = f"labels/{name}/0" if ome else name
    existing = _ome.find(group, name)
    if existing is not None:
        old = group[existing]
        if not overwrite or "connectivity" not in old.attrs:
            raise OutputExistsError(
                f"`name` {name!r} already exists in {describe_location(store)!r}. Pass "
                "`overwrite=True` to replace an earlier instances array, or choose another name."
                if not overwrite else
                f"`name` {name!r} in {describe_location(store)!r} was not written by "
                "chunkseg.instances; chunkseg does not replace it. Choose another name."
            )
    src = group[source_path]
    height, width = src.shape[-2:]
    ys_, xs_ = kern.block_grid((kern.axis_chunks(height, src.chunks[-2]),
                                kern.axis_chunks(width, src.chunks[-1])))
    grid = (len(ys_), len(xs_))
    scratches = tuple(name + suffix for suffix in SCRATCH_SUFFIXES)
    with open_client(scheduler, workers) as client:
        sched = scheduler if client is None else client
        secrets = secrets_of(storage_options)
        for scratch in scratches:  # scratch arrays left by an interrupted watershed
            if scratch not in group:
                continue
            if "chunkseg_version" not in group[scratch].attrs:
                raise OutputExistsError(
                    f"{scratch!r} in {describe_location(store)!r} was not written by chunkseg; "
                    "chunkseg does not replace it. Choose another `name`.")
            del group[scratch]
        extra: dict[str, Any] = {"method": method}
        if settings is None:
            read = _Foreground(src, cls, None if threshold is None else float(threshold))
            tasks = {(iy, ix): dask.delayed(_summary_task, pure=False)(
                read, ys, xs, connectivity, width)
                for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_)}
            keys = list(tasks)
            summaries = dict(zip(keys, compute(*tasks.values(), scheduler=sched,
                                               progress=progress, secrets=secrets)))
            lookups, n_objects = kern.merge_summaries(summaries, grid, connectivity)
            block = _Components(read, connectivity, lookups)
        else:
            block, n_objects, info = watershed_lookup(
                group, src, cls, settings, connectivity, scratches, describe_location(store),
                sched, progress, secrets)
            extra.update(watershed=settings.to_dict(), **info)
        dtype = kern.ids_dtype(n_objects)
        if existing is not None:  # written by this function (checked above)
            del group[f"labels/{name}" if existing != name else name]
        if ome:
            require_group(group, f"labels/{name}")
        target = create_array(
            group, name=path, shape=(height, width), chunks=src.chunks[-2:], dtype=dtype,
            compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
            attributes={"long_name": "instance ids", "class": cls, "threshold": threshold,
                        "connectivity": connectivity, "objects": n_objects,
                        "source_variable": variable, "complete": False,
                        "numbering": "raster order of each object's first pixel", **extra})
        writer = ArrayWriter(target, describe_location(store), name)
        jobs = [dask.delayed(_relabel_task, pure=False)(
            block, iy, ix, ys, xs, writer, f"chunk ({iy}, {ix}) (y, x of the chunk grid)")
            for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_)]
        compute(*jobs, scheduler=sched, progress=progress, secrets=secrets)
        for scratch in scratches:
            if scratch in group:
                del group[scratch]
        if ome:
            _instance_levels(group, name, target, sched, progress, describe_location(store))
        target.attrs["complete"] = True
    consolidate(group)
    if ome:
        data = da.from_zarr(target)
        return xr.DataArray(data, dims=("y", "x"), name=name, attrs=target.attrs.asdict())
    return xr.open_zarr(store, storage_options=_so(store, storage_options),
                        consolidated=True)[name]


def _instance_levels(group, name: str, target, scheduler, progress: bool, location: str) -> None:
    """The pyramid (mode of 2 x 2: ids stay ids) and NGFF label metadata of an instances
    array in the OME layout, with as many levels as the output's."""
    shapes = _pyramid.level_shapes(target.shape, int(group.attrs.get("levels", 1)))
    levels = [target] + [create_array(
        group, name=f"labels/{name}/{i}", shape=shape,
        chunks=_pyramid.level_chunks(target.chunks, shape), dtype=target.dtype,
        compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
        attributes={"long_name": "instance ids", "level": i}, write_empty_chunks=True)
        for i, shape in enumerate(shapes[1:], start=1)]
    _pyramid.write_levels([(levels, "mode")], location, scheduler=scheduler, progress=progress)
    _ome.write_instances_metadata(group, name, len(shapes))



# --- the region table -------------------------------------------------------------------------


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
    group = _open_group(store, storage_options, "r")
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
        parts = compute(*jobs, scheduler=sched, progress=progress,
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
