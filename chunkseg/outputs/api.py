"""Reading an output: the public way to open what :func:`chunkseg.predict_to_zarr` wrote and to
see how far its run got (both read the manifest that :mod:`chunkseg.outputs._manifest` keeps)."""

from __future__ import annotations

from typing import Any

import xarray as xr

from ..errors import NotAnOutputError
from ._manifest import MANIFEST, _open, _so, open_output_group, warn_if_incomplete
from ._target import describe_location

__all__ = ["open_output", "output_progress"]


def open_output(store: Any, *, storage_options: dict | None = None) -> xr.Dataset:
    """Open a :func:`predict_to_zarr` output as an xarray Dataset; warn if it is incomplete.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    xarray.Dataset
        Dask-backed. Chunks not yet written read as 0. The full-resolution variables with their
        coordinates (``class`` names; ``y``, ``x`` where the input had them); for an OME-layout
        output (``ome=True``) also ``labels``, read from the NGFF label image
        ``labels/classes/0`` as class indices ``0..K-1`` (that image stores class ``k`` as
        ``k + 1`` and 0 where nothing was predicted; :mod:`chunkseg._ome`), so ``labels``
        holds the same values in both layouts.

    Warns
    -----
    chunkseg.errors.IncompleteOutputWarning
        If the run that writes it has not finished (``attrs["complete"]`` is not True), with the
        number of chunks written; ``predict_to_zarr(..., resume=True)`` finishes it.
    """
    import zarr

    so = _so(store, storage_options)
    ds = _open(store, so, consolidated=False)
    if ds.attrs.get("complete") is not True:
        warn_if_incomplete(zarr.open_group(store, mode="r", storage_options=so),
                           describe_location(store), stacklevel=2)
    return ds


def output_progress(store: Any, *, storage_options: dict | None = None) -> tuple[int, int]:
    """How far a :func:`predict_to_zarr` run has written its output.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    (int, int)
        Chunks written (marked in the ``chunkseg/done`` manifest) and chunks in all.

    Raises
    ------
    chunkseg.errors.NotAnOutputError
        If ``store`` holds no chunkseg output, or one without the manifest (a
        ``FileNotFoundError`` and a ``ValueError``).
    chunkseg.errors.InputReadError
        If the store cannot be read (a connection refused, no permission).
    """

    group = open_output_group(store, storage_options=storage_options)
    try:
        done = group[MANIFEST]["done"][...]
    except KeyError:
        raise NotAnOutputError(
            f"`store` {describe_location(store)!r} is a chunkseg output without a completion "
            "manifest ('chunkseg/done'): not one written by predict_to_zarr.") from None
    return int((done == 1).sum()), int(done.size)
