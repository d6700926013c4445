"""Objects of a written output: global instance ids across chunks.

:func:`label` labels the connected components of one class of a :func:`predict_to_zarr`
output (its ``labels``, or a thresholded probability), or floods a seeded watershed over its
boundary probability (:mod:`chunkseg.objects.watershed`), with one id per object across the
whole image, and writes them to the same group as ``instances`` (the kernels and the method
are in :mod:`chunkseg.kernels.components`). The region table of the objects is
:func:`chunkseg.objects.regions.regions`.
"""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from zarr.codecs import ZstdCodec

from .. import _ome
from .._check import class_index_arg
from .._redact import secrets_of
from ..errors import (
    InvalidValueError,
    OutputExistsError,
)
from ..kernels import components as kern
from ..outputs import _pyramid
from ..outputs._arrays import ArrayWriter, create_array
from ..outputs._lifecycle import leased
from ..outputs._manifest import (
    MANIFEST,
    _so,
    check_same_settings,
    consolidate,
    open_output_group,
    refuse_stack,
)
from ..outputs._marks import ChunkMarks
from ..outputs._ownership import require_group
from ..outputs._target import describe_location
from ..outputs._variables import class_names
from ..scheduling import compute, open_client
from .watershed import SCRATCH_SUFFIXES, WatershedSettings, watershed_lookup

__all__ = ["label"]

_RESERVED = ("logits", "probabilities", "labels", "chunkseg", "class", "y", "x")


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


def _relabel_task(block, iy: int, ix: int, ys, xs, writer, marks: ChunkMarks, what) -> int:
    writer.write((slice(*ys), slice(*xs)), block(iy, ix, ys, xs).astype(writer.dtype), what)
    marks.mark(iy, ix)
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
    seeds: str = "threshold",
    maxima_radius: int = 4,
    name: str = "instances",
    overwrite: bool = False,
    resume: bool = False,
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
    seeds : {"threshold", "maxima", "both"}, default "threshold"
        Watershed only: where seeds come from: ``probabilities[cls] >= seed_threshold``; the
        local maxima of the Euclidean distance transform of ``probabilities[cls] >= 0.5``,
        capped at ``2 * maxima_radius`` px, over a ``(2 * maxima_radius + 1)^2`` square (the
        distance-transform seeds of a classic watershed, made local by the cap); or either.
        ``min_seed_size`` applies to all (the maxima are small: lower it). See
        :func:`chunkseg.kernels.watershed.seed_mask`.
    maxima_radius : int, default 4
        Watershed with maxima seeds only: the radius above, 1 to 64 px; the seeds are read
        with a halo of ``3 * maxima_radius``.
    name : str, default "instances"
        The array written in the group.
    overwrite : bool, default False
        Replace an array ``name`` that :func:`label` wrote before.
    resume : bool, default False
        Finish an interrupted run of ``label`` with the same ``name`` and the same settings:
        the passes that only read run again (the same result), the chunks that the
        interrupted run wrote and marked are kept and only the others are written. A run
        keeps its record (settings, chunk marks, the watershed's scratch arrays and region
        graph) in ``chunkseg/label-NAME`` until it finishes.
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
        With ``resume``: if there is no interrupted run of ``name``, its settings differ,
        its marks cannot be trusted, or ``overwrite`` is given too.
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
                                     merge_threshold, agglomeration, seeds, maxima_radius)
    group = _open_group(store, storage_options, "r+")
    refuse_stack(group, describe_location(store), "store", "chunkseg.label")
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
    location = describe_location(store)
    existing = _ome.find(group, name)
    record_path = f"{MANIFEST}/label-{name}"
    fingerprint = {"method": method, "class": cls, "threshold": threshold,
                   "connectivity": connectivity, "source_variable": variable,
                   "watershed": None if settings is None else settings.to_dict()}
    if resume:
        _check_resumable(group, record_path, fingerprint, name, overwrite, location)
    elif existing is not None:
        old = group[existing]
        if not overwrite or "connectivity" not in old.attrs:
            raise OutputExistsError(
                f"`name` {name!r} already exists in {location!r}. Pass "
                "`overwrite=True` to replace an earlier instances array, or choose another name."
                if not overwrite else
                f"`name` {name!r} in {location!r} was not written by "
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
        if not resume:
            for scratch in scratches:  # scratch arrays left by an interrupted watershed
                if scratch not in group:
                    continue
                if "chunkseg_version" not in group[scratch].attrs:
                    raise OutputExistsError(
                        f"{scratch!r} in {location!r} was not written by chunkseg; "
                        "chunkseg does not replace it. Choose another `name`.")
                del group[scratch]
            if record_path in group:  # the record of an interrupted run (chunkseg's own group)
                del group[record_path]
            record = require_group(group, record_path)
            record.attrs.update(settings=fingerprint)
        else:
            record = group[record_path]
        extra: dict[str, Any] = {"method": method}
        if settings is None:
            # class labels read as class indices (the NGFF label image stores k + 1)
            read = _Foreground(_ome.class_labels(src), cls,
                               None if threshold is None else float(threshold))
            tasks = {(iy, ix): dask.delayed(_summary_task, pure=False)(
                read, ys, xs, connectivity, width)
                for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_)}
            keys = list(tasks)
            summaries = dict(zip(keys, compute(*tasks.values(), scheduler=sched,
                                               progress=progress, label="labelling: components",
                                               secrets=secrets)))
            lookups, n_objects = kern.merge_summaries(summaries, grid, connectivity)
            block = _Components(read, connectivity, lookups)
        else:
            block, n_objects, info = watershed_lookup(
                group, src, cls, settings, connectivity, scratches, record, resume, location,
                sched, progress, secrets)
            extra.update(watershed=settings.to_dict(), **info)
        dtype = kern.ids_dtype(n_objects)
        if existing is not None and not resume:  # written by this function (checked above)
            del group[f"labels/{name}" if existing != name else name]
            existing = None
        if ome:
            require_group(group, f"labels/{name}")
        if existing is not None and "instances" in record:  # resume: keep what is marked
            target = group[existing]
            marks = ChunkMarks.open(record, "instances", grid, location)
        else:
            target = create_array(
                group, name=path, shape=(height, width), chunks=src.chunks[-2:], dtype=dtype,
                compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
                attributes={"long_name": "instance ids", "class": cls, "threshold": threshold,
                            "connectivity": connectivity, "objects": n_objects,
                            "source_variable": variable, "complete": False,
                            "numbering": "raster order of each object's first pixel", **extra},
                overwrite=resume)  # resume: an array created without its marks
            marks = ChunkMarks.create(record, "instances", grid, location)
        writer = ArrayWriter(target, location, name)
        done = marks.finished()
        jobs = [dask.delayed(_relabel_task, pure=False)(
            block, iy, ix, ys, xs, writer, marks, f"chunk ({iy}, {ix}) (y, x of the chunk grid)")
            for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_) if (iy, ix) not in done]
        compute(*jobs, scheduler=sched, progress=progress, label=f"labelling: writing {name}",
                secrets=secrets)
        if ome:
            _instance_levels(group, name, target, sched, progress, location)
        for scratch in scratches:
            if scratch in group:
                del group[scratch]
        del group[record_path]  # before "complete": a record means an unfinished run
        target.attrs["complete"] = True
    consolidate(group)
    if ome:
        data = da.from_zarr(target)
        return xr.DataArray(data, dims=("y", "x"), name=name, attrs=target.attrs.asdict())
    return xr.open_zarr(store, storage_options=_so(store, storage_options),
                        consolidated=True)[name]


