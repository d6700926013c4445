"""Axis normalisation: any named or unnamed layout -> ``(y, x, c)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr

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
    dtype = _check_dtype(data.dtype)
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
