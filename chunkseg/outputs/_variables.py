"""The variables of :func:`chunkseg.predict_to_zarr`'s output: their arrays, codecs, attrs and
coordinates, the completion manifest, whole-chunk writes, and the OME-Zarr pyramid's arrays.

Everything here writes (and :func:`class_names` reads back the ``class`` coordinate it wrote);
computing the values is the engine's (:mod:`chunkseg.engine`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import _geo, _ome
from .._check import int_pair, is_int
from ..errors import InvalidTypeError, InvalidValueError
from ..plan import TilePlan
from . import _pyramid
from ._arrays import ArrayWriter, check_aligned, create_array
from ._manifest import MANIFEST
from ._marks import ChunkMarks
from ._ownership import require_group
from ._target import describe_location

__all__ = [
    "ChunkWriter",
    "check_compression_level",
    "class_names",
    "compressor",
    "create_variables",
    "pixel_grid",
    "shard_layout",
    "var_coord_attrs",
    "write_coords",
    "write_levels",
]


class ChunkWriter:
    """Writes one output chunk's variables into their Zarr arrays: one task, whole chunks.

    Parameters
    ----------
    targets : dict of str -> zarr.Array
        ``logits``/``probabilities`` ``(K, H, W)``, ``labels`` ``(H, W)``, chunked as the plan.
    plan : TilePlan
    done : zarr.Array, optional
        The completion manifest, ``(n_y, n_x)`` uint8, one Zarr chunk per element: set to 1
        once all of a chunk's variables are written.
    location : str, optional
        The output store, for messages (:func:`chunkseg.outputs._target.describe_location`: no
        credentials).
    plane : tuple of int, default ()
        For a stack of planes, the index of the plane this writer writes along the arrays'
        leading dims (and the manifest's): ``targets`` are then ``(*planes, K, H, W)`` and
        ``(*planes, H, W)``.

    Raises
    ------
    chunkseg.errors.OutputWriteError
        When a write fails with an ``OSError`` (disk full, no permission, the object store
        refused): names the chunk, the variable, the store and the fix; the chunk stays
        unmarked.
    """

    def __init__(self, targets: dict, plan: TilePlan, done=None, location: str | None = None,
                 plane: tuple[int, ...] = ()):
        self.targets = targets
        self.plan = plan
        self.plane = tuple(int(i) for i in plane)
        self.location = location
        where = location or "the output store"
        # one writer for every write: an OSError becomes an OutputWriteError naming the chunk
        self._writers = {name: ArrayWriter(array, where, name) for name, array in targets.items()}
        self._marks = None if done is None else ChunkMarks(done, where)

    @property
    def names(self) -> tuple[str, ...]:
        """The variables written, in order."""
        return tuple(self.targets)

    def write(self, jy: int, jx: int, outs: Mapping[str, np.ndarray], what: str) -> None:
        """Write chunk ``(jy, jx)`` of every variable in ``outs`` (``(..., h, w)`` arrays),
        then mark it done; ``what`` names the chunk in errors."""
        (c_y, c_x) = self.plan.chunks
        h, w = outs[self.names[0]].shape[-2:]
        region = (slice(jy * c_y, jy * c_y + h), slice(jx * c_x, jx * c_x + w))
        plane = tuple(slice(i, i + 1) for i in self.plane)
        for name, data in outs.items():
            data = data.reshape((1,) * len(plane) + data.shape)  # a stack's plane: 1 along each
            self._writers[name].write(plane + (slice(None),) * (data.ndim - 2 - len(plane))
                                      + region, data, what)
        if self._marks is not None:  # after every variable of the chunk is written
            self._marks.mark(*self.plane, jy, jx, what=what)


def create_variables(group, *, outputs: Sequence[str], plan: TilePlan, classes: int,
                     dtype: np.dtype, labels_dtype: np.dtype,
                     inner: tuple[int, int] | None, ome: bool, level_shapes: list,
                     coords: dict, class_names: Sequence[str], compression_level: int,
                     lead: Sequence[str] = (), lead_shape: tuple[int, ...] = ()):
    """Create the output's arrays in a new ``group``: the variables, their coordinates, the
    pyramid levels (``ome``) and the completion manifest.

    Parameters
    ----------
    group : zarr.Group
    outputs : sequence of str
        The variables (``logits``, ``probabilities``, ``labels``).
    plan : TilePlan
        Its chunks are the computation chunks (the shards when ``inner`` is given).
    classes : int
        ``K``.
    dtype, labels_dtype : numpy.dtype
        Of ``logits``/``probabilities``, and of ``labels`` (with ``ome``, the NGFF label image
        is :func:`chunkseg._ome.stored_dtype` instead: class ``k`` stored as ``k + 1``).
    inner : (int, int), optional
        The inner Zarr chunks of a sharded output.
    ome : bool
        The OME-Zarr layout (:mod:`chunkseg._ome`).
    level_shapes : list of (int, int)
        The pyramid's level shapes (with ``ome``).
    coords : dict of str -> xarray.Variable
        The input's ``y``/``x`` and scalar coordinates.
    class_names : sequence of str
    compression_level : int
    lead, lead_shape : tuple, default ()
        A stack of planes: its leading dims' names and lengths, in front of each variable's
        dims (chunks of 1 along them: each chunk holds one plane) and of the manifest's
        (``coords`` then holds their coordinates).

    Returns
    -------
    targets : dict of str -> zarr.Array
    done : zarr.Array
        The manifest, ``(n_y, n_x)`` uint8 (``(*lead_shape, n_y, n_x)`` for a stack).
    """
    targets = {}
    k = classes
    if ome and "labels" in outputs:
        require_group(group, "labels/classes")
    for name in outputs:
        if name == "labels":
            shape, chunks, dims = plan.image_shape, plan.chunks, ("y", "x")
            # the NGFF label image stores class k as k + 1 (0: no prediction; _ome)
            dt = _ome.stored_dtype(k) if ome else labels_dtype
        else:
            shape, chunks, dt, dims = (k,) + plan.image_shape, (k,) + plan.chunks, \
                dtype, ("class", "y", "x")
        # each write task owns whole Zarr chunks, or whole shards when sharded
        check_aligned(name, plan.output_chunks(), chunks[-2:])
        shape, chunks = tuple(lead_shape) + shape, (1,) * len(lead_shape) + chunks
        dims = (*lead, *dims)
        shard_shape = None
        if inner is not None:
            shard_shape, chunks = chunks, chunks[:-2] + inner
        targets[name] = create_array(
            group, name=_ome.var_path(name) if ome else name, shape=shape,
            chunks=chunks, dtype=dt, compressor=compressor(name, compression_level),
            dimension_names=dims, attributes=_var_attrs(name, k, coords, ome=ome),
            write_empty_chunks=True, shards=shard_shape)
    write_coords(group, coords, class_names)
    if ome:
        _create_levels(group, targets, level_shapes, plan.chunks, outputs=outputs,
                       coords=coords, classes=k, class_names=class_names,
                       compression_level=compression_level)
    # one element (and one Zarr chunk) per output chunk, set by the task that wrote it:
    # concurrent tasks never write the same object
    done = ChunkMarks.create(
        require_group(group, MANIFEST), "done", tuple(lead_shape) + plan.chunk_grid,
        str(group.store), compressor=compressor("done", compression_level),
        meaning="1 where every variable of that output chunk is written",
        lead=tuple(lead)).array
    return targets, done


def shard_layout(shards, chunks, default: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(computation chunks, inner Zarr chunks)`` of a sharded output: the shard, and
    ``chunks`` (``default`` when None: the engine's default chunk for the device), after
    checking that the shard is a positive multiple of the chunk."""
    shard = int_pair(shards, "shards", minimum=1, fix="The shard is a number of pixels, a "
                     "multiple of `chunks`.")
    inner = int_pair(default if chunks is None else chunks, "chunks", minimum=1,
                     fix="The inner Zarr chunk of each shard is a number of pixels.")
    if any(s % c for s, c in zip(shard, inner)):
        raise InvalidValueError(
            f"`shards` must be a multiple of `chunks` (the inner Zarr chunk of each shard) along "
            f"each axis. Got shards={shard!r}, chunks={inner!r}. Use shards that are multiples "
            f"of the chunks (e.g. shards={tuple(c * max(1, round(s / c)) for s, c in zip(shard, inner))!r}"
            f"), or chunks that divide the shards.")
    return shard, inner


def check_compression_level(level: Any, outputs: Sequence[str]) -> None:
    """Refuse a ``compression_level`` a codec of :func:`compressor` would fail on while
    writing: zstd takes 0..22, Blosc (``logits``) 0..9."""
    top = 9 if "logits" in outputs else 22
    if not is_int(level):
        raise InvalidTypeError(f"`compression_level` must be an int from 0 to {top}. Got "
                               f"{level!r}; the default is 1.")
    if not 0 <= level <= top:
        raise InvalidValueError(
            f"`compression_level` must be from 0 to {top}"
            + (" when logits are written (Blosc, which compresses them, takes 0..9; zstd, for "
               "labels and probabilities, 0..22)" if top == 9 else " (zstd)")
            + f". Got {level!r}; the default, 1, writes fastest for about the same size.")


def compressor(name: str, level: int):
    """The codec of an output variable (see :func:`predict_to_zarr`'s ``compression_level``)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "logits":
        return BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")
    return ZstdCodec(level=level)


def _var_attrs(name: str, k: int, coords: dict | None = None, ome: bool = False) -> dict:
    attrs = {
        "logits": {"long_name": "blended logits", "units": "1"},
        "probabilities": {"long_name": "class probabilities", "units": "1",
                          "activation": "softmax" if k > 1 else "sigmoid"},
        "labels": {"long_name": "argmax class labels", "classes": k},
    }[name]
    if name == "labels" and ome:  # the NGFF label image (_ome.encode_classes)
        attrs = {"long_name": "argmax class labels + 1 (0: no prediction)", "classes": k,
                 _ome.CLASS_OFFSET: 1}
    return {**attrs, **var_coord_attrs(coords or {})}


def var_coord_attrs(coords: Mapping[str, Any]) -> dict:
    """The CF attributes of a variable that tie it to the scalar coordinates of ``coords``:
    ``coordinates`` (their names) and ``grid_mapping`` (the one holding the CRS and transform,
    rioxarray's ``spatial_ref``: :func:`chunkseg._geo.grid_mapping`); empty without them."""
    attrs = {}
    scalars = sorted(n for n, v in coords.items() if v.ndim == 0)
    if scalars:  # CF: the scalar coordinates (e.g. rioxarray's spatial_ref) of the variable
        attrs["coordinates"] = " ".join(scalars)
    mapping = _geo.grid_mapping(coords)
    if mapping is not None:  # CF: the coordinate holding its CRS and transform (rioxarray)
        attrs["grid_mapping"] = mapping
    return attrs


def _even_grid(coord: Any) -> tuple[float, float] | None:
    """``(first value, step)`` of a 1-D coordinate that is evenly spaced (either direction;
    one value: step 1), or None."""
    if coord is None or coord.ndim != 1 or coord.size < 1:
        return None
    values = np.asarray(coord.values, dtype=float)
    step = float(values[1] - values[0]) if values.size > 1 else 1.0
    if step == 0 or not np.all(np.isfinite(values)) \
            or not np.allclose(np.diff(values), step, rtol=1e-6, atol=0):
        return None
    return float(values[0]), step


def pixel_grid(coords: Mapping[str, Any]) -> tuple[list, list, dict]:
    """NGFF ``scale``, ``translation`` and units of ``y``, ``x`` from an image's coordinates
    (an output's, or an input's as :func:`chunkseg.open_image` read them).

    NGFF 0.5 describes a grid by a positive scale and a translation per axis, each axis in one
    unit. The coordinates' spacing, first value and ``units`` are used only where both ``y``
    and ``x`` fit that: evenly spaced and increasing, both with an NGFF unit
    (:func:`chunkseg._ome.ngff_unit`) or both without ``units``, and no rotated
    ``GeoTransform`` in a grid-mapping coordinate (:mod:`chunkseg._geo`). Otherwise -- e.g. a
    north-up geospatial raster, whose ``y`` decreases, or coordinates in degrees -- both axes
    are in pixels (scale 1, translation 0, no unit): never one axis in metres and the other in
    pixels. The coordinates themselves (and ``spatial_ref``) still hold the true grid.

    Returns
    -------
    scale, translation : [float, float]
        ``y`` then ``x``.
    units : dict
        ``{"y": ..., "x": ...}``, NGFF unit names or None; empty in pixels.
    """
    pixels = [1.0, 1.0], [0.0, 0.0], {}
    if _geo.is_rotated(coords):
        return pixels
    scale, translation, units = [1.0, 1.0], [0.0, 0.0], {}
    for i, dim in enumerate(("y", "x")):
        c = coords.get(dim)
        grid = _even_grid(c)
        if grid is None or grid[1] <= 0:
            return pixels
        named = c.attrs.get("units")
        unit = _ome.ngff_unit(named)
        if named is not None and unit is None:
            return pixels  # a unit NGFF has no name for (degrees, "pixel"...)
        translation[i], scale[i] = grid
        units[dim] = unit
    if (units["y"] is None) != (units["x"] is None):
        return pixels
    return scale, translation, units


def write_coords(group, coords: dict, class_names: Sequence[str] | None) -> None:
    """Write the ``class`` coordinate (names; none when ``class_names`` is None) and the
    ``y``/``x`` and scalar coordinates as Zarr arrays of ``group``, which xarray reads as
    coordinates (1-D arrays named as their dimension; scalars, such as rioxarray's
    ``spatial_ref``, through the variables' CF ``coordinates`` and ``grid_mapping``
    attributes: :func:`var_coord_attrs`)."""
    from zarr.codecs import ZstdCodec

    if class_names is not None:
        arr = create_array(group, name="class", shape=(len(class_names),),
                           chunks=(max(1, len(class_names)),), dtype=str, fill_value="",
                           compressor=ZstdCodec(level=1), dimension_names=("class",),
                           attributes={"long_name": "class name"})
        arr[...] = np.asarray(class_names, dtype=str)
    for name, var in coords.items():
        values = np.asarray(var.values)
        if var.ndim == 1:
            a = create_array(group, name=name, shape=values.shape, chunks=values.shape,
                             dtype=values.dtype, compressor=ZstdCodec(level=1),
                             dimension_names=(name,), attributes=dict(var.attrs))
        else:
            a = create_array(group, name=name, shape=(), chunks=(), dtype=values.dtype,
                             compressor=ZstdCodec(level=1), dimension_names=(),
                             attributes=_json_attrs(var.attrs))
        a[...] = values


def class_names(group, classes: int | None = None) -> tuple[str, ...]:
    """The class names of an output group: its ``class`` coordinate (:func:`write_coords`).

    Parameters
    ----------
    group : zarr.Group
        A :func:`chunkseg.predict_to_zarr` output, either layout (the coordinate is at its root).
    classes : int, optional
        The number of classes ``K``; default ``attrs["classes"]``.

    Returns
    -------
    tuple of str
        The ``K`` names; ``"0"``, ``"1"``, ... where the group has no ``class`` array of ``K``
        names (an output written before the names were stored). Empty when ``K`` is unknown.
    """
    import zarr

    k = int(group.attrs.get("classes", 0) or 0) if classes is None else int(classes)
    arr = group.get("class")
    if isinstance(arr, zarr.Array) and arr.ndim == 1 and arr.shape[0] == k:
        return tuple(str(n) for n in arr[...])
    return tuple(str(i) for i in range(k))


def _json_attrs(attrs: dict) -> dict:
    """The JSON-serialisable part of ``attrs`` (numpy scalars and arrays become lists)."""
    out = {}
    for key, value in attrs.items():
        value = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[str(key)] = value
    return out


def _create_levels(group, targets: dict, shapes: list, chunks0: tuple[int, int], *,
                   outputs: Sequence[str], coords: dict, classes: int,
                   class_names: Sequence[str], compression_level: int) -> None:
    """Create the pyramid arrays (levels 1...) of the image variable and the labels, their
    coordinates and the NGFF metadata of the OME layout (written with ome-zarr-py)."""
    image_var = _ome.image_variable(outputs)
    scale, translation, units = pixel_grid(coords)
    k = classes
    for i, shape in enumerate(shapes[1:], start=1):
        chunks = _pyramid.level_chunks(chunks0, shape)
        sub = require_group(group, str(i)) if image_var is not None else None
        level_coords = _level_coords(coords, 2 ** i, shape)
        for name, arr0 in targets.items():
            if name == "labels":
                create_array(group, name=_ome.var_path("labels", i), shape=shape, chunks=chunks,
                             dtype=arr0.dtype, compressor=compressor(name, compression_level),
                             dimension_names=("y", "x"),
                             attributes=_var_attrs(name, k, ome=True), write_empty_chunks=True)
            elif name == image_var:
                create_array(sub, name=name, shape=(k,) + shape, chunks=(k,) + chunks,
                             dtype=arr0.dtype, compressor=compressor(name, compression_level),
                             dimension_names=("class", "y", "x"),
                             attributes=_var_attrs(name, k, level_coords),
                             write_empty_chunks=True)
        if sub is not None:
            write_coords(sub, level_coords, class_names)
    if image_var is not None:
        _ome.write_image_metadata(group, image_var, len(shapes), class_names, scale,
                                  translation, units)
    if "labels" in targets:
        _ome.write_labels_metadata(group["labels"], "classes", len(shapes), class_names,
                                   scale, translation, units)


def _level_coords(coords: Mapping[str, Any], factor: int, shape: tuple[int, int]) -> dict:
    """The coordinates of a pyramid level whose pixels are ``factor x factor`` squares of the
    full-resolution ones: ``y``/``x`` at the centres of those squares (from the full-resolution
    coordinates' first value and step, either sign; an unevenly spaced one is left out), the
    grid mapping with the level's ``GeoTransform`` (:func:`chunkseg._geo.level_grid_mapping`)
    and the other scalar coordinates as they are."""
    out = {}
    for j, d in enumerate(("y", "x")):
        grid = _even_grid(coords.get(d))
        if grid is not None:
            first, step = grid
            out[d] = xr.Variable(d, first + (factor - 1) / 2 * step
                                 + factor * step * np.arange(shape[j]), coords[d].attrs)
    mapping = _geo.grid_mapping(coords)
    for name, var in coords.items():
        if var.ndim == 0:
            out[name] = _geo.level_grid_mapping(var, factor) if name == mapping else var
    return out


def write_levels(group, outputs, n_levels: int, store, scheduler, progress: bool) -> None:
    """Compute and write pyramid levels 1... from the level before each, as written."""
    image_var = _ome.image_variable(outputs)
    pyramids = [([group[_ome.var_path(name, i)] for i in range(n_levels)], kind)
                for name, kind in ((image_var, "mean"), ("labels", "mode"))
                if name is not None and name in outputs]
    _pyramid.write_levels(pyramids, describe_location(store), scheduler=scheduler,
                          progress=progress)