def _check_resumable(group, record_path: str, fingerprint: dict, name: str, overwrite: bool,
                     location: str) -> None:
    """Raise unless ``group`` holds an interrupted run of ``label`` named ``name`` with the
    same settings (its record ``chunkseg/label-NAME``)."""
    if overwrite:
        raise InvalidValueError(
            "`resume` and `overwrite` exclude each other: resume keeps the chunks an "
            "interrupted run wrote, overwrite starts again. Pass one of them.")
    if record_path not in group:
        raise InvalidValueError(
            f"`resume=True` needs an interrupted run of label with `name` {name!r} in "
            f"{location!r}; there is none (a finished run leaves no record). Drop `resume`"
            + (" (and pass `overwrite=True` to replace the finished array)."
               if _ome.find(group, name) is not None else "."))
    check_same_settings(dict(group[record_path].attrs.get("settings") or {}), fingerprint)


def _instance_levels(group, name: str, target, scheduler, progress: bool, location: str) -> None:
    """The pyramid (mode of 2 x 2: ids stay ids) and NGFF label metadata of an instances
    array in the OME layout, with as many levels as the output's."""
    shapes = _pyramid.level_shapes(target.shape, int(group.attrs.get("levels", 1)))
    levels = [target] + [create_array(
        group, name=f"labels/{name}/{i}", shape=shape,
        chunks=_pyramid.level_chunks(target.chunks, shape), dtype=target.dtype,
        compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
        attributes={"long_name": "instance ids", "level": i}, write_empty_chunks=True,
        overwrite=True)  # a resumed run's: the levels are written whole again
        for i, shape in enumerate(shapes[1:], start=1)]
    _pyramid.write_levels([(levels, "mode")], location, scheduler=scheduler, progress=progress)
    _ome.write_instances_metadata(group, name, len(shapes))
