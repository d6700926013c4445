"""Reading images of any size as lazy ``(y, x, c)`` arrays, and writing them to Zarr v3.

Two entry points:

* :func:`open_image` turns a NumPy, Dask, xarray or Zarr array, a Zarr store (local path or fsspec
  URL) or a PNG/JPEG/TIFF file into a Dask-backed :class:`xarray.DataArray` with dims exactly
  ``("y", "x", "c")``. Nothing is read until the array is computed; the Dask chunks are the store's
  chunks (Zarr chunks or shards, TIFF tiles or strips).
* :func:`ingest` writes anything :func:`open_image` accepts into a Zarr v3 array, chunk by chunk, so
  that a TIFF larger than memory is converted without ever being loaded whole.

:func:`store_has_data` is the check that protects existing outputs; the engine reuses it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors
from zarr.abc.store import Store

from chunkseg.errors import (
    InputReadError,
    InvalidTypeError,
    InvalidValueError,
    NotFoundError,
)

if TYPE_CHECKING:
    from numpy.typing import DTypeLike

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "open_image",
    "ingest",
    "store_has_data",
    "is_zarr_url_or_path",
]

#: Suffixes read with Pillow (the whole file is decoded at once; these formats are not tiled).
PIL_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
#: Suffixes read with tifffile, tile by tile (or strip by strip).
TIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")
#: Every image-file suffix :func:`open_image` reads; any other path is opened as a Zarr store.
IMAGE_FILE_SUFFIXES: tuple[str, ...] = PIL_SUFFIXES + TIFF_SUFFIXES

DIMS: tuple[str, str, str] = ("y", "x", "c")

#: Dimension names (compared in lower case) read as the channel axis ``c``. ``s`` is tifffile's
#: "samples per pixel" axis (RGB), ``c`` its separate-channel axis.
_CHANNEL_ALIASES = frozenset(
    {"c", "channel", "channels", "band", "bands", "s", "sample", "samples"}
)

#: An uncompressed TIFF whose data lies in one strip larger than this is memory-mapped instead, so
#: that a Dask task reads only its own window rather than the whole page.
_MEMMAP_MIN_BYTES = 32 * 2**20

_ACCEPTED = (
    "a numpy.ndarray or dask.array.Array of shape (y, x) or (y, x, c), an xarray.DataArray with "
    "dims including 'y' and 'x' (and optionally 'c'), a zarr.Array or zarr.Group, or a path or "
    "URL to a Zarr store or to a .png/.jpg/.jpeg/.tif/.tiff file"
)


# --------------------------------------------------------------------------------------------------
# Small helpers: URLs, paths, descriptions
# --------------------------------------------------------------------------------------------------


def _is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``memory://...``, ``zip::s3://...``)."""
    return "://" in path or "::" in path


def _redact(location: str) -> str:
    """``location`` without user name, password, query or fragment (no credentials in attrs)."""
    if not _is_url(location):
        return location
    parts = []
    for part in location.split("::"):
        split = urlsplit(part)
        netloc = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return "::".join(parts)


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


def _describe_zarr(node: zarr.Array | zarr.Group) -> str:
    """Short location of a Zarr node, without credentials, e.g. ``/data/a.zarr/0``."""
    store = node.store
    root = getattr(store, "root", None)
    if root is not None:
        base = str(root)
    elif hasattr(store, "fs") and hasattr(store, "path"):
        protocol = getattr(store.fs, "protocol", "fsspec")
        if not isinstance(protocol, str):
            protocol = protocol[0]
        base = f"{protocol}://{str(store.path).lstrip('/')}"
    else:
        base = f"<{type(store).__name__}>"
    path = node.path.strip("/")
    return f"{base.rstrip('/')}/{path}" if path else base


# --------------------------------------------------------------------------------------------------
# Axis normalisation: any named or unnamed layout -> (y, x, c)
# --------------------------------------------------------------------------------------------------


def _canonical_dim(name: object) -> str:
    """Lower-cased dimension name, with every channel alias mapped to ``"c"``."""
    lowered = str(name).lower()
    return "c" if lowered in _CHANNEL_ALIASES else lowered


