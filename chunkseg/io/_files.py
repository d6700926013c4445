"""The image-file backends: PNG/JPEG through Pillow, TIFF through tifffile (tile by tile)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors

from chunkseg.errors import InputReadError, InvalidValueError, NotFoundError

from .._geo import geotiff_coords
from .._ome import ngff_unit
from ._axes import _finish, _to_stack, lead_coords
from ._locations import _access_refused, _is_url, _reason, _redact
from ._zarr import _zarr_dim_names

if TYPE_CHECKING:
    from numpy.typing import DTypeLike


#: An uncompressed TIFF whose data lies in one strip larger than this is memory-mapped instead, so
#: that a Dask task reads only its own window rather than the whole page.
_MEMMAP_MIN_BYTES = 32 * 2**20


#: GeoTIFF's georeferencing tags (ModelPixelScale, ModelTiepoint, ModelTransformation): a file
#: with a transform but no GeoKeyDirectory (no CRS) is georeferenced too.
_GEOTIFF_TAGS = (33550, 33922, 34264)


def _tiff_coords(location: str, storage_options: Mapping[str, Any] | None,
                 shape_yx: Sequence[int]) -> dict[str, xr.Variable]:
    """``y``/``x`` coordinates (pixel centres) of a TIFF. A GeoTIFF's are its georeferencing,
    read with rioxarray (:func:`chunkseg._geo.geotiff_coords`: ``y``, ``x`` and the
    ``spatial_ref`` coordinate holding the CRS and transform); without rioxarray it has none
    (pixels), with a warning. Otherwise they come from the resolution tags
    (``XResolution``, ``YResolution``, ``ResolutionUnit``; ImageJ's ``unit`` where present),
    with ``units``. Empty when the file has no physical unit (no resolution tags, or
    ResolutionUnit NONE and no ImageJ unit)."""
    import tifffile

    with contextlib.ExitStack() as stack:
        if _is_url(location):
            import fsspec

            opened = stack.enter_context(
                fsspec.open(location, mode="rb", **(storage_options or {})))
        else:
            opened = location
        tif = stack.enter_context(tifffile.TiffFile(opened))
        page = tif.pages.first
        if page.is_geotiff or any(t in page.tags for t in _GEOTIFF_TAGS):
            if not isinstance(opened, str):
                opened.seek(0)
            geo = geotiff_coords(opened, _redact(location))
            if geo is None:
                return {}  # no rioxarray: pixels (it warned), not the resolution tags
            return {n: v for n, v in geo.items()
                    if v.ndim == 0 or v.size == shape_yx[("y", "x").index(n)]}
        if "XResolution" not in page.tags or "YResolution" not in page.tags:
            return {}  # tifffile's defaults (1 pixel per inch) are not a pixel size
        unit = {2: "inch", 3: "centimeter", 4: "millimeter", 5: "micrometer"}.get(
            int(page.resolutionunit))
        ij_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
        if ij_unit:
            unit = ngff_unit(ij_unit) or unit
        if unit is None:
            return {}
        rx, ry = page.get_resolution()
    if not (rx > 0 and ry > 0):
        return {}
    return {dim: xr.Variable(dim, (np.arange(n) * (1.0 / r)).astype(float), {"units": unit})
            for dim, n, r in (("y", shape_yx[0], ry), ("x", shape_yx[1], rx))}


def _read_pil(location: str, storage_options: dict[str, Any] | None) -> np.ndarray:
    """Decode a PNG/JPEG whole: ``(Y, X)`` or ``(Y, X, C)``, its own dtype (palette -> RGB(A)).

    Raises InvalidValueError for a file over Pillow's decompression-bomb limit (it would be
    decoded whole), InputReadError for one Pillow cannot decode or that refuses access."""
    import fsspec
    from PIL import Image, UnidentifiedImageError

    try:
        with fsspec.open(location, mode="rb", **(storage_options or {})) as fh, \
                Image.open(fh) as img:
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            return np.asarray(img)
    except Image.DecompressionBombError as err:
        raise InvalidValueError(
            f"`image` file {_redact(location)!r} must be small enough for Pillow to decode "
            f"whole (PNG and JPEG are not tiled). Got {_reason(err)}. Convert it to a tiled "
            "TIFF (e.g. `vips tiffsave in.png out.tif --tile --bigtiff`), which chunkseg reads "
            "tile by tile (or `chunkseg ingest` that into Zarr); or, for a file you trust and "
            "the memory to decode it, raise Pillow's limit (`PIL.Image.MAX_IMAGE_PIXELS`)."
        ) from err
    except PermissionError as err:
        raise _access_refused(err, location, "image") from err
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError) as err:  # Pillow: not an image, truncated, a broken chunk
        # (Pillow's "cannot identify" names the file object, not the file: leave it out)
        why = ("not an image Pillow can identify" if isinstance(err, UnidentifiedImageError)
               else _reason(err))
        raise InputReadError(
            f"`image` file {_redact(location)!r} must be a readable PNG or JPEG. Got a file "
            f"Pillow cannot decode ({why}). It may be truncated or not the format its suffix "
            "says: check it (open it in an image viewer), or export it again."
        ) from err


def _read_npy(location: str, name: str, mmap_mode: str | None = None) -> np.ndarray:
    """A local ``.npy`` file given for parameter ``name`` (``window``, ``mask``, ``truth``...).

    ``np.load`` without pickles (``mmap_mode="r"`` maps it instead of reading it). A missing
    file is a NotFoundError, a file that is not a NumPy array file (truncated, another format,
    pickled objects) an InvalidValueError, both naming ``name``.
    """
    try:
        return np.load(location, mmap_mode=mmap_mode, allow_pickle=False)
    except FileNotFoundError as err:
        raise NotFoundError(
            f"`{name}` must be an existing .npy file. Got {location!r}, which does not exist."
        ) from err
    except (ValueError, EOFError, OSError) as err:  # numpy's errors on a file that is not .npy
        raise InvalidValueError(
            f"`{name}` file must be a NumPy .npy array (saved with numpy.save). Got "
            f"{location!r}, which numpy cannot load ({_reason(err)}); it may be truncated or "
            f"hold pickled objects. Save the array again with `numpy.save('{name}.npy', array)`."
        ) from err


def _open_tiff_store(location: str, storage_options: dict[str, Any] | None) -> zarr.Array:
    """Series 0, level 0 of a TIFF as a read-only zarr.Array over tifffile's ZarrTiffStore."""
    import tifffile

    if _is_url(location):
        import fsspec

        handle = fsspec.open(location, mode="rb", **(storage_options or {})).open()
        store = tifffile.imread(handle, aszarr=True, series=0, level=0)
    else:
        store = tifffile.imread(location, aszarr=True, series=0, level=0)
    # A ZarrTiffStore over a file handle does not report itself read-only; zarr then refuses "r".
    return zarr.open_array(store=store, mode="r" if store.read_only else "r+")


