""":func:`ingest`: anything :func:`open_image` reads -> a Zarr v3 array, chunk by chunk."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import zarr
import zarr.errors
from zarr.abc.store import Store

from chunkseg._redact import secrets_of
from chunkseg.errors import (
    InvalidTypeError,
    InvalidValueError,
)

from ._check import int_pair
from ._version import __version__
from .io._axes import DIMS
from .io._locations import _check_storage_options, _fspath
from .io.api import open_image
from .outputs._arrays import ArrayWriter, check_aligned, create_array
from .outputs._lifecycle import writing
from .outputs._target import MARKER, describe_location
from .scheduling import compute


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
    source_storage_options: Mapping[str, Any] | None = None,
) -> zarr.Array:
    """Convert an image into a chunked, zstd-compressed Zarr v3 array, one chunk at a time.

    Parameters
    ----------
    source : any
        Anything :func:`open_image` accepts: NumPy, Dask, xarray or Zarr array, Zarr group, or a
        path/URL of a Zarr store or a PNG/JPEG/TIFF file.
    store : str, os.PathLike or zarr.abc.store.Store
        Where to write: local path, fsspec URL (``s3://bucket/image.zarr``) or zarr store. The
        array is written at the store's root.
    chunks : int or (int, int), default 1024
        Zarr chunk size ``(cy, cx)`` in pixels; an int means square chunks. The channel axis is
        always one chunk, so the chunk shape is ``(cy, cx, C)``. Clipped to the image size.
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
    source_storage_options : mapping, optional
        fsspec options for a URL ``source`` (``storage_options`` is for ``store``).

    Returns
    -------
    zarr.Array
        The written array: shape ``(Y, X, C)``, the source's dtype, ``dimension_names``
        ``("y", "x", "c")``, chunks ``(min(cy, Y), min(cx, X), C)``, one
        :class:`zarr.codecs.ZstdCodec`, ``attrs["source"]`` naming the source (no credentials),
        ``attrs["complete"]`` True (False until the last chunk was written: chunkseg refuses
        to read an incomplete store as an input).

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If ``store`` already holds data and ``overwrite`` is False (nothing is written), or it
        holds anything but a Zarr store chunkseg wrote.
    TypeError, ValueError, FileNotFoundError
        For a bad ``source`` (see :func:`open_image`), bad ``chunks`` or ``compressor_level``,
        or ``store`` overlapping a path ``source``.

    Notes
    -----
    Never loads the whole image: the source is read lazily (see :func:`open_image`), rechunked to
    exactly the Zarr chunks and written with :func:`dask.array.store` (``lock=False``), so each
    task writes whole Zarr chunks and peak memory is a few chunks per worker thread, e.g. for
    1024 x 1024 x 3 uint16 chunks about 6 MiB each, plus the source blocks that overlap them.
    Chunks equal to the fill value 0 are not stored (Zarr's default); they read back as 0.
    """
    cy, cx = _normalise_chunks(chunks)
    if isinstance(compressor_level, bool) or not isinstance(compressor_level, int | np.integer):
        raise InvalidTypeError(
            f"`compressor_level` must be an int from 0 to 22. Got {compressor_level!r}."
        )
    if not 0 <= compressor_level <= 22:
        raise InvalidValueError(f"`compressor_level` must be an int from 0 to 22. Got {compressor_level}.")
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
                           array_name=array_name)
        height, width, channels = image.shape
        zarr_chunks = (min(cy, height), min(cx, width), channels)

        data = image.data.rechunk(zarr_chunks)
        check_aligned("image", data.chunks, zarr_chunks)
        array = create_array(
            out.store, shape=image.shape, chunks=zarr_chunks, dtype=image.dtype,
            compressor=zarr.codecs.ZstdCodec(level=int(compressor_level)), dimension_names=DIMS,
            attributes={"source": image.attrs["source"], MARKER: __version__,
                        "complete": False},
            storage_options=options if out.store is target else None, overwrite=overwrite)
        writer = ArrayWriter(array, describe_location(target), "image",
                             fix="Free space (or fix the store) and ingest again with "
                                 "overwrite=True (CLI: --overwrite).")
        # the libraries' warnings while it writes, without credentials
        compute(da.store(data, writer, lock=False, compute=False), progress=progress,
                label="ingesting", secrets=secrets_of((storage_options, source_storage_options)))
        array.attrs["complete"] = True  # last: every chunk is written
    if out.staged:  # the array now lives at the output's own path
        array = zarr.open_array(target, mode="r")
    return array
