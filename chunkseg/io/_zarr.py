"""The Zarr backend: arrays, groups, NGFF multiscales and their coordinates, region reads."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
import zarr.errors

from chunkseg._redact import redact_text
from chunkseg.errors import (
    InputReadError,
    InvalidValueError,
    NotFoundError,
)

from .._version import MARKER
from ._axes import _canonical_dim, _finish, _to_stack, _to_yxc, lead_coords
from ._locations import _ACCEPTED, _access_refused, _missing_bucket, _reason, _redact

if TYPE_CHECKING:
    pass


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
                 shape: Sequence[int], source_dims: Mapping[str, Any],
                 positions: Mapping[str, np.ndarray] | None = None) -> dict[str, xr.Variable]:
    """``y``/``x`` coordinates (pixel centres, with ``units``) of dataset ``path`` of an NGFF
    multiscale, from its ``scale``/``translation`` and the multiscale's own transforms (applied
    after the dataset's, as the spec says), and those of a stack's leading dims (``t``, ``z``:
    at the source indices ``positions`` of its planes). Empty when ``path`` is not one of its
    datasets."""
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
    positions = positions or {}
    for dim in ("y", "x", *positions):
        original = source_dims.get(dim)
        if original is None or original not in names:
            continue
        i = list(names).index(original)
        axis = axes[i] if i < len(axes) and isinstance(axes[i], Mapping) else {}
        attrs = {"units": str(axis["unit"])} if axis.get("unit") else {}
        index = positions.get(dim, np.arange(shape[i]))
        coords[dim] = xr.Variable(dim, translation[i] + scale[i] * index, attrs)
    return coords


def _stored_coords(parent: zarr.Group, array: zarr.Array, names: Sequence[str],
                   source_dims: Mapping[str, Any]) -> dict[str, xr.Variable]:
    """The coordinates stored beside ``array`` in ``parent``, as xarray (and chunkseg's
    outputs and :func:`chunkseg.ingest`) write them: for ``y`` and ``x``, a 1-D array named as
    that dimension, of its length (pixel centres, with their attrs); and the scalar arrays the
    CF ``coordinates`` and ``grid_mapping`` attributes of ``array`` name (rioxarray's
    ``spatial_ref``: the CRS and transform). Coordinates that are not stored are left out."""
    coords = {}
    members = set(parent.array_keys())
    for dim in ("y", "x"):
        original = source_dims.get(dim)
        if original is None or original not in names or str(original) not in members:
            continue
        c = parent[str(original)]
        if c.ndim == 1 and c.shape[0] == array.shape[list(names).index(original)]:
            coords[dim] = xr.Variable(dim, c[...], _coord_attrs(c))
    linked = str(array.attrs.get("coordinates") or "").split()
    mapping = array.attrs.get("grid_mapping")
    for scalar in linked + ([str(mapping)] if isinstance(mapping, str) else []):
        if scalar in members and scalar not in coords and parent[scalar].ndim == 0:
            coords[scalar] = xr.Variable((), parent[scalar][...], _coord_attrs(parent[scalar]))
    return coords


def _coord_attrs(array: zarr.Array) -> dict[str, Any]:
    """A stored coordinate's attrs, without chunkseg's ownership stamp."""
    return {k: v for k, v in array.attrs.asdict().items() if k != MARKER}


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
    node: zarr.Array | zarr.Group, array_name: str | None, source: str,
    isel: Mapping[str, int | slice] | None = None, stack: bool = False,
) -> xr.DataArray:
    """:func:`open_image` for an already opened Zarr array or group."""
    ngff_axes = multiscale = name = group = None
    if isinstance(node, zarr.Group):
        group = node
        multiscale = _ngff_multiscale(node.attrs.asdict())
        node, name, ngff_axes = _pick_group_array(node, array_name)
        ngff_axes = ngff_axes or (_ngff_axis_names(multiscale) if multiscale else None)
        source = f"{source.rstrip('/')}/{name}"
    elif array_name is not None:
        raise InvalidValueError(
            "`array_name` must be None unless `image` is a Zarr group. "
            f"Got array_name={array_name!r} for a Zarr array; drop `array_name`."
        )
    if node.attrs.get(MARKER) is not None and node.attrs.get("complete") is False:
        raise InputReadError(
            f"`image` must be a finished store; {source!r} was written by chunkseg ingest, "
            "which did not finish (attrs['complete'] is False: some chunks are missing and "
            "would read as 0). Ingest it again with --overwrite.")
    names = _zarr_dim_names(node) or ngff_axes
    data, source_dims, positions = _to_stack(_zarr_to_dask(node), names, isel, stack)
    coords = lead_coords(positions)
    if multiscale is not None and names is not None:
        coords.update(_ngff_coords(multiscale, name, names, node.shape, source_dims,
                                   positions))
    if group is not None and names is not None:  # the stored coordinates, where there are
        parent = group[name.rsplit("/", 1)[0]] if "/" in name else group
        coords.update(_stored_coords(parent, node, names, source_dims))
    out = _finish(data, source, coords=coords, lead=tuple(positions))
    reader = ZarrRegionReader.for_array(node, names)
    if reader is not None and out.dtype == node.dtype:
        if names is not None and (isel or positions):  # the planes selected, and a stack's
            canonical = [_canonical_dim(n) for n in names]
            reader = ZarrRegionReader(
                node, names, {canonical.index(_canonical_dim(k)): v for k, v in
                              (isel or {}).items() if not isinstance(v, slice)},
                [(canonical.index(d), p) for d, p in positions.items()])
        out.encoding["chunkseg_stack_reader" if positions else "chunkseg_reader"] = reader
    return out


class ZarrRegionReader:
    """Read a ``(y, x, c)`` region of a Zarr image with one Zarr selection, no Dask graph.

    :func:`open_image` puts one in the DataArray's ``encoding["chunkseg_reader"]`` for Zarr
    inputs; the engine's block tasks use it to read their block straight from the store
    (zarr fetches and decodes the chunks concurrently). Picklable: a cluster's workers open
    the same store.

    For a selected plane (``isel``) or a stack's planes, ``fixed`` holds the index of the
    plane along each leading axis; :meth:`plane` gives the reader of one plane of a stack
    (:func:`open_image` puts the stack's in ``encoding["chunkseg_stack_reader"]``).

    Parameters
    ----------
    array : zarr.Array
    names : sequence of str or None
        The array's dimension names, as :func:`open_image` read them.
    fixed : mapping of int to int, optional
        Source axis -> the index read along it (a selected plane).
    lead : sequence of (int, ndarray), optional
        A stack's leading axes: each one's source axis and the source index of each of its
        planes (:meth:`plane`).
    """

    def __init__(self, array: zarr.Array, names: Sequence[object] | None,
                 fixed: Mapping[int, int] | None = None,
                 lead: Sequence[tuple[int, np.ndarray]] = ()):
        self.array = array
        self.names = None if names is None else tuple(str(n) for n in names)
        self.fixed = {int(a): int(i) % array.shape[a] for a, i in (fixed or {}).items()}
        self.lead = tuple(lead)
        if self.names is None:
            self.axes = (0, 1)
        else:
            canonical = [_canonical_dim(n) for n in self.names]
            self.axes = (canonical.index("y"), canonical.index("x"))

    def plane(self, index: Sequence[int]) -> ZarrRegionReader:
        """The reader of plane ``index`` of a stack (its indices along the leading dims)."""
        fixed = dict(self.fixed)
        fixed.update({axis: int(positions[i])
                      for (axis, positions), i in zip(self.lead, index, strict=True)})
        return ZarrRegionReader(self.array, self.names, fixed)

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
        sel: list[Any] = [slice(None)] * self.array.ndim
        for axis, i in self.fixed.items():  # a selected plane: its axes dropped
            sel[axis] = i
        sel[self.axes[0]], sel[self.axes[1]] = slice(y0, y1), slice(x0, x1)
        try:
            region = np.asarray(self.array[tuple(sel)])
        except (RuntimeError, OSError) as err:  # a codec's error on bad bytes, or the store's
            raise InputReadError(
                f"`image` pixels y {y0}..{y1}, x {x0}..{x1} could not be read from "
                f"{_redact(str(self.array.store_path))!r}: {type(err).__name__}: "
                f"{redact_text(str(err))}. A chunk "
                "of the input may be truncated or corrupt: write the input again (chunkseg "
                "ingest) and rerun."
            ) from err
        names = self.names if self.names is None else \
            [n for a, n in enumerate(self.names) if a not in self.fixed]
        data, _ = _to_yxc(region, names)
        return data


def _open_zarr_location(
    location: str, storage_options: dict[str, Any] | None, array_name: str | None,
    isel: Mapping[str, int | slice] | None = None, stack: bool = False,
) -> xr.DataArray:
    """:func:`open_image` for a Zarr store given as a local path or an fsspec URL."""
    kwargs: dict[str, Any] = {"mode": "r"}
    if storage_options is not None:
        kwargs["storage_options"] = storage_options
    try:
        node = zarr.open(store=location, **kwargs)
    except (FileNotFoundError, NotADirectoryError) as err:
        missing = _missing_bucket(location, storage_options, "image")
        if missing is not None:
            raise missing from err
        raise NotFoundError(
            f"`image` must be {_ACCEPTED}. Got {_redact(location)!r}, where no Zarr array or "
            "group was found (and the suffix is not an image-file suffix)."
        ) from err
    except PermissionError as err:
        raise _access_refused(err, location, "image") from err
    except (json.JSONDecodeError, UnicodeDecodeError, zarr.errors.MetadataValidationError,
            zarr.errors.NodeTypeValidationError) as err:  # a zarr.json zarr cannot parse
        raise InputReadError(
            f"`image` store {_redact(location)!r} must have readable Zarr metadata. Got a "
            f"zarr.json (or .zarray/.zgroup) zarr cannot parse: {_reason(err)}. The store may be "
            "truncated or only partly written: write it again (chunkseg ingest) and rerun."
        ) from err
    return _open_zarr_node(node, array_name, _redact(location), isel, stack)