class _LazyTiff:
    """Picklable, lazily opened TIFF image for :func:`dask.array.from_array`.

    tifffile's ZarrTiffStore holds an open file and a lock, so neither it nor a zarr.Array over it
    can be pickled (a distributed scheduler pickles the graph). This holds only the location and
    opens the file on first read in each process; reads are thread-safe (tifffile locks the file).

    Parameters
    ----------
    location : str
        Local path or fsspec URL of the TIFF.
    storage_options : dict, optional
        fsspec options for a URL.
    shape : tuple of int
        Shape of series 0, level 0.
    dtype : numpy.dtype
        Its dtype.
    memmap : bool
        Read through :func:`tifffile.memmap` (local, uncompressed, contiguous data only) rather
        than through the ZarrTiffStore.
    """

    def __init__(
        self,
        location: str,
        storage_options: dict[str, Any] | None,
        shape: tuple[int, ...],
        dtype: DTypeLike,
        *,
        memmap: bool,
    ) -> None:
        self.location = location
        self.storage_options = storage_options
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.memmap = memmap
        self._array: Any = None
        self._lock = threading.Lock()

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _open(self) -> Any:
        with self._lock:
            if self._array is None:
                if self.memmap:
                    import tifffile

                    self._array = tifffile.memmap(self.location, series=0, level=0, mode="r")
                else:
                    self._array = _open_tiff_store(self.location, self.storage_options)
            return self._array

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.array(self._open()[key], dtype=self.dtype)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_array"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        stamp: tuple[Any, ...] = ()
        if not _is_url(self.location):
            stat = os.stat(self.location)
            stamp = (stat.st_size, stat.st_mtime_ns)
        return ("chunkseg-tiff", _redact(self.location), stamp, self.shape, str(self.dtype))


def _tiff_memmappable(location: str) -> bool:
    """Whether series 0 of a local TIFF is uncompressed and contiguous (so it can be memory-mapped)."""
    import tifffile

    with tifffile.TiffFile(location) as tif:
        return tif.series[0].levels[0].dataoffset is not None


def _open_tiff(location: str, storage_options: dict[str, Any] | None,
               isel: Mapping[str, int | slice] | None = None,
               stack: bool = False) -> xr.DataArray:
    """:func:`open_image` for a TIFF: lazy, one Dask task per TIFF tile or strip."""
    import tifffile

    try:
        array = _open_tiff_store(location, storage_options)
    except PermissionError as err:
        raise _access_refused(err, location, "image") from err
    except tifffile.TiffFileError as err:
        raise InputReadError(
            f"`image` file {_redact(location)!r} must be a readable TIFF. Got a file tifffile "
            f"cannot read ({_reason(err)}). It may be truncated or not the format its suffix "
            "says: check it (`tifffile.TiffFile(path)`), or export it again."
        ) from err
    shape, dtype, chunks = array.shape, array.dtype, array.chunks
    names = _zarr_dim_names(array)
    names = tuple(n.lower() for n in names) if names else None
    chunk_bytes = int(np.prod(chunks)) * np.dtype(dtype).itemsize
    memmap = (
        not _is_url(location) and chunk_bytes > _MEMMAP_MIN_BYTES and _tiff_memmappable(location)
    )
    if memmap:
        # One huge uncompressed strip: memory-map it and let Dask window it ("auto" in y and x).
        spatial = {"y", "x"}
        auto = tuple(
            "auto" if (names and names[i] in spatial) or (not names and i < 2) else -1
            for i in range(len(shape))
        )
        chunks = da.core.normalize_chunks(auto, shape, limit=_MEMMAP_MIN_BYTES, dtype=dtype)
    reader = _LazyTiff(location, storage_options, shape, dtype, memmap=memmap)
    data = da.from_array(reader, chunks=chunks, meta=np.empty((0,) * len(shape), dtype=dtype))
    data, _, positions = _to_stack(data, names, isel, stack)
    coords = {**lead_coords(positions),
              **_tiff_coords(location, storage_options, data.shape[-3:-1])}
    return _finish(data, _redact(location), coords=coords, lead=tuple(positions))