def _to_yxc(data: Any, names: Sequence[object] | None) -> tuple[Any, dict[str, Any]]:
    """Reorder ``data`` to ``(y, x, c)``: squeeze singleton extra axes, add ``c`` if missing.

    Parameters
    ----------
    data : ndarray or dask.array.Array
        Any number of dimensions. NumPy-API functions are used, so a Dask array stays lazy.
    names : sequence of str, optional
        One name per axis. Without names a 2-D array is ``(y, x)``, a 3-D one ``(y, x, c)``, and
        leading axes of length 1 are squeezed first (``(1, y, x, c)`` from a batch of one).

    Returns
    -------
    data : ndarray or dask.array.Array
        ``(Y, X, C)``, same type and dtype as the input.
    source_dims : dict
        For ``"y"``, ``"x"`` and ``"c"``, the input's dimension name (None where there was none).

    Raises
    ------
    ValueError
        If the axes cannot be read as ``(y, x[, c])``.
    """
    shape = tuple(data.shape)
    if names is None:
        while data.ndim > 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim == 2:
            return data[:, :, np.newaxis], dict.fromkeys(DIMS)
        if data.ndim == 3:
            return data, dict.fromkeys(DIMS)
        raise InvalidValueError(
            "`image` must be 2-D (y, x) or 3-D (y, x, c); leading axes of length 1 are squeezed. "
            f"Got shape {shape}. Select one plane (e.g. `image[0]`), or pass an xarray.DataArray "
            "whose dims name the axes ('y', 'x', 'c')."
        )

    original = [str(n) for n in names]
    canonical = [_canonical_dim(n) for n in original]
    if len(canonical) != data.ndim:
        raise InvalidValueError(
            f"`image` must have one dimension name per axis. Got names {tuple(original)} for "
            f"shape {shape}."
        )
    repeated = sorted({n for n in canonical if canonical.count(n) > 1})
    if repeated or "y" not in canonical or "x" not in canonical:
        raise InvalidValueError(
            "`image` must have dims named 'y' and 'x' (once each), optionally a channel dim 'c' "
            "('channel', 'band' and tifffile's 'S' are read as 'c'), and any other dim of length 1. "
            f"Got dims {tuple(original)} with shape {shape}. Rename the dims, e.g. "
            "`arr.rename({'row': 'y', 'col': 'x'})`."
        )
    extra = [i for i, n in enumerate(canonical) if n not in DIMS]
    too_long = [(original[i], shape[i]) for i in extra if shape[i] != 1]
    if too_long:
        raise InvalidValueError(
            "`image` must have only dims 'y', 'x' and 'c' longer than 1; other dims are squeezed. "
            f"Got dims {tuple(original)} with shape {shape}: {too_long} cannot be squeezed. "
            "Select one index (e.g. `arr.isel(t=0)`), or rename the channel dim to 'c'."
        )
    data = np.squeeze(data, axis=tuple(extra)) if extra else data
    kept = [n for n in canonical if n in DIMS]
    kept_original = [o for o, n in zip(original, canonical, strict=True) if n in DIMS]
    if "c" not in kept:
        data = np.expand_dims(data, axis=-1)
        kept.append("c")
        kept_original.append(None)
    order = [kept.index(d) for d in DIMS]
    data = np.transpose(data, order)
    return data, {d: kept_original[i] for d, i in zip(DIMS, order, strict=True)}


