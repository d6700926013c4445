"""Georeferenced rasters: GeoTIFF georeferencing read with rioxarray, and rioxarray's
``spatial_ref`` convention carried through chunkseg's outputs.

rioxarray (https://corteva.github.io/rioxarray/) keeps a raster's CRS and affine transform in a
scalar coordinate, ``spatial_ref``, whose attrs hold the CRS (``crs_wkt``, ``spatial_ref``: WKT)
and the GDAL ``GeoTransform`` (``"x0 a b y0 d e"``: the outer corner of pixel (0, 0), then the
pixel size and rotation terms); the data variables name it in their CF ``grid_mapping``
attribute. Its ``y``/``x`` coordinates are pixel centres; a north-up raster has ``y`` decreasing.

chunkseg keeps that coordinate and those ``y``/``x`` coordinates as they are (in memory, in the
Zarr output, in an ingested store), so ``xr.open_zarr(out).rio.crs`` and ``.rio.transform()``
give the input's CRS and transform. This module is the one place that knows the convention:
:func:`geotiff_coords` (reading), :func:`grid_mapping` (which coordinate holds the CRS),
:func:`is_rotated` and :func:`level_grid_mapping` (a pyramid level's transform).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import xarray as xr

__all__ = ["CRS_ATTRS", "geotiff_coords", "grid_mapping", "geo_transform", "is_rotated",
           "level_grid_mapping"]

CRS_ATTRS = ("crs_wkt", "spatial_ref")
"""Attributes of a grid-mapping coordinate that hold its CRS (CF ``crs_wkt``; GDAL's WKT)."""


def geotiff_coords(opened: Any, described: str) -> dict[str, xr.Variable] | None:
    """``y``, ``x`` (pixel centres) and ``spatial_ref`` of a GeoTIFF, read with rioxarray.

    Only the metadata are read (:func:`rioxarray.open_rasterio` is lazy; no pixel is decoded
    here). The coordinates get rioxarray's CF attrs (``units``, ``standard_name``: from
    ``write_coordinate_system``).

    Parameters
    ----------
    opened : str or file object
        The GeoTIFF: a local path, or a binary file object (an fsspec URL opened by the caller).
    described : str
        The file, for messages (no credentials).

    Returns
    -------
    dict of str -> xarray.Variable, or None
        ``{"y": ..., "x": ..., "spatial_ref": ...}`` (``y``/``x`` only for a transform without
        rotation: a rotated grid is kept in ``spatial_ref``'s ``GeoTransform`` alone). None
        when rioxarray is not installed: a :class:`UserWarning` then says the CRS and transform
        are not kept and how to install it.
    """
    try:
        import rioxarray
    except ImportError:
        warnings.warn(
            f"{described} is a GeoTIFF, but rioxarray is not installed: it is read as a plain "
            "image, and its CRS and transform are not kept in the output (coordinates in "
            "pixels). Install it with `pip install 'chunkseg[geo]'` (or `pip install "
            "rioxarray`) to keep them.", UserWarning, stacklevel=5)
        return None
    raster = rioxarray.open_rasterio(opened, parse_coordinates=True, mask_and_scale=False)
    try:
        name = raster.rio.grid_mapping
        if name not in raster.coords:
            return {}
        raster = raster.rio.write_coordinate_system()
        keep = [n for n in ("y", "x") if n in raster.indexes] + [name]
        return {n: raster[n].variable.load().copy(deep=True) for n in keep}
    finally:
        raster.close()


def grid_mapping(coords: Mapping[str, Any]) -> str | None:
    """Name of the scalar coordinate of ``coords`` that holds a CRS (rioxarray's
    ``spatial_ref``: attrs ``crs_wkt`` or ``spatial_ref``), or None."""
    for name, var in coords.items():
        if getattr(var, "ndim", None) == 0 and any(a in var.attrs for a in CRS_ATTRS):
            return str(name)
    return None


def geo_transform(var: Any) -> list[float] | None:
    """The GDAL ``GeoTransform`` ``[x0, a, b, y0, d, e]`` of a grid-mapping coordinate, or None
    when it has none (or not six numbers)."""
    text = getattr(var, "attrs", {}).get("GeoTransform")
    if not isinstance(text, str):
        return None
    try:
        values = [float(v) for v in text.split()]
    except ValueError:
        return None
    return values if len(values) == 6 else None


def is_rotated(coords: Mapping[str, Any]) -> bool:
    """Whether the grid mapping of ``coords`` has a ``GeoTransform`` with rotation or shear
    terms (``b`` or ``d`` not 0): a grid no per-axis scale and translation can describe."""
    name = grid_mapping(coords)
    gt = None if name is None else geo_transform(coords[name])
    return gt is not None and (gt[2] != 0.0 or gt[4] != 0.0)


def level_grid_mapping(var: xr.Variable, factor: int) -> xr.Variable:
    """The grid-mapping coordinate of a pyramid level whose pixels are ``factor x factor``
    squares of the full-resolution ones: the same CRS and origin (the outer corner of pixel
    (0, 0) does not move), the pixel size and rotation terms times ``factor``. A coordinate
    without a ``GeoTransform`` is returned as it is."""
    gt = geo_transform(var)
    if gt is None:
        return var
    x0, a, b, y0, d, e = gt
    attrs = dict(var.attrs)
    attrs["GeoTransform"] = " ".join(repr(float(v)) for v in
                                     (x0, a * factor, b * factor, y0, d * factor, e * factor))
    return xr.Variable((), var.values, attrs)
