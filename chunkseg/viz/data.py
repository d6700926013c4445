"""Reading what the figures draw: strided overviews, full-resolution crops and tiles.

The input image (:class:`_Image`) and a written :func:`chunkseg.predict_to_zarr` output
(:class:`_Output`) are opened lazily and read only as a decimated view (every ``step``-th pixel,
block by block: :func:`read_overview`) or a small full-resolution crop (:func:`default_crop`,
:func:`crop_tiles`), never as a full-size image. numpy, dask and zarr only: no matplotlib.
"""

from __future__ import annotations

import math
import os

import numpy as np

from .. import _ome
from .._check import class_index_arg, int_pair, is_int, parse_planes, positive_int
from ..engine.runner import BlockReader
from ..errors import IncompleteOutputWarning, InvalidValueError
from ..io import open_image
from ..kernels import blend
from ..objects.instances import _open_group
from ..outputs._manifest import refuse_stack
from ..outputs._target import describe_location
from ..outputs._variables import class_names
from ..plan import TilePlan, plan_tiles

__all__ = [
    "MAX_CROP_PIXELS",
    "display_step",
    "read_overview",
    "output_plan",
    "default_crop",
    "crop_tiles",
]

MAX_CROP_PIXELS = 4096 * 4096
"""Most pixels of a full-resolution crop (it is read whole, with the model's outputs)."""


def display_step(shape: tuple[int, int], max_pixels: int = 1200) -> int:
    """Decimation step so that the longer side of ``shape`` shows at most ``max_pixels``."""
    return max(1, math.ceil(max(shape) / max_pixels))


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "compute"):  # dask or a dask-backed DataArray: this thread only
        value = value.compute(scheduler="sync")
    return np.asarray(value)


def _source_chunks(array) -> tuple[int, int] | None:
    """The ``(y, x)`` chunk of an array (dask, zarr, h5py), or None where it has none."""
    chunks = getattr(array, "chunks", None)
    if not chunks or len(chunks) < 2:
        return None
    try:
        return tuple(int(max(c)) if isinstance(c, tuple) else int(c)  # type: ignore[return-value]
                     for c in chunks[:2])
    except (TypeError, ValueError):
        return None