def _finish(
    data: da.Array,
    source: str,
    *,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> xr.DataArray:
    """Validate a ``(y, x, c)`` Dask array and wrap it as the :func:`open_image` DataArray."""
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise InvalidTypeError(
            "`image` must have a boolean, integer or floating-point dtype. "
            f"Got {dtype}. Convert it first, e.g. `image.astype('float32')`."
        )
    if 0 in data.shape:
        raise InvalidValueError(
            f"`image` must have at least one pixel and one channel. Got shape {data.shape} (y, x, c)."
        )
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
    out_attrs = dict(attrs or {})
    out_attrs["source"] = source
    return xr.DataArray(
        data, dims=DIMS, coords=dict(coords or {}), attrs=out_attrs, name=name or "image"
    )


def _in_memory_to_dask(data: np.ndarray) -> da.Array:
    """Wrap an in-memory ``(y, x, c)`` array, chunked automatically with ``c`` whole."""
    return da.from_array(data, chunks={0: "auto", 1: "auto", 2: -1})


# --------------------------------------------------------------------------------------------------
# Zarr
# --------------------------------------------------------------------------------------------------


def _zarr_dim_names(array: zarr.Array) -> tuple[str, ...] | None:
    """The array's own dimension names: v3 ``dimension_names`` or v2 ``_ARRAY_DIMENSIONS``."""
    names = getattr(array.metadata, "dimension_names", None)
    if names is None:
        names = array.attrs.get("_ARRAY_DIMENSIONS")
    if not names or any(n is None for n in names) or len(names) != array.ndim:
        return None
    return tuple(str(n) for n in names)


def _ngff_multiscale(attrs: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first OME-NGFF multiscale in group ``attrs`` (v0.5 ``ome`` key, or v0.4 top level)."""
    for holder in (attrs.get("ome"), attrs):
        if isinstance(holder, Mapping):
            multiscales = holder.get("multiscales")
            if isinstance(multiscales, Sequence) and multiscales:
                first = multiscales[0]
                if isinstance(first, Mapping) and first.get("datasets"):
                    return first
    return None


def _ngff_axis_names(multiscale: Mapping[str, Any]) -> tuple[str, ...] | None:
    """Axis names of an NGFF multiscale (dicts with ``name`` in v0.4+, plain strings in v0.3)."""
    axes = multiscale.get("axes")
    if not axes:
        return None
    return tuple(str(a["name"]) if isinstance(a, Mapping) else str(a) for a in axes)


def _ngff_coords(multiscale: Mapping[str, Any], path: str, names: Sequence[str],
                 shape: Sequence[int], source_dims: Mapping[str, Any]) -> dict[str, xr.Variable]:
    """``y``/``x`` coordinates (pixel centres, with ``units``) of dataset ``path`` of an NGFF
    multiscale, from its ``scale``/``translation`` and the multiscale's own transforms (applied
    after the dataset's, as the spec says). Empty when ``path`` is not one of its datasets."""
    dataset = next((d for d in multiscale.get("datasets", []) if str(d.get("path")) == path), None)
    if dataset is None or len(names) != len(shape):
        return {}
    ndim = len(shape)
    scale, translation = np.ones(ndim), np.zeros(ndim)
    for transforms in (dataset.get("coordinateTransformations") or [],
                       multiscale.get("coordinateTransformations") or []):
        for tr in transforms:
            kind, values = tr.get("type"), tr.get(tr.get("type") or "")
            if not isinstance(values, Sequence) or len(values) != ndim:
                continue  # a transform by "path", or one chunkseg cannot apply: pixel units
            if kind == "scale":
                scale, translation = scale * np.asarray(values, float), \
                    translation * np.asarray(values, float)
            elif kind == "translation":
                translation = translation + np.asarray(values, float)
    axes = multiscale.get("axes") or []
    coords = {}
    for dim in ("y", "x"):
        original = source_dims.get(dim)
        if original is None or original not in names:
            continue
        i = list(names).index(original)
        axis = axes[i] if i < len(axes) and isinstance(axes[i], Mapping) else {}
        attrs = {"units": str(axis["unit"])} if axis.get("unit") else {}
        coords[dim] = xr.Variable(dim, translation[i] + scale[i] * np.arange(shape[i]), attrs)
    return coords


def _tiff_coords(location: str, storage_options: Mapping[str, Any] | None,
                 shape_yx: Sequence[int]) -> dict[str, xr.Variable]:
    """``y``/``x`` coordinates (pixel centres, with ``units``) from a TIFF's resolution tags
    (``XResolution``, ``YResolution``, ``ResolutionUnit``; ImageJ's ``unit`` where present).
    Empty when the file has no physical unit (ResolutionUnit NONE and no ImageJ unit)."""
    import tifffile

    from ._ome import ngff_unit

    with contextlib.ExitStack() as stack:
        if _is_url(location):
            import fsspec

            opened = stack.enter_context(
                fsspec.open(location, mode="rb", **(storage_options or {})))
        else:
            opened = location
        tif = stack.enter_context(tifffile.TiffFile(opened))
        page = tif.pages.first
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


def _pick_group_array(
    group: zarr.Group, array_name: str | None
) -> tuple[zarr.Array, str, tuple[str, ...] | None]:
    """Choose the image array of a Zarr group.

    Order: ``array_name``; an array named ``image``; an OME-NGFF multiscale's first (full
    resolution) dataset; the group's only array. A bioformats2raw layout is entered at ``0``.

    Returns
    -------
    array : zarr.Array
    name : str
        Its path inside ``group``.
    axis_names : tuple of str or None
        Axis names from the NGFF metadata, where that is how the array was found.

    Raises
    ------
    ValueError
        If ``array_name`` is not an array of the group, or the choice is ambiguous.
    """
    arrays = sorted(group.array_keys())
    if array_name is not None:
        try:
            node = group[array_name]
        except KeyError:
            node = None
        if not isinstance(node, zarr.Array):
            raise InvalidValueError(
                f"`array_name` must name an array of the Zarr group. Got {array_name!r}; "
                f"the group's arrays are {arrays}."
            )
        return node, array_name, None
    if "image" in arrays:
        return group["image"], "image", None  # type: ignore[return-value]
    multiscale = _ngff_multiscale(group.attrs.asdict())
    if multiscale is not None:
        path = str(multiscale["datasets"][0]["path"])
        node = group.get(path)
        if isinstance(node, zarr.Array):
            return node, path, _ngff_axis_names(multiscale)
    layout = group.attrs.get("bioformats2raw.layout") or (group.attrs.get("ome") or {}).get(
        "bioformats2raw.layout"
    )
    if layout is not None and isinstance(group.get("0"), zarr.Group):
        array, name, axes = _pick_group_array(group["0"], None)  # type: ignore[arg-type]
        return array, f"0/{name}", axes
    if len(arrays) == 1:
        return group[arrays[0]], arrays[0], None  # type: ignore[return-value]
    raise InvalidValueError(
        "`image` is a Zarr group whose image array is ambiguous: it has no array named 'image', "
        f"no OME-NGFF 'multiscales' metadata and {len(arrays)} arrays {arrays}. "
        "Pass `array_name=` with one of them (CLI: `--array-name`)."
    )


def _zarr_to_dask(array: zarr.Array) -> da.Array:
    """A Dask array over ``array``, one task per Zarr shard (or chunk where unsharded)."""
    chunks = getattr(array, "shards", None) or array.chunks
    return da.from_zarr(array, chunks=chunks)


def _open_zarr_node(
    node: zarr.Array | zarr.Group, array_name: str | None, source: str
) -> xr.DataArray:
    """:func:`open_image` for an already opened Zarr array or group."""
    ngff_axes = multiscale = name = None
    if isinstance(node, zarr.Group):
        multiscale = _ngff_multiscale(node.attrs.asdict())
        node, name, ngff_axes = _pick_group_array(node, array_name)
        ngff_axes = ngff_axes or (_ngff_axis_names(multiscale) if multiscale else None)
        source = f"{source.rstrip('/')}/{name}"
    elif array_name is not None:
        raise InvalidValueError(
            "`array_name` must be None unless `image` is a Zarr group. "
            f"Got array_name={array_name!r} for a Zarr array; drop `array_name`."
        )
    names = _zarr_dim_names(node) or ngff_axes
    data, source_dims = _to_yxc(_zarr_to_dask(node), names)
    coords = {}
    if multiscale is not None and names is not None:
        coords = _ngff_coords(multiscale, name, names, node.shape, source_dims)
    out = _finish(data, source, coords=coords)
    reader = ZarrRegionReader.for_array(node, names)
    if reader is not None and out.dtype == node.dtype:
        out.encoding["chunkseg_reader"] = reader
    return out


class ZarrRegionReader:
    """Read a ``(y, x, c)`` region of a Zarr image with one Zarr selection, no Dask graph.

    :func:`open_image` puts one in the DataArray's ``encoding["chunkseg_reader"]`` for Zarr
    inputs; the engine's block tasks use it to read their block straight from the store
    (zarr fetches and decodes the chunks concurrently). Picklable: a cluster's workers open
    the same store.

    Parameters
    ----------
    array : zarr.Array
    names : sequence of str or None
        The array's dimension names, as :func:`open_image` read them.
    """

    def __init__(self, array: zarr.Array, names: Sequence[object] | None):
        self.array = array
        self.names = None if names is None else tuple(str(n) for n in names)
        if self.names is None:
            self.axes = (0, 1)
        else:
            canonical = [_canonical_dim(n) for n in self.names]
            self.axes = (canonical.index("y"), canonical.index("x"))

    @classmethod
    def for_array(cls, array: zarr.Array, names) -> ZarrRegionReader | None:
        """A reader, or None where the layout is not a plain (named) one."""
        if names is None and array.ndim not in (2, 3):
            return None
        try:
            return cls(array, names)
        except ValueError:
            return None

    def __call__(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0, y1) x [x0, x1)`` as a ``(y, x, c)`` ndarray of the array's dtype."""
        sel = [slice(None)] * self.array.ndim
        sel[self.axes[0]], sel[self.axes[1]] = slice(y0, y1), slice(x0, x1)
        try:
            region = np.asarray(self.array[tuple(sel)])
        except (RuntimeError, OSError) as err:  # a codec's error on bad bytes, or the store's
            raise InputReadError(
                f"`image` pixels y {y0}..{y1}, x {x0}..{x1} could not be read from "
                f"{_redact(str(self.array.store_path))!r}: {type(err).__name__}: {err}. A chunk "
                "of the input may be truncated or corrupt: write the input again (chunkseg "
                "ingest) and rerun."
            ) from err
        data, _ = _to_yxc(region, self.names)
        return data


def _open_zarr_location(
    location: str, storage_options: dict[str, Any] | None, array_name: str | None
) -> xr.DataArray:
    """:func:`open_image` for a Zarr store given as a local path or an fsspec URL."""
    kwargs: dict[str, Any] = {"mode": "r"}
    if storage_options is not None:
        kwargs["storage_options"] = storage_options
    try:
        node = zarr.open(store=location, **kwargs)
    except (FileNotFoundError, NotADirectoryError) as err:
        raise NotFoundError(
            f"`image` must be {_ACCEPTED}. Got {_redact(location)!r}, where no Zarr array or "
            "group was found (and the suffix is not an image-file suffix)."
        ) from err
    return _open_zarr_node(node, array_name, _redact(location))


# --------------------------------------------------------------------------------------------------
# Image files: PNG/JPEG through Pillow, TIFF through tifffile
# --------------------------------------------------------------------------------------------------


def _read_pil(location: str, storage_options: dict[str, Any] | None) -> np.ndarray:
    """Decode a PNG/JPEG whole: ``(Y, X)`` or ``(Y, X, C)``, its own dtype (palette -> RGB(A))."""
    import fsspec
    from PIL import Image

    with fsspec.open(location, mode="rb", **(storage_options or {})) as fh, Image.open(fh) as img:
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        return np.asarray(img)


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


def _open_tiff(location: str, storage_options: dict[str, Any] | None) -> xr.DataArray:
    """:func:`open_image` for a TIFF: lazy, one Dask task per TIFF tile or strip."""
    array = _open_tiff_store(location, storage_options)
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
    data, _ = _to_yxc(data, names)
    return _finish(data, _redact(location), coords=_tiff_coords(location, storage_options,
                                                                data.shape[:2]))


def _open_location(
    image: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None,
    array_name: str | None,
) -> xr.DataArray:
    """:func:`open_image` for a path or URL: image file by suffix, otherwise a Zarr store."""
    location = _fspath(image, "image")
    options = _check_storage_options(storage_options, location, "image")
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
            return _open_tiff(location, options)
        data, _ = _to_yxc(_read_pil(location, options), None)
        return _finish(_in_memory_to_dask(data), _redact(location))
    if not _is_url(location) and os.path.isfile(location):
        raise InvalidValueError(
            f"`image` must be {_ACCEPTED}. Got the file {location!r} with unsupported suffix "
            f"{suffix!r}; convert it to TIFF or Zarr first."
        )
    return _open_zarr_location(location, options, array_name)


# --------------------------------------------------------------------------------------------------
# Public: open_image
# --------------------------------------------------------------------------------------------------


def open_image(
    image: Any,
    *,
    storage_options: Mapping[str, Any] | None = None,
    array_name: str | None = None,
) -> xr.DataArray:
    """Open an image of any size as a lazy, Dask-backed ``(y, x, c)`` DataArray.

    Parameters
    ----------
    image : ndarray, dask.array.Array, xarray.DataArray, zarr.Array, zarr.Group, str or os.PathLike
        The image, in one of these forms:

        * ``(Y, X)`` or ``(Y, X, C)`` NumPy or Dask array (a 2-D array gets ``C = 1``; leading
          axes of length 1, as in ``(1, Y, X, C)``, are squeezed). A 3-D array is always read
          as channel-last: transpose a ``(C, Y, X)`` array first, or name its dims with xarray.
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
          or ``.tif``/``.tiff`` (tifffile: series 0, full resolution) file.
    storage_options : mapping, optional
        fsspec options (credentials, endpoint, ...) for a URL ``image``; never stored in the
        result. Must be None for a local path.
    array_name : str, optional
        Path of the image array inside a Zarr group (e.g. ``"0"`` or ``"raw/0"``). Only for a
        group; required when the group's choice is ambiguous.

    Returns
    -------
    xarray.DataArray
        ``(Y, X, C)``, dims ``("y", "x", "c")``, backed by a :class:`dask.array.Array` of the
        source's dtype (uint8, uint16, float32, ...; byte order made native). Chunks are the
        store's: Zarr shards or chunks, TIFF tiles or strips; in-memory inputs are chunked
        automatically with ``c`` whole. Named ``"image"`` (an input DataArray keeps its name).
        ``attrs["source"]`` says where the image came from (a path or URL without credentials,
        or the type of the in-memory object).

    Raises
    ------
    TypeError
        If ``image`` is of none of the accepted types, or its dtype is not boolean, integer or
        floating-point; if ``storage_options`` is not a mapping.
    ValueError
        If the axes cannot be read as ``(y, x[, c])`` (1-D, 4-D+ with more than one non-singleton
        extra axis, unknown dim names), the image is empty, the file suffix is not supported,
        a group's image array is ambiguous or ``array_name`` is not one of its arrays.
    FileNotFoundError
        If a local path does not exist, or no Zarr array or group is found at the location.

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
    if isinstance(image, str | os.PathLike):
        return _open_location(image, storage_options, array_name)

    _check_storage_options(storage_options, None, "image")
    if storage_options is not None:
        raise InvalidValueError(
            "`storage_options` is only used when `image` is a path or URL. "
            f"Got storage_options with a {type(image).__name__}; drop `storage_options`."
        )
    if isinstance(image, zarr.Array | zarr.Group):
        return _open_zarr_node(image, array_name, _describe_zarr(image))
    if array_name is not None:
        raise InvalidValueError(
            "`array_name` must be None unless `image` is a Zarr group. "
            f"Got array_name={array_name!r} for a {type(image).__name__}; drop `array_name`."
        )
    if isinstance(image, xr.DataArray):
        return _open_dataarray(image)
    if isinstance(image, da.Array):
        data, _ = _to_yxc(image, None)
        return _finish(data, "dask.array.Array")
    if isinstance(image, np.ndarray):
        data, _ = _to_yxc(image, None)
        return _finish(_in_memory_to_dask(data), "numpy.ndarray")
    hint = " Pick one variable, e.g. `ds['image']`." if isinstance(image, xr.Dataset) else ""
    raise InvalidTypeError(f"`image` must be {_ACCEPTED}. Got {type(image).__name__}.{hint}")


def _open_dataarray(image: xr.DataArray) -> xr.DataArray:
    """:func:`open_image` for an xarray.DataArray (kept lazy: a non-Dask one is chunked first)."""
    if image.chunks is None:
        # `.data` would load a lazily indexed backend array; `.chunk` wraps it without reading.
        image = image.chunk("auto")
    data, source_dims = _to_yxc(image.data, image.dims)
    coords = {
        new: xr.Variable(new, image.indexes[old], image[old].attrs)
        for new, old in source_dims.items()
        if old is not None and old in image.indexes
    }
    # scalar coordinates travel too (rioxarray's ``spatial_ref`` holds the CRS in its attrs)
    coords.update({name: c.variable for name, c in image.coords.items()
                   if c.ndim == 0 and name not in coords})
    source = image.attrs.get("source")
    if not isinstance(source, str):
        source = "xarray.DataArray" + (f" {image.name!r}" if image.name is not None else "")
    name = image.name if isinstance(image.name, str) else None
    return _finish(data, source, coords=coords, attrs=image.attrs, name=name)


# --------------------------------------------------------------------------------------------------
# Public: stores
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Public: ingest
# --------------------------------------------------------------------------------------------------


def _normalise_chunks(chunks: int | Sequence[int]) -> tuple[int, int]:
    """``chunks`` as ``(cy, cx)``: an int becomes square; then type and range are checked."""
    if isinstance(chunks, bool):
        raise InvalidTypeError(f"`chunks` must be an int or a pair of ints (cy, cx). Got {chunks!r}.")
    pair: Sequence[Any]
    if isinstance(chunks, int | np.integer):
        pair = (int(chunks), int(chunks))
    elif isinstance(chunks, Sequence) and not isinstance(chunks, str):
        pair = tuple(chunks)
    else:
        raise InvalidTypeError(f"`chunks` must be an int or a pair of ints (cy, cx). Got {chunks!r}.")
    if len(pair) != 2:
        raise InvalidValueError(
            f"`chunks` must be an int or a pair (cy, cx) of ints; the channel axis is always one "
            f"chunk. Got {chunks!r} (length {len(pair)})."
        )
    if not all(isinstance(c, int | np.integer) and not isinstance(c, bool) for c in pair):
        raise InvalidTypeError(f"`chunks` must be an int or a pair of ints (cy, cx). Got {chunks!r}.")
    if any(c < 1 for c in pair):
        raise InvalidValueError(f"`chunks` must be positive. Got {chunks!r}.")
    return int(pair[0]), int(pair[1])


def _chunkseg_version() -> str:
    from . import __version__

    return __version__


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
        Replace a Zarr store chunkseg wrote at ``store`` (``attrs["chunkseg_version"]``). A
        location that holds anything else (other files, a Zarr store chunkseg did not write) is
        never deleted.
    storage_options : mapping, optional
        fsspec options for a URL ``store``; not written to the output.
    compressor_level : int, default 3
        zstd level, 1 (fast) to 22 (small); 0 means zstd's default (3).
    progress : bool, default False
        Show a :class:`dask.diagnostics.ProgressBar` (local schedulers only).
    array_name : str, optional
        Passed to :func:`open_image` for a Zarr-group ``source``.
    source_storage_options : mapping, optional
        fsspec options for a URL ``source`` (``storage_options`` is for ``store``).

    Returns
    -------
    zarr.Array
        The written array: shape ``(Y, X, C)``, the source's dtype, ``dimension_names``
        ``("y", "x", "c")``, chunks ``(min(cy, Y), min(cx, X), C)``, one
        :class:`zarr.codecs.ZstdCodec`, ``attrs["source"]`` naming the source (no credentials).

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
    from ._store import ArrayWriter, check_aligned, create_array
    from ._target import MARKER, check_output_target, describe_location

    check_output_target(target, source=source, overwrite=overwrite, storage_options=options)

    image = open_image(source, storage_options=source_storage_options, array_name=array_name)
    height, width, channels = image.shape
    zarr_chunks = (min(cy, height), min(cx, width), channels)

    data = image.data.rechunk(zarr_chunks)
    check_aligned("image", data.chunks, zarr_chunks)
    array = create_array(
        target, shape=image.shape, chunks=zarr_chunks, dtype=image.dtype,
        compressor=zarr.codecs.ZstdCodec(level=int(compressor_level)), dimension_names=DIMS,
        attributes={"source": image.attrs["source"], MARKER: _chunkseg_version()},
        storage_options=options, overwrite=overwrite)
    writer = ArrayWriter(array, describe_location(target), "image",
                         fix="Free space (or fix the store) and ingest again with "
                             "overwrite=True (CLI: --overwrite).")
    bar: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if progress:
        from dask.diagnostics import ProgressBar

        bar = ProgressBar()
    with bar:
        da.store(data, writer, lock=False, compute=True)
    return array
