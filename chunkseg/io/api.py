""":func:`open_image`: any accepted input -> a lazy ``(y, x, c)`` DataArray."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors

from chunkseg._check import isel_arg
from chunkseg._redact import redact_text, secrets_of, url_secrets
from chunkseg.errors import (
    ChunksegError,
    InputReadError,
    InvalidTypeError,
    InvalidValueError,
    NotFoundError,
)

from ._axes import (
    _canonical_dim,
    _check_dtype,
    _finish,
    _in_memory_to_dask,
    _to_stack,
    lead_coords,
)
from ._files import _open_tiff, _read_pil
from ._locations import (
    _ACCEPTED,
    IMAGE_FILE_SUFFIXES,
    TIFF_SUFFIXES,
    _check_storage_options,
    _fspath,
    _image_suffix,
    _is_url,
    _redact,
)
from ._zarr import _describe_zarr, _open_zarr_location, _open_zarr_node

if TYPE_CHECKING:
    pass




def _open_location(
    image: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None,
    array_name: str | None,
    isel: Mapping[str, int | slice] | None = None,
    stack: bool = False,
) -> xr.DataArray:
    """:func:`open_image` for a path or URL: image file by suffix, otherwise a Zarr store."""
    location = _fspath(image, "image")
    options = _check_storage_options(storage_options, location, "image")
    if not _is_url(location):
        return _open_checked_location(location, options, array_name, isel, stack)
    # fsspec and the storage clients repeat the URL (its user name, its query) in their errors:
    # a URL's failure is one chunkseg error, redacted, without the library's exception chained
    secrets = secrets_of(options) + url_secrets(location)
    try:
        return _open_checked_location(location, options, array_name, isel, stack)
    except ChunksegError as err:
        failure: ChunksegError = err
        if len(err.args) == 1 and isinstance(err.args[0], str):
            err.args = (redact_text(err.args[0], secrets),)
    except OSError as err:
        reason = redact_text(" ".join(str(err).split()), secrets) or "no details"
        if isinstance(err, FileNotFoundError):
            failure = NotFoundError(
                f"`image` must be an existing image file or Zarr store. Got {_redact(location)!r}"
                f", which could not be found ({type(err).__name__}: {reason}). Check the URL and "
                "`storage_options` (credentials, endpoint)."
            )
        else:
            failure = InputReadError(
                f"`image` must be a readable image file or Zarr store. Got {_redact(location)!r}"
                f", which could not be read ({type(err).__name__}: {reason}). Check the URL, "
                "`storage_options` (credentials, endpoint) and the network."
            )
    failure.__cause__ = failure.__context__ = None
    failure.__suppress_context__ = True
    raise failure  # outside the except clauses: nothing chained


def _open_checked_location(
    location: str, options: dict[str, Any] | None, array_name: str | None,
    isel: Mapping[str, int | slice] | None, stack: bool,
) -> xr.DataArray:
    """:func:`_open_location` once ``location`` and ``options`` are checked."""
    if not _is_url(location) and not os.path.exists(location):
        raise NotFoundError(
            f"`image` must be an existing path or a URL. Got {location!r}, which does not exist."
        )
    suffix = _image_suffix(location)
    is_file = _is_url(location) or os.path.isfile(location)
    if suffix in IMAGE_FILE_SUFFIXES and is_file:
        if array_name is not None:
            raise InvalidValueError(
                "`array_name` must be None unless `image` is a Zarr group. "
                f"Got array_name={array_name!r} for an image file; drop `array_name`."
            )
        if suffix in TIFF_SUFFIXES:
            return _open_tiff(location, options, isel, stack)
        data, _, _ = _to_stack(_read_pil(location, options), None, isel)
        return _finish(_in_memory_to_dask(data), _redact(location))
    if not _is_url(location) and os.path.isfile(location):
        raise InvalidValueError(
            f"`image` must be {_ACCEPTED}. Got the file {location!r} with unsupported suffix "
            f"{suffix!r}; convert it to TIFF or Zarr first."
        )
    return _open_zarr_location(location, options, array_name, isel, stack)


def open_image(
    image: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    array_name: str | None = None,
    isel: Mapping[str, int | slice] | None = None,
    stack: bool = False,
) -> xr.DataArray:
    """Open an image of any size as a lazy, Dask-backed ``(y, x, c)`` DataArray.

    Parameters
    ----------
    image : ndarray, dask.array.Array, xarray.DataArray, zarr.Array, zarr.Group, str or os.PathLike
        The image, in one of these forms:

        * ``(Y, X)`` or ``(Y, X, C)`` NumPy or Dask array (a 2-D array gets ``C = 1``; leading
          axes of length 1, as in ``(1, Y, X, C)``, are squeezed). A 3-D array is always read
          as channel-last, with at most 16 channels (an unnamed array with a longer
          last axis is refused): transpose a ``(C, Y, X)`` array first, or name its dims with
          xarray.
        * :class:`xarray.DataArray` with dims ``y`` and ``x``, optionally ``c`` (``channel``,
          ``band`` are aliases of ``c``), in any order; other dims must have length 1 and are
          squeezed. Index coordinates of ``y``, ``x`` and ``c`` and the attrs are kept.
        * :class:`zarr.Array`: its ``dimension_names`` (v3) or ``_ARRAY_DIMENSIONS`` (v2) are
          used as above, so ``("c", "y", "x")`` and OME-NGFF ``(t, c, z, y, x)`` with ``t = z = 1``
          work; without names it is read like a NumPy array.
        * :class:`zarr.Group`: the array named ``array_name``; else one named ``image``; else the
          first (full-resolution) dataset of its OME-NGFF ``multiscales``; else its only array.
        * path or fsspec URL (``s3://bucket/x.zarr``, ``memory://x.zarr``) of a Zarr store holding
          such an array or group.
        * path or URL of a ``.png``, ``.jpg``/``.jpeg`` (Pillow; palette images become RGB/RGBA)
          or ``.tif``/``.tiff`` (tifffile: series 0, full resolution) file. A GeoTIFF's CRS
          and transform are read with rioxarray when it is installed (``chunkseg[geo]``):
          ``y``/``x`` at the pixel centres and a ``spatial_ref`` coordinate, as
          :func:`rioxarray.open_rasterio` gives them; without it, a warning and no coordinates.
    storage_options : mapping, optional
        fsspec options (credentials, endpoint, ...) for a URL ``image``; never stored in the
        result. Must be None for a local path.
    array_name : str, optional
        Path of the image array inside a Zarr group (e.g. ``"0"`` or ``"raw/0"``). Only for a
        group; required when the group's choice is ambiguous.
    isel : mapping of str to int or slice, optional
        Planes to read, by dimension name, applied lazily before the axes are read (as
        :meth:`xarray.DataArray.isel`): ``{"z": 10}`` drops ``z``, ``{"z": slice(10, 20)}``
        keeps planes 10..19, ``{"t": 0, "z": 3}`` selects one plane of an OME-Zarr
        ``(t, c, z, y, x)``. Only axes other than ``y``, ``x`` and ``c``, and only where the
        image names its axes (xarray dims, Zarr ``dimension_names``, NGFF ``axes``, TIFF axes).
        An int of every leading axis gives the plain ``(y, x, c)`` image.
    stack : bool, default False
        Keep the named axes other than ``y``, ``x``, ``c`` that are longer than 1 (``t``,
        ``z``...) in front, in the source's order: ``(*lead, y, x, c)``, a stack of planes
        (what :func:`chunkseg.predict` runs plane by plane). Each leading dim gets a
        coordinate: the xarray input's own, else the planes' indices in the source. Without it
        such axes are refused (select a plane with ``isel``).

    Returns
    -------
    xarray.DataArray
        ``(Y, X, C)``, dims ``("y", "x", "c")``, backed by a :class:`dask.array.Array` of the
        source's dtype (uint8, uint16, float32, ...; byte order made native). Chunks are the
        store's: Zarr shards or chunks, TIFF tiles or strips; in-memory inputs are chunked
        automatically with ``c`` whole. Named ``"image"`` (an input DataArray keeps its name).
        Coordinates ``y``/``x`` where the source has them (an xarray input's, stored Zarr
        coordinates, NGFF ``scale``/``translation``, TIFF resolution tags, a GeoTIFF's
        georeferencing), and scalar ones such as rioxarray's ``spatial_ref`` (CRS, transform).
        ``attrs["source"]`` says where the image came from (a path or URL without credentials,
        or the type of the in-memory object).

    Raises
    ------
    TypeError
        If ``image`` is of none of the accepted types, or its dtype is not boolean, integer or
        floating-point; if ``storage_options`` is not a mapping.
    ValueError
        If the axes cannot be read as ``(y, x[, c])`` (1-D, 4-D+ with more than one non-singleton
        extra axis and no ``stack``, unknown dim names, an unnamed 3-D array with more than 16
        channels last); if ``isel`` names an axis the image does not have (or ``y``, ``x``,
        ``c``), an index out of range or an empty slice, or the image has no axis names;
        the image is empty, the file suffix is not supported,
        a group's image array is ambiguous or ``array_name`` is not one of its arrays, or a
        PNG/JPEG is over Pillow's decompression-bomb limit.
    FileNotFoundError
        If a local path does not exist, or no Zarr array or group is found at the location
        (a URL's bucket that does not exist is named).
    chunkseg.errors.InputReadError
        If the store's ``zarr.json`` is not JSON, a PNG/JPEG/TIFF file does not decode, or the
        store or file refuses access (S3's 403 Forbidden: check the credentials). A URL's errors name it
        without its user name, password or query, and chain no storage library's exception
        (those repeat the URL whole).

    Notes
    -----
    Never loads the whole image: only metadata is read here, and each Dask task reads one chunk.
    Two exceptions: PNG and JPEG are not tiled, so they are decoded whole (use TIFF or Zarr for
    big images; Pillow refuses files over about 179 million pixels); a TIFF stored as one
    compressed strip can only be read whole, in one task. A TIFF
    stored as one uncompressed strip is memory-mapped and windowed instead.

    The TIFF reader reopens the file in each worker process, so the graph can be sent to a
    ``distributed`` cluster; a local path must then be visible to the workers.

    Examples
    --------
    >>> import numpy as np
    >>> open_image(np.zeros((4, 6), dtype="uint8")).shape
    (4, 6, 1)
    """
    if array_name is not None and not isinstance(array_name, str):
        raise InvalidTypeError(
            f"`array_name` must be a str path inside the Zarr group, or None. Got {array_name!r}."
        )
    isel = isel_arg(isel)
    if not isinstance(stack, bool):
        raise InvalidTypeError(f"`stack` must be True or False. Got {stack!r}.")
    if isinstance(image, str | os.PathLike):
        return _open_location(image, storage_options, array_name, isel, stack)

    _check_storage_options(storage_options, None, "image")
    if storage_options is not None:
        raise InvalidValueError(
            "`storage_options` is only used when `image` is a path or URL. "
            f"Got storage_options with a {type(image).__name__}; drop `storage_options`."
        )
    if isinstance(image, zarr.Array | zarr.Group):
        return _open_zarr_node(image, array_name, _describe_zarr(image), isel, stack)
    if array_name is not None:
        raise InvalidValueError(
            "`array_name` must be None unless `image` is a Zarr group. "
            f"Got array_name={array_name!r} for a {type(image).__name__}; drop `array_name`."
        )
    if isinstance(image, xr.DataArray):
        return _open_dataarray(image, isel, stack)
    if isinstance(image, da.Array):
        data, _, _ = _to_stack(image, None, isel)
        return _finish(data, "dask.array.Array")
    if isinstance(image, np.ndarray):
        data, _, _ = _to_stack(image, None, isel)
        return _finish(_in_memory_to_dask(data), "numpy.ndarray")
    hint = " Pick one variable, e.g. `ds['image']`." if isinstance(image, xr.Dataset) else ""
    raise InvalidTypeError(f"`image` must be {_ACCEPTED}. Got {type(image).__name__}.{hint}")


def _open_dataarray(image: xr.DataArray, isel: Mapping[str, int | slice] | None,
                    stack: bool) -> xr.DataArray:
    """:func:`open_image` for an xarray.DataArray (kept lazy: a non-Dask one is chunked first)."""
    _check_dtype(image.dtype)  # before `.chunk`, whose automatic chunks fail on objects
    if image.chunks is None:
        # `.data` would load a lazily indexed backend array; `.chunk` wraps it without reading.
        image = image.chunk("auto")
    data, source_dims, positions = _to_stack(image.data, image.dims, isel, stack)
    if isel:  # the coordinates of the planes kept (the data above is selected the same way)
        names = {_canonical_dim(d): d for d in image.dims}
        image = image.isel({names[_canonical_dim(d)]: sel for d, sel in isel.items()})
    lead = tuple(positions)
    coords = {
        new: xr.Variable(new, image.indexes[old], image[old].attrs)
        for new, old in source_dims.items()
        if old is not None and old in image.indexes
    }
    # scalar coordinates travel too (rioxarray's ``spatial_ref`` holds the CRS in its attrs)
    coords = {**lead_coords({d: p for d, p in positions.items() if d not in coords}), **coords}
    coords.update({name: c.variable for name, c in image.coords.items()
                   if c.ndim == 0 and name not in coords})
    source = image.attrs.get("source")
    if not isinstance(source, str):
        source = "xarray.DataArray" + (f" {image.name!r}" if image.name is not None else "")
    source = redact_text(source)  # it is copied into outputs' attrs
    name = image.name if isinstance(image.name, str) else None
    return _finish(data, source, coords=coords, attrs=image.attrs, name=name, lead=lead)
