"""URLs and paths of inputs: recognising, describing without credentials, checking."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chunkseg._redact import is_url as _is_url
from chunkseg._redact import redact_location as _redact
from chunkseg.errors import (
    InvalidTypeError,
    InvalidValueError,
)

if TYPE_CHECKING:
    pass


#: Suffixes read with Pillow (the whole file is decoded at once; these formats are not tiled).
PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")


#: Suffixes read with tifffile, tile by tile (or strip by strip).
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


#: Every image-file suffix :func:`open_image` reads; any other path is opened as a Zarr store.
IMAGE_FILE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + TIFF_SUFFIXES


def _refuse_url_password(location: str, name: str) -> None:
    """Refuse a URL carrying a password (``s3://user:pw@bucket``): fsspec and the storage
    clients repeat the URL in their own errors, so it would reach messages and logs."""
    if _is_url(location) and any(":" in urlsplit(p).netloc.rpartition("@")[0]
                                 for p in location.split("::")):
        raise InvalidValueError(
            f"`{name}` must not carry a password in the URL (user:password@). Got "
            f"{_redact(location)!r} (credentials removed here). Pass them in `storage_options` "
            "or the usual environment variables (AWS_SECRET_ACCESS_KEY, ...) instead."
        )


def _image_suffix(path: str) -> str:
    """Lower-case suffix of ``path`` (a URL's query string ignored), e.g. ``".tif"``."""
    last = path.split("::")[0]
    if _is_url(last):
        last = urlsplit(last).path
    return os.path.splitext(last.rstrip("/"))[1].lower()


def _fspath(value: str | os.PathLike[str], name: str) -> str:
    """``value`` as a ``str`` path (``~`` expanded for local paths), or TypeError naming ``name``."""
    path = os.fspath(value)
    if not isinstance(path, str):
        raise InvalidTypeError(
            f"`{name}` must be a str or os.PathLike path or URL, not bytes. Got {value!r}. "
            "Decode it first, e.g. `path.decode()`."
        )
    _refuse_url_password(path, name)
    return path if _is_url(path) else os.path.expanduser(path)


def _check_storage_options(
    storage_options: Mapping[str, Any] | None, location: str | None, name: str
) -> dict[str, Any] | None:
    """Normalise ``storage_options`` to a dict (or None) and check that it can be used."""
    if storage_options is None:
        return None
    if not isinstance(storage_options, Mapping):
        raise InvalidTypeError(
            f"`storage_options` must be a mapping of fsspec options or None. "
            f"Got {type(storage_options).__name__}."
        )
    if location is not None and not _is_url(location):
        raise InvalidValueError(
            f"`storage_options` is only used when `{name}` is an fsspec URL (s3://, gs://, "
            f"memory://, ...). Got a local path {location!r}; drop `storage_options`."
        )
    return dict(storage_options)

_ACCEPTED = (
    "a numpy.ndarray or dask.array.Array of shape (y, x) or (y, x, c), an xarray.DataArray with "
    "dims including 'y' and 'x' (and optionally 'c'), a zarr.Array or zarr.Group, or a path or "
    "URL to a Zarr store or to a .png/.jpg/.jpeg/.tif/.tiff file"
)
