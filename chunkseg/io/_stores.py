"""Is a path a Zarr store, and does it hold data (the check that protects outputs)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store

from chunkseg.errors import (
    InvalidTypeError,
    InvalidValueError,
)

from ._locations import IMAGE_FILE_SUFFIXES, _check_storage_options, _fspath, _image_suffix, _is_url

if TYPE_CHECKING:
    pass


def is_zarr_url_or_path(x: object) -> bool:
    """Whether :func:`open_image` would read ``x`` as a Zarr store rather than an image file.

    Parameters
    ----------
    x : object
        Anything; only ``str`` and ``os.PathLike`` can be True.

    Returns
    -------
    bool
        True for a URL or path whose suffix is not an image-file suffix (``.png``, ``.jpg``,
        ``.jpeg``, ``.tif``, ``.tiff``) and that is a URL, ends with ``.zarr`` or is an existing
        local directory. Nothing is opened (no network access); a True answer does not promise
        that a Zarr store is there.
    """
    if not isinstance(x, str | os.PathLike):
        return False
    path = os.fspath(x)
    if not isinstance(path, str):
        return False
    if _image_suffix(path) in IMAGE_FILE_SUFFIXES:
        return False
    if _is_url(path):
        return True
    path = os.path.expanduser(path)
    return path.rstrip("/\\").lower().endswith(".zarr") or os.path.isdir(path)


def store_has_data(
    store: str | os.PathLike[str] | Store, *, storage_options: Mapping[str, Any] | None = None
) -> bool:
    """Whether writing to ``store`` would replace something.

    Parameters
    ----------
    store : str, os.PathLike or zarr.abc.store.Store
        Local path, fsspec URL (``s3://bucket/out.zarr``) or zarr store object.
    storage_options : mapping, optional
        fsspec options for a URL. Must be None otherwise.

    Returns
    -------
    bool
        True if there is anything at the location: a Zarr array or group, a non-empty directory
        or prefix, or a file. False if it does not exist or is an empty directory.

    Raises
    ------
    TypeError
        If ``store`` is not a path, URL or zarr store, or ``storage_options`` is not a mapping.
    ValueError
        If ``storage_options`` is given for a local path or a store object.

    Notes
    -----
    Lists at most one directory level; reads no data.
    """
    if isinstance(store, Store):
        if storage_options is not None:
            raise InvalidValueError(
                "`storage_options` must be None when `store` is a zarr store object. "
                "Got storage_options; configure the store object instead."
            )
        from zarr.core.sync import sync

        return not sync(store.is_empty(""))
    if not isinstance(store, str | os.PathLike):
        raise InvalidTypeError(
            "`store` must be a str or os.PathLike path, an fsspec URL or a zarr store. "
            f"Got {type(store).__name__}."
        )
    location = _fspath(store, "store")
    options = _check_storage_options(storage_options, location, "store")
    if not _is_url(location):
        if os.path.isdir(location):
            with os.scandir(location) as entries:
                return any(True for _ in entries)
        return os.path.lexists(location)
    import fsspec

    fs, path = fsspec.core.url_to_fs(location, **(options or {}))
    if not fs.exists(path):
        return False
    if fs.isdir(path):
        return bool(fs.ls(path, detail=False))
    return True
