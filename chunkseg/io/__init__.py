"""Reading images of any size as lazy ``(y, x, c)`` arrays, and writing them to Zarr v3.

Two entry points:

* :func:`open_image` turns a NumPy, Dask, xarray or Zarr array, a Zarr store (local path or fsspec
  URL) or a PNG/JPEG/TIFF file into a Dask-backed :class:`xarray.DataArray` with dims exactly
  ``("y", "x", "c")``. Nothing is read until the array is computed; the Dask chunks are the store's
  chunks (Zarr chunks or shards, TIFF tiles or strips).
* :func:`ingest` writes anything :func:`open_image` accepts into a Zarr v3 array, chunk by chunk, so
  that a TIFF larger than memory is converted without ever being loaded whole.

:func:`store_has_data` is the check that protects existing outputs; the engine reuses it.

The package splits by concern, as xarray's ``backends/``: ``_locations`` (URLs and paths,
credentials kept out of messages), ``_axes`` (any layout -> ``(y, x, c)``), ``_zarr`` (Zarr and
NGFF), ``_files`` (PNG/JPEG with Pillow, TIFF with tifffile), ``_open`` (:func:`open_image`),
``_stores`` and ``_ingest``. Only the names below are public.
"""

from __future__ import annotations

from ._ingest import ingest
from ._locations import IMAGE_FILE_SUFFIXES
from ._open import open_image
from ._stores import is_zarr_url_or_path, store_has_data
from ._zarr import ZarrRegionReader

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "open_image",
    "ingest",
    "store_has_data",
    "is_zarr_url_or_path",
    "ZarrRegionReader",
]
