"""Reading images of any size as lazy ``(y, x, c)`` arrays.

The entry point:

* :func:`open_image` turns a NumPy, Dask, xarray or Zarr array, a Zarr store (local path or fsspec
  URL) or a PNG/JPEG/TIFF file into a Dask-backed :class:`xarray.DataArray` with dims exactly
  ``("y", "x", "c")``. Nothing is read until the array is computed; the Dask chunks are the store's
  chunks (Zarr chunks or shards, TIFF tiles or strips).

Writing is :mod:`chunkseg.outputs`' job (:func:`chunkseg.ingest`, which converts any input to
Zarr, lives in :mod:`chunkseg._ingest` and writes through it); :func:`store_has_data`, which
the output checks use, stays here because it reads a location. Nothing here imports
:mod:`chunkseg.outputs`: reading sits below writing.

The package splits by concern, as xarray's ``backends/``: ``_locations`` (URLs and paths,
credentials kept out of messages), ``_axes`` (any layout -> ``(y, x, c)``), ``_zarr`` (Zarr and
NGFF), ``_files`` (PNG/JPEG with Pillow, TIFF with tifffile), ``api`` (:func:`open_image`, public),
``_stores``. Only the names below are public.
"""

from __future__ import annotations

from ._locations import IMAGE_FILE_SUFFIXES
from ._stores import is_zarr_url_or_path, store_has_data
from ._zarr import ZarrRegionReader
from .api import open_image

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "open_image",
    "store_has_data",
    "is_zarr_url_or_path",
    "ZarrRegionReader",
]
