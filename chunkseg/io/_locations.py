"""URLs and paths of inputs: recognising, describing without credentials, checking."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from chunkseg._redact import is_url as _is_url
from chunkseg._redact import redact_location as _redact
from chunkseg.errors import (
    InputReadError,
    InvalidTypeError,
    InvalidValueError,
    NotFoundError,
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


def _reason(error: BaseException) -> str:
    """The first line of ``error``'s text (its type where it has none), for a message."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].rstrip('.')}" if lines else type(error).__name__


def _access_refused(error: PermissionError, location: str, name: str) -> InputReadError:
    """The error for a store or file that refused to be read (S3's 403 Forbidden or Access
    Denied, a local file without read permission): names the location without credentials,
    and the fix."""
    fix = ("Check the credentials (`storage_options` key/secret or token, AWS_ACCESS_KEY_ID / "
           "AWS_SECRET_ACCESS_KEY / AWS_PROFILE for S3) and that they may read this bucket and "
           "path" if _is_url(location) else "Check the file's permissions (it must be readable)")
    return InputReadError(
        f"`{name}` must be readable with the credentials given. Got {_redact(location)!r}, "
        f"which refused access ({_reason(error)}). {fix}."
    )


def _missing_bucket(location: str, storage_options: Mapping[str, Any] | None,
                    name: str) -> NotFoundError | None:
    """The error for a URL whose bucket does not exist, or None (not an object store, the
    bucket exists, or the store cannot tell)."""
    if not _is_url(location):
        return None
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(location, **(storage_options or {}))
        split = getattr(fs, "split_path", None)  # object stores (s3fs, gcsfs): bucket, key
        if split is None:
            return None
        bucket = split(path)[0]
        if not bucket or fs.exists(bucket):
            return None
    except (OSError, ValueError):  # the store cannot say; the caller's message stands
        return None
    return NotFoundError(
        f"`{name}` must be in an existing bucket. Got {_redact(location)!r}, whose bucket "
        f"{bucket!r} does not exist (or these credentials cannot see it). Check the bucket name "
        "in the URL, and the endpoint (`storage_options` endpoint_url, AWS_ENDPOINT_URL)."
    )
