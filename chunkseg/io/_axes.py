"""Axis normalisation: any named or unnamed layout -> ``(y, x, c)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr

from chunkseg._check import planes_text
from chunkseg.errors import (
    InvalidTypeError,
    InvalidValueError,
)

if TYPE_CHECKING:
    pass


DIMS: tuple[str, str, str] = ("y", "x", "c")


#: The most channels an unnamed 3-D array may have: a longer last axis is far more likely a
#: plane stack or a channel-first ``(c, y, x)`` array read the wrong way round.
MAX_UNNAMED_CHANNELS = 16


#: Dimension names (compared in lower case) read as the channel axis ``c``. ``s`` is tifffile's
#: "samples per pixel" axis (RGB), ``c`` its separate-channel axis.
_CHANNEL_ALIASES = frozenset(
    {"c", "channel", "channels", "band", "bands", "s", "sample", "samples"}
)


def _canonical_dim(name: object) -> str:
    """Lower-cased dimension name, with every channel alias mapped to ``"c"``."""
    lowered = str(name).lower()
    return "c" if lowered in _CHANNEL_ALIASES else lowered


def _apply_isel(data: Any, names: Sequence[object] | None, isel: Mapping[str, int | slice]
                ) -> tuple[Any, list[object] | None, dict[str, np.ndarray]]:
    """``data[isel]`` along its named leading axes (lazily: plain indexing), the names left,
    and for each axis kept by a slice the source positions of its planes."""
    shape = tuple(data.shape)
    if names is None:
        raise InvalidValueError(
            f"`isel` selects planes by dimension name, but the image's axes have no names (shape "
            f"{shape}). Got isel={planes_text(isel)}. Name the axes: an xarray.DataArray with "
            "dims (e.g. `xr.DataArray(a, dims=('z', 'y', 'x'))`), a Zarr array with "
            "`dimension_names` or an OME-Zarr image; or index the array yourself (`image[10]`).")
    canonical = [_canonical_dim(n) for n in names]
    index: list[Any] = [slice(None)] * len(shape)
    positions: dict[str, np.ndarray] = {}
    for key, sel in isel.items():
        dim = _canonical_dim(key)
        if dim in DIMS:
            raise InvalidValueError(
                f"`isel` selects planes of the axes other than y, x and c. Got "
                f"{planes_text({key: sel})} on the image axis {dim!r}. Drop it (crop y/x with "
                "the lazy result, e.g. `predict(...).isel(y=slice(0, 512))`).")
        if dim not in canonical:
            raise InvalidValueError(
                f"`isel` names dimension {key!r}, which the image does not have. Got dims "
                f"{tuple(str(n) for n in names)} with shape {shape}; select one of "
                f"{tuple(str(n) for n, c in zip(names, canonical, strict=True) if c not in DIMS)}.")
        axis = canonical.index(dim)
        n = shape[axis]
        if isinstance(sel, slice):
            picked = np.arange(n)[sel]
            if picked.size == 0:
                raise InvalidValueError(
                    f"`isel` must select at least one plane of axis {key!r} (length {n}). Got "
                    f"{planes_text({key: sel})}, which selects none; use indices from 0 to "
                    f"{n - 1}, e.g. {key}=0:{n}.")
            positions[dim] = picked
        elif not -n <= sel < n:
            raise InvalidValueError(
                f"`isel` must give an index of axis {key!r}, which has length {n}. Got "
                f"{planes_text({key: sel})}; use 0 to {n - 1} (or -{n} to -1).")
        index[axis] = sel
    data = data[tuple(index)]
    kept = [n for n, i in zip(names, index, strict=True) if not isinstance(i, int)]
    return data, kept, positions


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
    data, source_dims, _ = _to_stack(data, names)
    return data, source_dims


def _to_stack(data: Any, names: Sequence[object] | None,
              isel: Mapping[str, int | slice] | None = None, stack: bool = False
              ) -> tuple[Any, dict[str, Any], dict[str, np.ndarray]]:
    """:func:`_to_yxc` after selecting ``isel``; with ``stack``, the other axes longer than 1
    (``t``, ``z``...) are kept in front: ``(*lead, y, x, c)``.

    Returns
    -------
    data : ndarray or dask.array.Array
        ``(*lead, Y, X, C)`` (``lead`` empty without ``stack``).
    source_dims : dict
        The leading dims (lower-case names, in order) and then ``"y"``, ``"x"``, ``"c"``, each
        mapped to the input's dimension name (None where there was none).
    positions : dict of str -> ndarray of int
        For each leading dim, the source index of each of its planes (``isel`` slices them).
    """
    shape = tuple(data.shape)
    positions: dict[str, np.ndarray] = {}
    if isel:
        data, names, positions = _apply_isel(data, names, isel)
    if names is None:
        while data.ndim > 3 and data.shape[0] == 1:
            data = data[0]
        if data.ndim == 2:
            return data[:, :, np.newaxis], dict.fromkeys(DIMS), {}
        if data.ndim == 3 and data.shape[2] > MAX_UNNAMED_CHANNELS:
            raise InvalidValueError(
                f"`image` without dimension names must be (y, x) or (y, x, c) with at most "
                f"{MAX_UNNAMED_CHANNELS} channels last. Got shape {shape}, which would be read "
                f"as {data.shape[0]} x {data.shape[1]} pixels with {data.shape[2]} channels. Name "
                "the axes: an xarray.DataArray with dims (e.g. `xr.DataArray(a, dims=('c', 'y', "
                "'x'))`), a Zarr array with `dimension_names`, or a Zarr group's 2-D array "
                "(`array_name`); or select one plane (e.g. `image[0]`)."
            )
        if data.ndim == 3:
            return data, dict.fromkeys(DIMS), {}
        raise InvalidValueError(
            "`image` must be 2-D (y, x) or 3-D (y, x, c); leading axes of length 1 are squeezed. "
            f"Got shape {shape}. Select one plane (e.g. `image[0]`), or pass an xarray.DataArray "
            "whose dims name the axes (e.g. ('z', 'y', 'x'), then isel={'z': 0}, or a stack)."
        )

    original = [str(n) for n in names]
    canonical = [_canonical_dim(n) for n in original]
    shape = tuple(data.shape)
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
    if too_long and not stack:
        fix = ",".join(f"{canonical[i]}=0" for i in extra if shape[i] != 1)
        raise InvalidValueError(
            "`image` must have only dims 'y', 'x' and 'c' longer than 1; other dims are squeezed. "
            f"Got dims {tuple(original)} with shape {shape}: {too_long} cannot be squeezed. "
            f"Select one plane of each with `isel` (e.g. isel={{'{canonical[extra[0]]}': 0}}; CLI: "
            f"--planes {fix}) or `arr.isel(...)`, or rename the channel dim to 'c'."
        )
    lead = [i for i in extra if shape[i] != 1]
    squeeze = [i for i in extra if shape[i] == 1]
    data = np.squeeze(data, axis=tuple(squeeze)) if squeeze else data
    left = [i for i in range(len(canonical)) if i not in squeeze]
    kept = [canonical[i] for i in left]
    kept_original: list[str | None] = [original[i] for i in left]
    if "c" not in kept:
        data = np.expand_dims(data, axis=-1)
        kept.append("c")
        kept_original.append(None)
    dims = [canonical[i] for i in lead] + list(DIMS)
    order = [kept.index(d) for d in dims]
    data = np.transpose(data, order)
    source_dims = {d: kept_original[i] for d, i in zip(dims, order, strict=True)}
    lead_positions = {canonical[i]: positions.get(canonical[i], np.arange(shape[i]))
                      for i in lead}
    return data, source_dims, lead_positions


def _finish(
    data: da.Array,
    source: str,
    *,
    coords: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
    name: str | None = None,
    lead: Sequence[str] = (),
) -> xr.DataArray:
    """Validate a ``(*lead, y, x, c)`` Dask array and wrap it as the :func:`open_image`
    DataArray (``lead``: the names of a stack's leading dims)."""
    dtype = _check_dtype(data.dtype)
    if 0 in data.shape:
        raise InvalidValueError(
            f"`image` must have at least one pixel and one channel. Got shape {data.shape} "
            f"{(*lead, *DIMS)}."
        )
    if not dtype.isnative:
        data = data.astype(dtype.newbyteorder("="))
    out_attrs = dict(attrs or {})
    out_attrs["source"] = source
    return xr.DataArray(
        data, dims=(*lead, *DIMS), coords=dict(coords or {}), attrs=out_attrs, name=name or "image"
    )


def lead_coords(positions: Mapping[str, np.ndarray]) -> dict[str, xr.Variable]:
    """The coordinates of a stack's leading dims: each plane's index in the source (so a
    selection ``z=10:20`` keeps ``z`` = 10..19)."""
    return {dim: xr.Variable(dim, np.asarray(pos, dtype=np.int64)) for dim, pos in
            positions.items()}


def _check_dtype(dtype: Any) -> np.dtype:
    """``dtype`` if it is boolean, integer or floating-point; else the error naming it (checked
    before Dask sees the array: its automatic chunking fails on an object array)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise InvalidTypeError(
            "`image` must have a boolean, integer or floating-point dtype. "
            f"Got {dtype}. Convert it first, e.g. `image.astype('float32')`."
        )
    return dtype


def _in_memory_to_dask(data: np.ndarray) -> da.Array:
    """Wrap an in-memory ``(y, x, c)`` array, chunked automatically with ``c`` whole."""
    _check_dtype(data.dtype)
    return da.from_array(data, chunks={0: "auto", 1: "auto", 2: -1})
