""":func:`ingest`: anything :func:`open_image` reads -> an OME-NGFF 0.5 image (Zarr v3, with a
pyramid and the pixel size), chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store

from chunkseg._redact import redact_attrs, secrets_of
from chunkseg.errors import (
    InvalidTypeError,
    InvalidValueError,
)

from . import _ome
from ._check import int_pair, positive_int
from .io._locations import _check_storage_options, _fspath
from .io.api import open_image
from .outputs import _pyramid
from .outputs._arrays import ArrayWriter, check_aligned, create_array
from .outputs._lifecycle import writing
from .outputs._ownership import stamp
from .outputs._target import describe_location
from .outputs._variables import pixel_grid, var_coord_attrs, write_coords
from .scheduling import compute

AXES = ("c", "y", "x")
"""Axes of every level of an ingested image (NGFF: the channel axis before the space axes)."""


def _normalise_chunks(chunks: int | Sequence[int]) -> tuple[int, int]:
    """``chunks`` as ``(cy, cx)``: :func:`chunkseg._check.int_pair`, positive; a longer sequence
    is told that the channel axis is always one chunk."""
    if isinstance(chunks, Sequence) and not isinstance(chunks, str) and len(chunks) != 2:
        raise InvalidValueError(
            f"`chunks` must be an int or a pair (cy, cx) of ints; the channel axis is always one "
            f"chunk. Got {chunks!r} (length {len(chunks)})."
        )
    return int_pair(chunks, "chunks", minimum=1)


def ingest(
    source: Any,
    store: str | os.PathLike[str] | Store,
    *,
    chunks: int | tuple[int, int] = 1024,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
    compressor_level: int = 3,
    progress: bool = False,
    array_name: str | None = None,
    isel: Mapping[str, int | slice] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    levels: int | None = None,
) -> zarr.Group:
    """Convert an image into an OME-NGFF 0.5 image: a Zarr v3 group with a pyramid of chunked,
    zstd-compressed arrays and the pixel size, one chunk at a time.

    Parameters
    ----------
    source : any
        Anything :func:`open_image` accepts: NumPy, Dask, xarray or Zarr array, Zarr group, or a
        path/URL of a Zarr store or a PNG/JPEG/TIFF file.
    store : str, os.PathLike or zarr.abc.store.Store
        Where to write: local path, fsspec URL (``s3://bucket/image.zarr``) or zarr store. The
        NGFF image is the store's root group.
    chunks : int or (int, int), default 1024
        Zarr chunk size ``(cy, cx)`` in pixels; an int means square chunks. The channel axis is
        always one chunk, so the chunk shape is ``(C, cy, cx)``. Clipped to each level's size.
    overwrite : bool, default False
        Replace a Zarr store chunkseg wrote at ``store`` (every node stamped
        ``attrs["chunkseg_version"]``). A location that holds anything else, at any depth
        (other files, a Zarr node chunkseg did not write) is never deleted. On a local
        filesystem the new store is built beside the old one and renamed into place only once
        complete, so a failed run leaves the earlier store as it was
        (:mod:`chunkseg.outputs._lifecycle`).
    storage_options : mapping, optional
        fsspec options for a URL ``store``; not written to the output.
    compressor_level : int, default 3
        zstd level, 1 (fast) to 22 (small); 0 means zstd's default (3).
    progress : bool, default False
        Show a progress bar on stderr (:mod:`chunkseg.progress`), labelled ``ingesting``.
    array_name : str, optional
        Passed to :func:`open_image` for a Zarr-group ``source``.
    isel : mapping, optional
        One plane of a stack, e.g. ``{"t": 0, "z": 10}`` (CLI ``--planes t=0,z=10``), passed
        to :func:`open_image`: the ingested image is 2-D ``(c, y, x)``, so every leading axis
        longer than 1 needs an index.
    source_storage_options : mapping, optional
        fsspec options for a URL ``source`` (``storage_options`` is for ``store``).
    levels : int, optional
        Pyramid levels, full resolution included (1: none). Default: halve until the larger
        side is at most 512 px (:func:`chunkseg.outputs._pyramid.level_shapes`), as
        :func:`predict_to_zarr` with ``ome=True``.

    Returns
    -------
    zarr.Group
        The NGFF image. Its arrays ``"0"``, ``"1"``, ... are the levels, ``"0"`` the full
        resolution ``(C, Y, X)`` and level ``k`` ``(C, ceil(Y / 2^k), ceil(X / 2^k))``, all of
        the source's dtype, ``dimension_names`` ``("c", "y", "x")``, chunks
        ``(C, min(cy, Y_k), min(cx, X_k))``, one :class:`zarr.codecs.ZstdCodec`. The group's
        ``attrs["ome"]["multiscales"]`` (NGFF 0.5, written with ome-zarr-py) has axes ``c``
        (channel), ``y``, ``x`` (space, with the unit of the source's pixel size where it has
        one: TIFF resolution tags, an NGFF source's transforms, an xarray source's evenly
        spaced ``y``/``x`` coordinates with ``units``) and, per level, ``scale`` = pixel size
        ``* 2^k`` and ``translation`` = the centre of its first pixel (the centre of the
        ``2^k x 2^k`` square it summarises); in pixels on both axes where NGFF cannot
        describe the grid (:func:`chunkseg.outputs._variables.pixel_grid`: e.g. a north-up
        GeoTIFF). The source's ``y``/``x`` and scalar coordinates (a GeoTIFF's or rioxarray
        DataArray's ``spatial_ref``: CRS and transform) are stored beside ``"0"`` as arrays
        ``y``, ``x``, ``spatial_ref``, which its CF ``coordinates``/``grid_mapping`` attrs
        name, where the NGFF metadata cannot hold them (scalar coordinates; ``y``/``x`` left
        in pixels). ``attrs["source"]`` names the source (no
        credentials); ``attrs["complete"]`` of the group and of ``"0"`` is True (False until
        the last level was written: chunkseg refuses to read an incomplete store as an
        input). :func:`open_image` (and so every chunkseg command) reads the store as level 0
        with those ``y``/``x`` coordinates (else the NGFF ones, in the physical unit) and
        scalar coordinates.

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If ``store`` already holds data and ``overwrite`` is False (nothing is written), or it
        holds anything but a Zarr store chunkseg wrote.
    chunkseg.errors.MissingDependencyError
        If ome-zarr-py, which writes the NGFF metadata, is not installed (nothing is written).
    TypeError, ValueError, FileNotFoundError
        For a bad ``source`` (see :func:`open_image`), bad ``chunks``, ``levels`` or
        ``compressor_level``, or ``store`` overlapping a path ``source``.

    Notes
    -----
    Never loads the whole image: the source is read lazily (see :func:`open_image`), rechunked to
    exactly the Zarr chunks and written with :func:`dask.array.store` (``lock=False``), so each
    task writes whole Zarr chunks and peak memory is a few chunks per worker thread, e.g. for
    3 x 1024 x 1024 uint16 chunks about 6 MiB each, plus the source blocks that overlap them.
    Each further level is computed from the level before it as stored, one task per chunk
    reading four chunks (the NaN-aware mean of each 2 x 2 square, rounded for integer images:
    :func:`chunkseg.outputs._pyramid.downsample_mean`; the scheme of ome-zarr-py's and
    ngff-zarr's writers, factor 2 per level). Chunks of level 0 equal to the fill value 0 are
    not stored (Zarr's default); they read back as 0.
    """
    cy, cx = _normalise_chunks(chunks)
    if isinstance(compressor_level, bool) or not isinstance(compressor_level, int | np.integer):
        raise InvalidTypeError(
            f"`compressor_level` must be an int from 0 to 22. Got {compressor_level!r}."
        )
    if not 0 <= compressor_level <= 22:
        raise InvalidValueError(f"`compressor_level` must be an int from 0 to 22. Got {compressor_level}.")
    if levels is not None:
        levels = positive_int(levels, "levels", "Pyramid levels, full resolution included: "
                              "pass levels >= 1, or drop `levels` for the default.")
    _ome._ome("`chunkseg ingest`")  # ome-zarr-py is needed: say so before anything is written
    if isinstance(store, Store):
        if storage_options is not None:
            raise InvalidValueError(
                "`storage_options` must be None when `store` is a zarr store object. "
                "Got storage_options; configure the store object instead."
            )
        target: str | Store = store
        options = None
    elif isinstance(store, str | os.PathLike):
        target = _fspath(store, "store")
        options = _check_storage_options(storage_options, target, "store")
    else:
        raise InvalidTypeError(
            "`store` must be a str or os.PathLike path, an fsspec URL or a zarr store. "
            f"Got {type(store).__name__}."
        )
    with writing(target, source=source, overwrite=overwrite, storage_options=options,
                 what="chunkseg ingest") as out:
        image = open_image(source, storage_options=source_storage_options,
                           array_name=array_name, isel=isel)
        height, width, channels = image.shape
        shapes = _pyramid.level_shapes((height, width), levels)
        data = image.data.transpose(2, 0, 1).rechunk((channels, min(cy, height),
                                                      min(cx, width)))
        source_name = image.attrs["source"]
        group = zarr.open_group(
            out.store, mode="w", zarr_format=3,
            storage_options=options if out.store is target else None,
            attributes=stamp({"source": source_name, "complete": False}))
        # what the NGFF metadata cannot hold -- scalar coordinates (a GeoTIFF's spatial_ref:
        # CRS, transform), y/x that pixel_grid leaves in pixels (north-up) -- is stored with
        # y/x beside level 0, which names them (CF), so open_image reads them back
        scale, translation, units = pixel_grid(image.coords)
        secrets = secrets_of((storage_options, source_storage_options))
        coords = {n: xr.Variable(c.dims, c.values, redact_attrs(c.attrs, secrets))
                  for n, c in image.coords.items() if n in ("y", "x") or c.ndim == 0}
        in_ngff = (scale, translation) != ([1.0, 1.0], [0.0, 0.0])  # NGFF holds y/x
        if in_ngff and not any(c.ndim == 0 for c in coords.values()):
            coords = {}
        arrays = [create_array(
            group, name=str(k), shape=(channels,) + shape,
            chunks=(channels,) + _pyramid.level_chunks((cy, cx), shape), dtype=image.dtype,
            compressor=zarr.codecs.ZstdCodec(level=int(compressor_level)),
            dimension_names=AXES,
            attributes={"source": source_name, "complete": False, **var_coord_attrs(coords)}
            if k == 0 else {"level": k}) for k, shape in enumerate(shapes)]
        write_coords(group, coords, None)
        check_aligned("image", data.chunks, arrays[0].chunks)
        # the NGFF metadata first: an interrupted ingest is then an NGFF image whose level 0
        # says it is incomplete (open_image refuses it and says so)
        _ome.write_multiscales(group, [str(k) for k in range(len(arrays))], scale, translation,
                               units, name="image", channel_axis="c")
        location = describe_location(target)
        writer = ArrayWriter(arrays[0], location, "image",
                             fix="Free space (or fix the store) and ingest again with "
                                 "overwrite=True (CLI: --overwrite).")
        # the libraries' warnings while it writes, without credentials
        compute(da.store(data, writer, lock=False, compute=False), progress=progress,
                label="ingesting", secrets=secrets)
        _pyramid.write_levels([(arrays, "mean")], location, progress=progress)
        arrays[0].attrs["complete"] = True  # last: every level is written
        group.attrs["complete"] = True
    if out.staged:  # the group now lives at the output's own path
        group = zarr.open_group(target, mode="r")
    return group