def _read_strided(get, shape: tuple[int, int], step: int, block: tuple[int, int]) -> np.ndarray:
    """Assemble ``array[::step, ::step]`` from reads ``get(ys, xs)`` of one block each."""
    h, w = shape
    by, bx = (step * max(1, -(-int(b) // step)) for b in block)  # a multiple of the step
    out = None
    for y0 in range(0, h, by):
        for x0 in range(0, w, bx):
            part = get(slice(y0, min(h, y0 + by), step), slice(x0, min(w, x0 + bx), step))
            if out is None:
                out = np.empty((-(-h // step), -(-w // step)) + part.shape[2:], part.dtype)
            oy, ox = y0 // step, x0 // step
            out[oy:oy + part.shape[0], ox:ox + part.shape[1]] = part
    return out


def read_overview(array, max_side: int = 2048, *,
                  block: int | tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
    """``array[::step, ::step]`` with its longer side at most ``max_side``, read block by block.

    Parameters
    ----------
    array : (H, W) or (H, W, C) array-like
        Anything with ``shape`` and basic slicing with a step: numpy, dask (computed on this
        thread), zarr, h5py, xarray. Never asked for more than one block at a time.
    max_side : int, default 2048
        Longer side of the result, pixels.
    block : int or (int, int), optional
        Full-resolution side of one read, rounded up to a multiple of ``step``. Default: the
        array's own chunk (at least 256 px), else 1024 px, so each read touches about one chunk.

    Returns
    -------
    ndarray, int
        ``(ceil(H / step), ceil(W / step)[, C])`` of the array's dtype, equal to
        ``array[::step, ::step]``; and ``step = ceil(max(H, W) / max_side)``
        (:func:`display_step`).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If ``array`` is not 2-D or 3-D, or ``max_side`` or ``block`` is not positive.
    chunkseg.errors.InvalidTypeError
        If ``max_side`` is not an int or ``block`` not an int or a pair of ints.

    Notes
    -----
    Memory: the result plus one block's read (``block^2 / step^2`` pixels, and whatever the
    array's backend decodes for it, about one chunk).
    """

    shape = tuple(int(s) for s in getattr(array, "shape", ()))
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InvalidValueError(
            f"`array` must be a non-empty (y, x) or (y, x, c) array. Got shape {shape!r}.")
    step = display_step(shape[:2], positive_int(max_side, "max_side"))
    if block is None:
        chunk = _source_chunks(array)
        block_ = (1024, 1024) if chunk is None else (max(256, chunk[0]), max(256, chunk[1]))
    else:
        block_ = int_pair(block, "block", minimum=1)
    rest = (slice(None),) * (len(shape) - 2)
    return _read_strided(lambda ys, xs: _as_numpy(array[(ys, xs) + rest]), shape[:2], step,
                         block_), step


class _ShapeOnly:
    """What :class:`chunkseg.engine.BlockReader` needs of an image read through ``direct``."""

    def __init__(self, shape):
        self.shape = shape


class _Image:
    """The input image, opened lazily: strided overviews, crops and reflect-padded tiles."""

    def __init__(self, image, shape: tuple[int, int] | None, storage_options=None,
                 isel: dict | None = None):
        import dask.array as da
        import xarray as xr
        import zarr


        known = (str, os.PathLike, np.ndarray, da.Array, xr.DataArray, zarr.Array, zarr.Group)
        duck = (not isinstance(image, known) and hasattr(image, "shape")
                and hasattr(image, "__getitem__") and len(getattr(image, "shape", ())) in (2, 3))
        if duck:  # h5py, a tifffile store, any array-like with step slicing
            self.array = image
            self.rest = (slice(None),) * (len(image.shape) - 2)
            full = tuple(int(s) for s in image.shape)
            channels = full[2] if len(full) == 3 else 1
            self.reader = BlockReader(_ShapeOnly(full[:2] + (channels,)),
                                      lambda y0, y1, x0, x1: self.read(slice(y0, y1),
                                                                       slice(x0, x1)))
        else:
            arr = open_image(image, storage_options=storage_options, isel=isel)
            self.array = arr.data  # (y, x, c) dask
            self.rest = (slice(None),)
            full = tuple(int(s) for s in arr.shape)
            self.reader = BlockReader(arr.data, arr.encoding.get("chunkseg_reader"))
        if shape is not None and tuple(full[:2]) != tuple(shape):
            raise InvalidValueError(
                f"`image` must be the image the output was computed from, of shape "
                f"{tuple(shape)} (y, x). Got shape {full[:2]}.")
        self.shape = tuple(full[:2])

    def read(self, ys: slice, xs: slice) -> np.ndarray:
        """``(h, w, c)`` ndarray of the image's dtype (basic slices, steps allowed)."""
        out = _as_numpy(self.array[(ys, xs) + self.rest])
        return out[..., None] if out.ndim == 2 else out

    def overview(self, max_side: int) -> tuple[np.ndarray, int]:
        step = display_step(self.shape, max_side)
        chunk = _source_chunks(self.array)
        block = (1024, 1024) if chunk is None else (max(256, chunk[0]), max(256, chunk[1]))
        return _read_strided(self.read, self.shape, step, block), step

    def crop(self, crop) -> np.ndarray:
        (y0, y1), (x0, x1) = crop
        return self.read(slice(y0, y1), slice(x0, x1))

    def tile(self, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
        """``(C, h, w)`` region of the reflect-padded image, as the engine reads it."""
        return self.reader(ys, xs)


class _Output:
    """A :func:`chunkseg.predict_to_zarr` output opened read-only: arrays, attrs and plan."""

    def __init__(self, store, storage_options=None):
        import warnings

        import zarr


        self.where = describe_location(store)
        if isinstance(store, zarr.Group):
            group = store
        else:

            group = _open_group(store, storage_options, "r")
        refuse_stack(group, self.where, "store", "the figures")
        self.attrs = dict(group.attrs)
        self.arrays = {}
        for name in ("labels", "probabilities", "logits", "instances"):
            path = _ome.find(group, name)  # either layout (OME: labels/classes/0...)
            if path is not None:  # class labels read as class indices, either layout
                self.arrays[name] = _ome.class_labels(group[path])
        missing = [k for k in ("tile", "overlap", "chunks") if k not in self.attrs]
        if missing or not {"labels", "probabilities", "logits"} & set(self.arrays):
            lacks = missing + ([] if {"labels", "probabilities", "logits"} & set(self.arrays)
                               else ["a labels, probabilities or logits array"])
            raise InvalidValueError(
                f"`store` must be an output of chunkseg.predict_to_zarr. Got {self.where!r}, "
                f"which lacks {', '.join(lacks)}.")
        inst = self.arrays.get("instances")
        if inst is not None and inst.attrs.get("complete") is not True:
            del self.arrays["instances"]  # an interrupted chunkseg.instances run: not shown
        first = next(self.arrays[n] for n in ("labels", "probabilities", "logits")
                     if n in self.arrays)
        self.shape = tuple(int(s) for s in first.shape[-2:])
        self.plan = plan_tiles(self.shape, tuple(self.attrs["tile"]),
                               tuple(self.attrs["overlap"]), tuple(self.attrs["chunks"]))
        scores = self.arrays.get("probabilities", self.arrays.get("logits"))
        self.classes = int(self.attrs.get("classes") or (scores.shape[0] if scores is not None
                                                          else 2))
        self.class_names = class_names(group, self.classes)
        if self.attrs.get("complete") is not True:
            warnings.warn(f"{self.where!r} is incomplete: chunks not yet written read as 0. "
                          "Finish it with predict_to_zarr(..., resume=True) (CLI: --resume).",
                          IncompleteOutputWarning, stacklevel=3)

    @property
    def instances(self):
        return self.arrays.get("instances")

    def default_cls(self) -> int:
        """The class of ``instances``, else the object class (:func:`~chunkseg._check.object_class`)."""
        if self.instances is not None and self.instances.attrs.get("class") is not None:
            return int(self.instances.attrs["class"])
        return class_index_arg(None, self.class_names, fix="(CLI: --class)")

    def connectivity(self) -> int:
        if self.instances is not None:
            return int(self.instances.attrs.get("connectivity", 1))
        return 1

    def labels(self, crop) -> np.ndarray:
        """``(h, w)`` argmax labels of the crop (the written ones, else from the scores)."""

        (y0, y1), (x0, x1) = crop
        if "labels" in self.arrays:
            return np.asarray(self.arrays["labels"][y0:y1, x0:x1])
        name = "probabilities" if "probabilities" in self.arrays else "logits"
        scores = np.asarray(self.arrays[name][:, y0:y1, x0:x1], np.float32)
        return blend.labels_from_logits(np.nan_to_num(scores, nan=-np.inf))

    def probability(self, cls: int, crop) -> np.ndarray | None:
        """``(h, w)`` float32 blended probability of class ``cls``, or None (labels only)."""

        (y0, y1), (x0, x1) = crop
        if "probabilities" in self.arrays:
            return np.asarray(self.arrays["probabilities"][cls, y0:y1, x0:x1], np.float32)
        if "logits" in self.arrays:
            logits = np.asarray(self.arrays["logits"][:, y0:y1, x0:x1], np.float32)
            return blend.probabilities_from_logits(logits)[cls]
        return None

    def segmentation_overview(self, max_side: int) -> tuple[str, np.ndarray, int]:
        """``("instances" | "labels", (h', w') ids, step)``, strided block by block."""
        step = display_step(self.shape, max_side)
        name = "instances" if self.instances is not None else "labels"
        if name in self.arrays:
            arr = self.arrays[name]
            block = tuple(max(256, int(c)) for c in arr.chunks[-2:])
            return name, _read_strided(lambda ys, xs: np.asarray(arr[ys, xs]), self.shape,
                                       step, block), step

        key = "probabilities" if "probabilities" in self.arrays else "logits"
        arr = self.arrays[key]
        block = tuple(max(256, int(c)) for c in arr.chunks[-2:])
        return "labels", _read_strided(
            lambda ys, xs: blend.labels_from_logits(
                np.nan_to_num(np.asarray(arr[:, ys, xs], np.float32), nan=-np.inf)),
            self.shape, step, block), step


def _open(store, storage_options=None) -> _Output:
    return store if isinstance(store, _Output) else _Output(store, storage_options)


def _open_image(image, out: _Output, storage_options=None) -> _Image | None:
    """The output's input image, read at the planes the output was predicted from (its
    ``planes`` attribute, ``--planes``) when the image is a stack."""
    if image is None or isinstance(image, _Image):
        return image
    return _Image(image, out.shape, storage_options, parse_planes(out.attrs.get("planes")))


def output_plan(store, *, storage_options: dict | None = None) -> TilePlan:
    """The tile grid and chunks of a written output, rebuilt from its attrs.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output. Reads its attrs and array metadata only.
    storage_options : dict, optional
        fsspec options for a URL ``store``.

    Returns
    -------
    TilePlan
        :func:`chunkseg.plan.plan_tiles` of the output's ``(y, x)`` shape and its ``tile``,
        ``overlap`` and ``chunks`` attrs.
    """
    return _open(store, storage_options).plan


def default_crop(plan: TilePlan) -> tuple[tuple[int, int], tuple[int, int]]:
    """The crop the figures show by default: about 3 x 3 tiles around a chunk corner.

    Along each axis, the three tiles whose stride cells hold the first interior chunk border
    (the image's middle where there is one chunk) and its two neighbours, from the first one's
    start to the last one's end (``3 * stride + overlap`` pixels) plus a margin of
    ``stride // 8`` each side, clipped to the image; where the overlap is a large part of the
    tile it is cut short of the neighbouring stride cells' centres, so that
    :func:`crop_tiles` gives exactly these 3 x 3 tiles.

    Parameters
    ----------
    plan : TilePlan

    Returns
    -------
    ((y0, y1), (x0, x1))
        Half-open image coordinates.
    """
    out = []
    for axis in range(2):
        size, s, t = plan.image_shape[axis], plan.stride[axis], plan.tile[axis]
        chunks = plan.output_chunks()[axis]
        corner = int(chunks[0]) if len(chunks) > 1 else size // 2
        n = plan.grid_shape[axis]
        m = min(3, n)
        k0 = int(min(max(corner // s - 1, 0), n - m))
        origins = plan.tile_origins()[axis]
        lo = np.arange(n) * s
        centre2 = lo + np.minimum(lo + s, size)  # as crop_tiles
        start = int(origins[k0]) - s // 8
        stop = int(origins[k0 + m - 1]) + t + s // 8
        if k0 > 0:  # leave out the neighbours' stride-cell centres (large overlaps)
            start = max(start, int(centre2[k0 - 1]) // 2 + 1)
        if k0 + m < n:
            stop = min(stop, int(centre2[k0 + m]) // 2)
        out.append((max(0, start), min(size, stop)))
    return tuple(out)  # type: ignore[return-value]


def _check_crop(crop, plan: TilePlan):

    if crop is None:
        return default_crop(plan)
    h, w = plan.image_shape
    try:
        pairs = []
        for item in crop:
            if isinstance(item, slice):
                if item.step not in (None, 1):
                    raise ValueError
                item = (item.start, item.stop)
            a, b = item
            pairs.append((int(a) if is_int(a) else None, int(b) if is_int(b) else None))
        if len(pairs) != 2 or any(v is None for p in pairs for v in p):
            raise ValueError
    except (TypeError, ValueError):
        raise InvalidValueError(
            f"`crop` must be ((y0, y1), (x0, x1)) (ints, half-open image coordinates) or two "
            f"slices. Got {crop!r}.") from None
    (y0, y1), (x0, x1) = pairs
    if not (0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w):
        raise InvalidValueError(
            f"`crop` must lie inside the image, 0 <= y0 < y1 <= {h} and 0 <= x0 < x1 <= {w}. "
            f"Got {crop!r}.")
    if (y1 - y0) * (x1 - x0) > MAX_CROP_PIXELS:
        raise InvalidValueError(
            f"`crop` must be at most {MAX_CROP_PIXELS} pixels (it is read at full resolution; "
            f"the overview shows the whole image). Got {y1 - y0} x {x1 - x0}.")
    return (y0, y1), (x0, x1)


def crop_tiles(plan: TilePlan, crop) -> tuple[range, range]:
    """Tiles of the global grid that belong to a crop: those whose stride cell's centre lies
    inside it (tile ``k``'s stride cell is ``[k * stride, (k + 1) * stride)``, cut at the
    image's end).

    Parameters
    ----------
    plan : TilePlan
    crop : ((y0, y1), (x0, x1))
        Half-open image coordinates.

    Returns
    -------
    (range, range)
        Tile indices ``ky`` and ``kx`` (tile ``k`` starts at ``plan.tile_origins()[axis][k]``).
        For :func:`default_crop` these are its 3 x 3 tiles.
    """
    out = []
    for axis in range(2):
        c0, c1 = crop[axis]
        s, size = plan.stride[axis], plan.image_shape[axis]
        lo = np.arange(plan.grid_shape[axis]) * s
        centre2 = lo + np.minimum(lo + s, size)  # twice the centre of the cell, cut at the end
        ks = np.flatnonzero((centre2 >= 2 * c0) & (centre2 < 2 * c1))
        out.append(range(int(ks[0]), int(ks[-1]) + 1) if len(ks) else range(0))
    return tuple(out)  # type: ignore[return-value]


def _cls_index(cls, out: _Output) -> int:
    """``cls`` (an index, a class name or None) as a class index of ``out``."""
    if cls is None:
        return out.default_cls()
    return class_index_arg(cls, out.class_names, fix="(CLI: --class)")
