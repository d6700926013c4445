"""Opening the label images :func:`chunkseg.evaluate` compares: a chunkseg output's variable
(either layout), a Zarr group's image, a label file or an array, as one 2-D Dask array."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from .. import _ome
from ..errors import InvalidTypeError, InvalidValueError, NotFoundError
from ..io import is_zarr_url_or_path, open_image
from ..io._files import _read_npy
from ..io._locations import _fspath, _is_url, _redact
from ..io._zarr import _pick_group_array
from ..outputs._manifest import refuse_stack, warn_if_incomplete
from ..outputs._target import MARKER

__all__ = ["open_labels", "open_inputs"]


def _class_names(values: Any) -> list[str] | None:
    if values is None:
        return None
    arr = np.asarray(values)
    return [str(v) for v in arr.ravel()] if arr.ndim == 1 and arr.size else None


def _warn_incomplete(group: zarr.Group, source: str) -> None:
    if MARKER in group.attrs:  # a chunkseg output, finished or not
        warn_if_incomplete(group, source, stacklevel=5)


def _open_zarr_labels(node: zarr.Array | zarr.Group, array_name: str | None = None
                      ) -> xr.DataArray:
    """:func:`open_image` of a Zarr node, but an NGFF class label image chunkseg wrote
    (``labels/classes`` or one of its levels, :data:`chunkseg._ome.CLASS_OFFSET` set) as class
    indices (:func:`chunkseg._ome.open_classes`)."""
    array = node
    if isinstance(node, zarr.Group):
        try:
            array = _pick_group_array(node, array_name)[0]
        except InvalidValueError:
            array = None  # open_image says why
    if isinstance(array, zarr.Array) and _ome.class_offset(array):
        return open_image(_ome.open_classes(array))
    return open_image(node, array_name=array_name)


def _open_group_labels(group: zarr.Group, param: str, option: str, variable: str | None,
                       default: str | None, source: str) -> tuple[xr.DataArray, list | None, str]:
    """The label array of a Zarr group: a chunkseg output's variable (either layout), else the
    group's image as :func:`open_image` picks it."""
    wanted = variable or "labels"
    path = _ome.find(group, wanted)
    if path is None and variable is not None and isinstance(group.get(variable), zarr.Array):
        path = variable
    if path is not None:
        if MARKER in group.attrs:  # a chunkseg output: one plane, not a stack of them
            refuse_stack(group, source, param, "the evaluation")
        _warn_incomplete(group, source)
        names = None
        if isinstance(group.get("class"), zarr.Array):
            names = _class_names(group["class"][...])
        # class labels as class indices (the NGFF label image stores class k as k + 1)
        return _open_zarr_labels(group[path]), names, f"{source} ({path})"
    if MARKER in group.attrs and "image-label" not in (group.attrs.get("ome") or {}):
        arrays = sorted(group.array_keys())
        raise NotFoundError(
            f"`{option}` must name a variable of the chunkseg output `{param}`. Got "
            f"{wanted!r}, which {source!r} does not hold (its arrays: {arrays}); pass one of "
            "them, or write labels with predict_to_zarr(..., outputs='...,labels').")
    explicit = variable if variable is not None and variable != default else None
    return _open_zarr_labels(group, explicit), None, source


def open_labels(obj: Any, param: str, option: str, variable: str | None, default: str | None,
                 storage_options: Mapping[str, Any] | None) -> tuple[da.Array, list | None, str]:
    """``obj`` as a 2-D Dask label array, the class names it carries, and a description."""
    names = None
    source = type(obj).__name__
    if isinstance(obj, xr.Dataset):
        wanted = variable or "labels"
        if wanted not in obj.data_vars:
            raise NotFoundError(
                f"`{option}` must name a variable of the Dataset `{param}`. Got {wanted!r}; it "
                f"has {sorted(map(str, obj.data_vars))}.")
        names = _class_names(obj.coords["class"].values) if "class" in obj.coords else None
        obj = obj[wanted]
    if isinstance(obj, str | os.PathLike):
        location = _fspath(obj, param)
        source = _redact(location)
        so = dict(storage_options) if storage_options is not None and _is_url(location) else None
        if not _is_url(location) and not os.path.exists(location):
            raise NotFoundError(f"`{param}` must be an existing path or a URL. Got "
                                f"{location!r}, which does not exist.")
        if location.endswith(".npy") and not _is_url(location):
            image = open_image(_read_npy(location, param, mmap_mode="r"))
        elif is_zarr_url_or_path(location):
            try:
                node = zarr.open(store=location, mode="r", **({"storage_options": so} if so else {}))
            except (FileNotFoundError, NotADirectoryError) as err:
                raise NotFoundError(f"`{param}` must be a Zarr store, an image file or an array. "
                                    f"Got {source!r}, where no Zarr array or group was "
                                    "found.") from err
            if isinstance(node, zarr.Group):
                image, names, source = _open_group_labels(node, param, option, variable,
                                                          default, source)
            else:
                image = _open_zarr_labels(node)
        else:
            image = open_image(location, storage_options=so)
    elif isinstance(obj, zarr.Group):
        source = _redact(str(obj.store_path))
        image, names, source = _open_group_labels(obj, param, option, variable, default,
                                                  source)
    else:
        image = _open_zarr_labels(obj) if isinstance(obj, zarr.Array) else open_image(obj)
    if image.sizes["c"] != 1:
        raise InvalidValueError(
            f"`{param}` must be a single-channel label image (y, x). Got {image.sizes['c']} "
            f"channels, shape {tuple(image.shape)} (y, x, c); pass one channel.")
    data = image.data[..., 0]
    if data.dtype.kind not in ("biuf" if param == "mask" else "biu"):
        raise InvalidValueError(
            f"`{param}` must hold integer (or boolean) class labels. Got dtype {data.dtype}; "
            "take the argmax of probabilities or cast with `.astype(int)`.")
    return data, names, source


def open_inputs(pred: Any, truth: Any, mask: Any, *, pred_variable: str, default: str,
                truth_array: str | None, storage_options: Mapping[str, Any] | None
                ) -> tuple[da.Array, list | None, str, da.Array, str, da.Array | None]:
    """The prediction (its variable ``pred_variable``, ``default`` for a chunkseg output), the
    ground truth and the optional mask of an evaluation, each by :func:`open_labels`.

    Returns
    -------
    tuple
        ``(pred, class names of pred, pred description, truth, truth description, mask)``,
        the arrays 2-D Dask arrays, ``mask`` None when not given.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``pred_variable`` is not a non-empty str; else as :func:`open_labels`.
    """
    if not isinstance(pred_variable, str) or not pred_variable:
        raise InvalidTypeError(f"`pred_variable` must be a variable name (str). Got "
                               f"{pred_variable!r}.")
    p, names, pred_source = open_labels(pred, "pred", "pred_variable", pred_variable, default,
                                        storage_options)
    t, _, truth_source = open_labels(truth, "truth", "truth_array", truth_array, None,
                                     storage_options)
    m = None
    if mask is not None:
        m, _, _ = open_labels(mask, "mask", "mask", None, None, storage_options)
    return p, names, pred_source, t, truth_source, m
