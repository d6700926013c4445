"""Figures: the tile grid over the image, blended probabilities and labels, and the windows.

:func:`plot_overview` and :func:`plot_windows` make the demo's figures. :func:`figures` makes
the five figures of a finished :func:`chunkseg.predict_to_zarr` output (``chunkseg figures
OUT``): :func:`overview`, :func:`tile_decomposition`, :func:`tile_predictions`,
:func:`reconstruction` and :func:`seams`, each also usable alone (it returns a matplotlib
:class:`~matplotlib.figure.Figure`). The arrays they draw come from :func:`read_overview`,
:func:`tile_components`, :func:`naive_patches` and :func:`seam_arrays`.

All functions read only a decimated view (every ``step``-th pixel, read block by block) or a
small full-resolution crop of the arrays, never a full-size image, and draw with matplotlib's
Agg backend.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .._check import positive_int
from ..kernels.windows import WINDOWS, get_window, window_1d
from ..plan import TilePlan

__all__ = [
    "plot_overview",
    "plot_windows",
    "display_step",
    "FIGURES",
    "figures",
    "overview",
    "tile_decomposition",
    "tile_predictions",
    "reconstruction",
    "seams",
    "read_overview",
    "output_plan",
    "default_crop",
    "crop_tiles",
    "tile_components",
    "naive_patches",
    "seam_arrays",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def display_step(shape: tuple[int, int], max_pixels: int = 1200) -> int:
    """Decimation step so that the longer side of ``shape`` shows at most ``max_pixels``."""
    return max(1, math.ceil(max(shape) / max_pixels))


def _grid_lines(ax, plan: TilePlan, step: int) -> None:
    h, w = plan.image_shape
    for axis, draw in ((0, ax.axhline), (1, ax.axvline)):
        size = (h, w)[axis]
        for o in plan.tile_origins()[axis]:
            for edge in (o, o + plan.tile[axis]):
                if 0 < edge < size:
                    draw(edge / step - 0.5, color="#2aa8ff", lw=0.4, alpha=0.6)
        for c in np.cumsum(plan.output_chunks()[axis])[:-1]:
            draw(c / step - 0.5, color="#ff3b30", lw=1.2)


def plot_overview(image, probability, labels, plan: TilePlan, path: str | Path, *,
                  max_pixels: int = 1200, zoom: int = 384, title: str = "") -> Path:
    """Save the demo figure: input with the tile grid, blended probability, labels, and a
    full-resolution zoom on a chunk corner.

    Parameters
    ----------
    image : (H, W) array-like (numpy, dask or xarray)
        Input (one channel). Read decimated.
    probability : (H, W) array-like
        Blended probability of the class of interest, in [0, 1].
    labels : (H, W) array-like of int
        Argmax labels.
    plan : TilePlan
        Grid and chunks to draw: thin blue lines are tile edges, thick red lines chunk edges.
    path : str or Path
        PNG to write.
    max_pixels : int, default 1200
        Longer side of the decimated panels, pixels.
    zoom : int, default 384
        Side of the full-resolution crop centred on the first interior chunk corner.
    title : str, optional

    Returns
    -------
    Path
        ``path``.
    """
    plt = _pyplot()
    step = display_step(plan.image_shape, max_pixels)
    view = (slice(None, None, step), slice(None, None, step))
    img = np.asarray(image[view])
    prob = np.asarray(probability[view])
    lab = np.asarray(labels[view])
    cy = int(plan.output_chunks()[0][0]) if len(plan.output_chunks()[0]) > 1 else plan.image_shape[0] // 2
    cx = int(plan.output_chunks()[1][0]) if len(plan.output_chunks()[1]) > 1 else plan.image_shape[1] // 2
    y0 = max(0, min(cy - zoom // 2, plan.image_shape[0] - zoom))
    x0 = max(0, min(cx - zoom // 2, plan.image_shape[1] - zoom))
    crop = (slice(y0, y0 + zoom), slice(x0, x0 + zoom))
    prob_zoom = np.asarray(probability[crop])

    fig, axes = plt.subplots(1, 4, figsize=(22, 6.2), constrained_layout=True)
    axes[0].imshow(img, cmap="gray")
    _grid_lines(axes[0], plan, step)
    axes[0].set_title(f"input {plan.image_shape[0]}x{plan.image_shape[1]}: tiles (blue), "
                      f"chunks (red)")
    im = axes[1].imshow(prob, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("blended membrane probability")
    fig.colorbar(im, ax=axes[1], shrink=0.8)
    axes[2].imshow(lab, cmap="gray_r", interpolation="nearest")
    axes[2].set_title("labels (argmax; black = membrane)")
    axes[3].imshow(prob_zoom, cmap="magma", vmin=0, vmax=1, extent=(x0, x0 + zoom, y0 + zoom, y0))
    for c in np.cumsum(plan.output_chunks()[0])[:-1]:
        if y0 < c < y0 + zoom:
            axes[3].axhline(c, color="#ff3b30", lw=1, ls="--")
    for c in np.cumsum(plan.output_chunks()[1])[:-1]:
        if x0 < c < x0 + zoom:
            axes[3].axvline(c, color="#ff3b30", lw=1, ls="--")
    axes[3].set_title("full resolution at a chunk corner (dashed): no seam")
    for ax in axes[:3]:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_windows(path: str | Path, tile: int = 256, overlap: int = 64) -> Path:
    """Save a figure explaining the blending: 1-D windows, their overlap-add sums along a row of
    tiles, and the 2-D gaussian window.

    Parameters
    ----------
    path : str or Path
        PNG to write.
    tile, overlap : int
        Tile size and overlap, pixels.

    Returns
    -------
    Path
    """
    plt = _pyplot()
    stride = tile - overlap
    n = 4
    length = (n - 1) * stride + tile
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.4), constrained_layout=True)
    x = np.arange(tile)
    for name in WINDOWS:
        axes[0].plot(x, window_1d(name, tile, overlap), label=name)
    axes[0].set_title(f"1-D windows, tile {tile}, overlap {overlap}")
    axes[0].set_xlabel("pixel in tile")
    axes[0].legend()
    for name in WINDOWS:
        total = np.zeros(length)
        w = window_1d(name, tile, overlap)
        for k in range(n):
            total[k * stride : k * stride + tile] += w
        axes[1].plot(total, label=name)
    for k in range(n):
        axes[1].axvspan(k * stride, k * stride + tile, color="0.5", alpha=0.06)
    axes[1].set_title(f"summed weight over {n} tiles, stride {stride} (the divisor)")
    axes[1].set_xlabel("pixel")
    axes[1].legend()
    im = axes[2].imshow(get_window("gaussian", tile, overlap), cmap="viridis")
    axes[2].set_title("2-D gaussian window (sigma = 0.125 tile)")
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The figures of a written output (``chunkseg figures OUT``)
# ---------------------------------------------------------------------------------------------

FIGURES = ("overview", "tiles", "tile_predictions", "reconstruction", "seams")
"""Names of the figures :func:`figures` writes (``<name>.png`` each), in the order written."""

MAX_CROP_PIXELS = 4096 * 4096
"""Most pixels of a full-resolution crop (it is read whole, with the model's outputs)."""

MAX_TILE_PANELS = 64
"""Most tiles :func:`tile_predictions` draws (one panel each)."""

_TILE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#e377c2", "#17becf",
                 "#bcbd22", "#8c564b", "#ffd60a")
_CHUNK_COLOUR = "#ff2a2a"
_CROP_COLOUR = "#ffd60a"
_PATCH_COLOUR = "#00e5ff"
_CLASS_COLOURS = ("#1b1b1b", "#f2f2f2", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd",
                  "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _figure(figsize: tuple[float, float]):
    """A matplotlib Figure outside pyplot (no global state; ``savefig`` renders with Agg)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


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

    Notes
    -----
    Memory: the result plus one block's read (``block^2 / step^2`` pixels, and whatever the
    array's backend decodes for it, about one chunk).
    """
    from ..errors import InvalidValueError
    from ..plan import normalize_pair

    shape = tuple(int(s) for s in getattr(array, "shape", ()))
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise InvalidValueError(
            f"`array` must be a non-empty (y, x) or (y, x, c) array. Got shape {shape!r}.")
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise InvalidValueError(f"`max_side` must be a positive int. Got {max_side!r}.")
    step = display_step(shape[:2], int(max_side))
    if block is None:
        chunk = _source_chunks(array)
        block_ = (1024, 1024) if chunk is None else (max(256, chunk[0]), max(256, chunk[1]))
    else:
        block_ = normalize_pair(block, "block")
        if min(block_) < 1:
            raise InvalidValueError(f"`block` must be positive. Got {block!r}.")
    rest = (slice(None),) * (len(shape) - 2)
    return _read_strided(lambda ys, xs: _as_numpy(array[(ys, xs) + rest]), shape[:2], step,
                         block_), step


class _ShapeOnly:
    """What :class:`chunkseg.engine.BlockReader` needs of an image read through ``direct``."""

    def __init__(self, shape):
        self.shape = shape


class _Image:
    """The input image, opened lazily: strided overviews, crops and reflect-padded tiles."""

    def __init__(self, image, shape: tuple[int, int] | None, storage_options=None):
        import dask.array as da
        import xarray as xr
        import zarr

        from ..engine.runner import BlockReader
        from ..errors import InvalidValueError
        from ..io import open_image

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
            arr = open_image(image, storage_options=storage_options)
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

        from .. import _ome
        from ..errors import IncompleteOutputWarning, InvalidValueError
        from ..outputs._target import describe_location
        from ..plan import plan_tiles

        self.where = describe_location(store)
        if isinstance(store, zarr.Group):
            group = store
        else:
            from ..objects.instances import _open_group

            group = _open_group(store, storage_options, "r")
        self.attrs = dict(group.attrs)
        self.arrays = {}
        for name in ("labels", "probabilities", "logits", "instances"):
            path = _ome.find(group, name)  # either layout (OME: labels/classes/0...)
            if path is not None:
                self.arrays[name] = group[path]
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
        if self.attrs.get("complete") is not True:
            warnings.warn(f"{self.where!r} is incomplete: chunks not yet written read as 0. "
                          "Finish it with predict_to_zarr(..., resume=True) (CLI: --resume).",
                          IncompleteOutputWarning, stacklevel=3)

    @property
    def instances(self):
        return self.arrays.get("instances")

    def default_cls(self) -> int:
        if self.instances is not None:
            return int(self.instances.attrs.get("class", 1))
        return 1 if self.classes > 1 else 0

    def connectivity(self) -> int:
        if self.instances is not None:
            return int(self.instances.attrs.get("connectivity", 1))
        return 1

    def labels(self, crop) -> np.ndarray:
        """``(h, w)`` argmax labels of the crop (the written ones, else from the scores)."""
        from ..kernels import blend

        (y0, y1), (x0, x1) = crop
        if "labels" in self.arrays:
            return np.asarray(self.arrays["labels"][y0:y1, x0:x1])
        name = "probabilities" if "probabilities" in self.arrays else "logits"
        scores = np.asarray(self.arrays[name][:, y0:y1, x0:x1], np.float32)
        return blend.labels_from_logits(np.nan_to_num(scores, nan=-np.inf))

    def probability(self, cls: int, crop) -> np.ndarray | None:
        """``(h, w)`` float32 blended probability of class ``cls``, or None (labels only)."""
        from ..kernels import blend

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
        from ..kernels import blend

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
    if image is None or isinstance(image, _Image):
        return image
    return _Image(image, out.shape, storage_options)


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
    from ..errors import InvalidValueError

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
            if isinstance(a, bool) or isinstance(b, bool):
                raise ValueError
            pairs.append((int(a) if isinstance(a, int | np.integer) else None,
                          int(b) if isinstance(b, int | np.integer) else None))
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
    from ..objects.instances import _class_index

    return out.default_cls() if cls is None else _class_index(cls, out.classes)


def _predictor(model, device: str, normalization):
    from ..models.load import as_model

    return as_model(model, device=device, normalization=normalization)


def _run_tiles(predictor, img: _Image, origins, tile: tuple[int, int], batch_size: int,
               classes: int | None = None):
    """Logits ``(K, T_y, T_x)`` float32 of each tile ``origins[i]`` (reflect padded)."""
    from ..errors import InvalidValueError
    from ..kernels import blend

    ty, tx = tile
    out = []
    for i in range(0, len(origins), batch_size):
        tiles = [img.tile((y0, y0 + ty), (x0, x0 + tx)) for y0, x0 in origins[i:i + batch_size]]
        batch = np.stack(tiles).astype(np.float32)
        logits = blend.check_model_output(predictor(batch), batch.shape)
        if classes is not None and logits.shape[1] != classes:
            raise InvalidValueError(
                f"`model` must be the output's model, returning its {classes} classes. Got a "
                f"model returning {logits.shape[1]}.")
        out.extend(logits)
    return out


def _scaler(sample: np.ndarray):
    """Map pixels of ``sample``'s dtype to [0, 1] for display (uint8 / 255, else percentiles)."""
    if sample.dtype == np.uint8:
        return lambda a: a.astype(np.float32) / 255.0
    if sample.dtype == bool:
        return lambda a: a.astype(np.float32)
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    lo, hi = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0))
    span = float(hi - lo) or 1.0
    return lambda a: np.clip((a.astype(np.float32) - lo) / span, 0, 1)


def _display(pixels: np.ndarray, scale=None) -> np.ndarray:
    """``(h, w, c)`` pixels -> ``(h, w, 3)`` float32 RGB in [0, 1] (grey for one channel)."""
    scale = scale or _scaler(pixels)
    c = pixels.shape[-1]
    if c in (3, 4):
        return scale(pixels[..., :3])
    g = scale(pixels[..., 0])
    return np.repeat(g[..., None], 3, axis=-1)


def _id_colours(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """``(h, w, 3)`` float32: a fixed pseudo-random colour per id (a hash of id and salt)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    with np.errstate(over="ignore"):
        x = uniq.astype(np.uint64) + np.uint64(salt + 1) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    rgb = np.stack([(x >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], -1)
    rgb = 0.2 + 0.8 * rgb.astype(np.float32) / 255.0
    rgb *= np.maximum(1.0, 0.75 / rgb.max(axis=-1, keepdims=True))  # no near-black colours
    return rgb[inverse.reshape(ids.shape)]


def _instance_rgb(ids: np.ndarray, base: np.ndarray | None = None, alpha: float = 0.6,
                  salt: int = 0) -> np.ndarray:
    """Objects (ids > 0) in their colours over ``base`` (``(h, w, 3)``; black if None)."""
    out = np.zeros(ids.shape + (3,), np.float32) if base is None else base.copy()
    fg = ids > 0
    if fg.any():
        colours = _id_colours(ids[fg], salt)
        out[fg] = colours if base is None else (1 - alpha) * out[fg] + alpha * colours
    return out


def _class_rgb(labels: np.ndarray, base: np.ndarray | None = None,
               alpha: float = 0.45) -> np.ndarray:
    from matplotlib.colors import to_rgb

    palette = np.array([to_rgb(c) for c in _CLASS_COLOURS], np.float32)
    rgb = palette[np.asarray(labels, np.int64) % len(palette)]
    return rgb if base is None else (1 - alpha) * base + alpha * rgb


def _imshow(ax, rgb: np.ndarray, origin: tuple[int, int], step: int = 1, **kw):
    """Show an image whose pixel ``(i, j)`` is image pixel ``origin + (i, j) * step``."""
    y0, x0 = origin
    h, w = rgb.shape[:2]
    return ax.imshow(rgb, extent=(x0 - 0.5, x0 + w * step - 0.5, y0 + h * step - 0.5, y0 - 0.5),
                     interpolation="nearest", **kw)


def _set_view(ax, crop) -> None:
    (y0, y1), (x0, x1) = crop
    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y1 - 0.5, y0 - 0.5)


def _chunk_borders(ax, plan: TilePlan, crop, **kw) -> None:
    (y0, y1), (x0, x1) = crop
    style = {"color": _CHUNK_COLOUR, "lw": 1.6, "ls": "--"} | kw
    for c in np.cumsum(plan.output_chunks()[0])[:-1]:
        if y0 < c < y1:
            ax.plot([x0 - 0.5, x1 - 0.5], [c - 0.5, c - 0.5], **style)
    for c in np.cumsum(plan.output_chunks()[1])[:-1]:
        if x0 < c < x1:
            ax.plot([c - 0.5, c - 0.5], [y0 - 0.5, y1 - 0.5], **style)


def _box(ax, crop, **kw):
    from matplotlib.patches import Rectangle

    (y0, y1), (x0, x1) = crop
    return ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, **kw))


def _outlined(**kw) -> dict:
    import matplotlib.patheffects as pe

    return {"path_effects": [pe.withStroke(linewidth=2.5, foreground="black")], **kw}


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


# -- 1. overview ------------------------------------------------------------------------------

def overview(store, *, image=None, crop=None, max_side: int = 2048,
             storage_options: dict | None = None):
    """The whole image with the computation chunks, beside the output's objects or labels.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A finished :func:`chunkseg.predict_to_zarr` output (``labels`` and/or ``probabilities``
        / ``logits``, maybe ``instances`` from :func:`chunkseg.label`).
    image : optional
        The input it was computed from: anything :func:`chunkseg.open_image` takes, or an
        array-like with ``shape`` ``(H, W[, C])`` and step slicing (h5py, ...). Without it only
        the output is drawn.
    crop : ((y0, y1), (x0, x1)), optional
        The region the other figures show, drawn as a yellow box (default :func:`default_crop`).
    max_side : int, default 2048
        Longer side of the overviews, pixels.
    storage_options : dict, optional
        fsspec options for a URL ``store`` or ``image``.

    Returns
    -------
    matplotlib.figure.Figure
        One or two panels: the image (grey, or RGB for 3-4 channels) and the ``instances``
        (ids in pseudo-random colours) or the argmax ``labels`` (class colours), both every
        ``step``-th pixel (``step = ceil(max(H, W) / max_side)``), with the chunk borders (red)
        and the crop (yellow).

    Notes
    -----
    Reads every ``step``-th pixel of the image and of ``instances`` (or ``labels``), one block
    (about one chunk) at a time with strided reads (:func:`read_overview`): never the
    full-resolution array in one piece. Memory: two overviews of at most ``max_side^2``
    pixels (RGB float32 for display) plus one block.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _overview(out, img, _check_crop(crop, out.plan), max_side)


def _overview(out: _Output, img: _Image | None, crop, max_side: int):
    from ..errors import InvalidValueError

    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise InvalidValueError(f"`max_side` must be a positive int. Got {max_side!r}.")
    plan = out.plan
    h, w = plan.image_shape
    full = ((0, h), (0, w))
    kind, seg, step = out.segmentation_overview(int(max_side))
    panels = []
    if img is not None:
        pixels, _ = img.overview(int(max_side))
        panels.append((_display(pixels), f"input {h} x {w}"))
    if kind == "instances":
        n = int(out.instances.attrs.get("objects", 0))
        panels.append((_instance_rgb(seg),
                       f"instances of class {out.default_cls()}: {n} objects (own colours)"))
    else:
        panels.append((_class_rgb(seg), f"labels (argmax of {out.classes} classes)"))
    aspect = h / w
    width = 6.5 * len(panels)
    fig = _figure((width, min(12.0, 6.5 * aspect + 1.0)))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (rgb, title) in zip(axes, panels):
        _imshow(ax, rgb, (0, 0), step)
        _set_view(ax, full)
        _chunk_borders(ax, plan, full, ls="-", lw=1.0)
        _box(ax, crop, fill=False, ec=_CROP_COLOUR, lw=2.0)
        ax.set_title(title, fontsize=11)
        _no_ticks(ax)
    sampled = "full resolution" if step == 1 else f"every {_ordinal(step)} pixel"
    fig.suptitle(f"{out.where}: {plan.n_chunks} chunks of {plan.chunks[0]} x {plan.chunks[1]} "
                 f"(red), the crop of the other figures (yellow); {sampled}", fontsize=11)
    return fig


# -- 2. tile decomposition --------------------------------------------------------------------

def tile_decomposition(store, *, image=None, crop=None, storage_options: dict | None = None):
    """The overlapping tiles of the global grid over a crop, each in its own colour.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output; the grid is
        ``plan_tiles(shape, tile, overlap, chunks)`` of its attrs (:func:`output_plan`).
    image : optional
        As :func:`overview`; the background (else the output's labels).
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`default_crop`: about 3 x 3 tiles around a chunk corner.
    storage_options : dict, optional

    Returns
    -------
    matplotlib.figure.Figure
        The crop with every tile that reaches into it: its extent outlined and its stride cell
        (the part of the image it is centred on, ``[k * stride, (k + 1) * stride)``) shaded in
        the tile's colour, labelled ``ky,kx``; chunk borders dashed red.

    Notes
    -----
    Reads the crop of the image (or of ``labels``) at full resolution, nothing else.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _tile_decomposition(out, img, _check_crop(crop, out.plan))


def _tile_decomposition(out: _Output, img: _Image | None, crop):
    from matplotlib.patches import Rectangle

    plan = out.plan
    (y0, y1), (x0, x1) = crop
    if img is not None:
        base = _display(img.crop(crop))
    else:
        base = _class_rgb(out.labels(crop), np.full((y1 - y0, x1 - x0, 3), 0.5, np.float32))
    fig = _figure((8.5, 8.5 * (y1 - y0) / (x1 - x0) + 0.9))
    ax = fig.subplots()
    _imshow(ax, 0.35 + 0.65 * base, (y0, x0))
    (ty, tx), (sy, sx) = plan.tile, plan.stride
    oy, ox = plan.tile_origins()
    kys = [k for k in range(len(oy)) if oy[k] < y1 and oy[k] + ty > y0]
    kxs = [k for k in range(len(ox)) if ox[k] < x1 and ox[k] + tx > x0]
    small = min(sy, sx) < 0.06 * max(y1 - y0, x1 - x0)
    inner_y, inner_x = crop_tiles(plan, crop)
    for ky in kys:
        for kx in kxs:
            colour = _TILE_COLOURS[(ky % 3) * 3 + kx % 3]
            inner = ky in inner_y and kx in inner_x  # the crop's own tiles: bold outlines
            ax.add_patch(Rectangle((kx * sx - 0.5, ky * sy - 0.5), sx, sy, fc=colour,
                                   alpha=0.28, ec="none"))
            ax.add_patch(Rectangle((ox[kx] - 0.5 + 0.7, oy[ky] - 0.5 + 0.7), tx - 1.4,
                                   ty - 1.4, fill=False, ec=colour, lw=2.4 if inner else 1.0,
                                   alpha=1.0 if inner else 0.6))
            if not small:
                cy, cx = ky * sy + sy / 2 - 0.5, kx * sx + sx / 2 - 0.5
                if y0 <= cy < y1 and x0 <= cx < x1:
                    ax.text(cx, cy, f"{ky},{kx}", ha="center", va="center", color="white",
                            fontsize=10, **_outlined())
    _chunk_borders(ax, plan, crop, lw=2.2)
    _set_view(ax, crop)
    ax.set_title(
        f"global tile grid on y {y0}..{y1}, x {x0}..{x1}: tile {ty} x {tx}, overlap "
        f"{plan.overlap[0]} x {plan.overlap[1]}, stride {sy} x {sx}\n"
        f"outline: a tile's extent (what the model sees); shaded: its stride cell; "
        f"red dashed: chunk borders", fontsize=10)
    return fig


# -- 3. per-tile predictions ------------------------------------------------------------------

def tile_components(store, image, model, *, crop=None, cls: int | None = None,
                    connectivity: int | None = None, batch_size: int = 8, device: str = "cpu",
                    normalization=None, storage_options: dict | None = None) -> list[dict]:
    """Run the model on each tile of a crop alone and label the objects of one class per tile.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output (its grid and class count).
    image
        The input it was computed from (as :func:`overview`).
    model
        Anything :func:`chunkseg.as_model` takes (``"isbi2012-unet"``, a callable, ...), the
        output's model.
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`default_crop`. Its tiles are :func:`crop_tiles` (at most
        :data:`MAX_TILE_PANELS`).
    cls : int, optional
        Class whose connected components are the objects; default the class of the output's
        ``instances`` (else 1).
    connectivity : {1, 2}, optional
        As :func:`chunkseg.label`; default the ``instances``' own (else 1).
    batch_size : int, default 8
        Tiles per model call.
    device, normalization
        As :func:`chunkseg.as_model`.
    storage_options : dict, optional

    Returns
    -------
    list of dict, row-major over the tiles
        ``tile`` ``(ky, kx)``; ``origin`` ``(y0, x0)`` (image coordinates, may be negative);
        ``pixels`` ``(C, T_y, T_x)`` the tile as the model saw it (image dtype, reflect padded
        at the image border, read with :class:`chunkseg.engine.BlockReader`); ``logits``
        ``(K, T_y, T_x)`` float32; ``labels`` ``(T_y, T_x)`` argmax; ``components``
        ``(T_y, T_x)`` int32, :func:`scipy.ndimage.label` of ``labels == cls`` (0 background);
        ``objects`` their number.

    Notes
    -----
    Memory: per tile ``(C + 2K + 2) * T_y * T_x`` numbers; reads each tile's pixels.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _tile_components(out, img, _predictor(model, device, normalization),
                            _check_crop(crop, out.plan), _cls_index(cls, out), connectivity,
                            positive_int(batch_size, "batch_size"))


def _tile_components(out: _Output, img: _Image, predictor, crop, cls: int, connectivity,
                     batch_size: int) -> list[dict]:
    from scipy import ndimage

    from ..errors import InvalidValueError
    from ..kernels import blend

    if connectivity is None:
        connectivity = out.connectivity()
    if connectivity not in (1, 2) or isinstance(connectivity, bool):
        raise InvalidValueError(f"`connectivity` must be 1 or 2. Got {connectivity!r}.")
    plan = out.plan
    kys, kxs = crop_tiles(plan, crop)
    if len(kys) * len(kxs) > MAX_TILE_PANELS:
        raise InvalidValueError(
            f"`crop` must hold at most {MAX_TILE_PANELS} tiles for the per-tile predictions "
            f"(one panel each). Got {crop!r}, which holds {len(kys)} x {len(kxs)}.")
    if not len(kys) or not len(kxs):
        raise InvalidValueError(
            f"`crop` must hold the centre of at least one tile's stride cell (stride "
            f"{plan.stride}). Got {crop!r}.")
    oy, ox = plan.tile_origins()
    keys = [(ky, kx) for ky in kys for kx in kxs]
    origins = [(int(oy[ky]), int(ox[kx])) for ky, kx in keys]
    logits = _run_tiles(predictor, img, origins, plan.tile, batch_size, out.classes)
    structure = ndimage.generate_binary_structure(2, connectivity)
    result = []
    for key, origin, z in zip(keys, origins, logits):
        labels = blend.labels_from_logits(z)
        comps, n = ndimage.label(labels == cls, structure=structure)
        ty, tx = plan.tile
        result.append({"tile": key, "origin": origin,
                       "pixels": img.tile((origin[0], origin[0] + ty), (origin[1], origin[1] + tx)),
                       "logits": z, "labels": labels, "components": comps.astype(np.int32),
                       "objects": int(n)})
    return result


def tile_predictions(store, image, model, *, crop=None, cls: int | None = None,
                     connectivity: int | None = None, batch_size: int = 8, device: str = "cpu",
                     normalization=None, storage_options: dict | None = None):
    """Each tile of a crop predicted alone: its objects in their own colours, one panel a tile.

    Parameters are those of :func:`tile_components`.

    Returns
    -------
    matplotlib.figure.Figure
        A grid of panels laid out like the tiles (row ``ky``, column ``kx``): the tile's pixels
        (grey) with the connected components of class ``cls`` of its own argmax, in colours
        drawn at random per tile (the same object gets a different colour in each tile, and
        is cut at the tile's edge); axes in image coordinates; the stride cell dashed white,
        the image border (beyond it: reflect padding) dotted yellow.

    Notes
    -----
    Runs the model on the crop's tiles (:func:`crop_tiles`, 9 for the default crop), nothing
    else; memory as :func:`tile_components`.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    crop_ = _check_crop(crop, out.plan)
    cls_ = _cls_index(cls, out)
    comps = _tile_components(out, img, _predictor(model, device, normalization), crop_, cls_,
                             connectivity, positive_int(batch_size, "batch_size"))
    return _tile_predictions(out, comps, crop_, cls_)


def _tile_predictions(out: _Output, comps: list[dict], crop, cls: int):
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    plan = out.plan
    rows = sorted({c["tile"][0] for c in comps})
    cols = sorted({c["tile"][1] for c in comps})
    (ty, tx), (sy, sx) = plan.tile, plan.stride
    h, w = plan.image_shape
    panel = 3.2
    fig = _figure((panel * len(cols) * tx / max(ty, tx) + 0.4,
                   panel * len(rows) * ty / max(ty, tx) + 1.0))
    # tiles of one row (column) share their y (x) extent: tick labels on the outer panels only
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex="col", sharey="row")
    scale = _scaler(np.stack([c["pixels"] for c in comps]).transpose(0, 2, 3, 1))
    for c in comps:
        ky, kx = c["tile"]
        ax = axes[rows.index(ky)][cols.index(kx)]
        y0, x0 = c["origin"]
        base = 0.15 + 0.55 * _display(c["pixels"].transpose(1, 2, 0), scale)
        rgb = _instance_rgb(c["components"], base, alpha=0.85, salt=ky * 100_003 + kx)
        _imshow(ax, rgb, (y0, x0))
        ax.add_patch(Rectangle((kx * sx - 0.5, ky * sy - 0.5), sx, sy, fill=False, ec="white",
                               lw=1.2, ls="--"))
        if y0 < 0 or x0 < 0 or y0 + ty > h or x0 + tx > w:
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, ec=_CROP_COLOUR, lw=1.5,
                                   ls=":"))
        _set_view(ax, ((y0, y0 + ty), (x0, x0 + tx)))
        ax.set_title(f"tile {ky},{kx} at y {y0}, x {x0}: {c['objects']} objects", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=8)
        ax.label_outer()
    fig.suptitle(
        f"each tile predicted alone (tile {ty} x {tx}, argmax; components of class {cls} in "
        f"random colours per tile)\nwhite dashed: the tile's stride cell; the tiles overlap by "
        f"{plan.overlap[0]} x {plan.overlap[1]} px and disagree near their edges", fontsize=10)
    return fig


# -- 4. reconstruction ------------------------------------------------------------------------

def reconstruction(store, *, image=None, crop=None, storage_options: dict | None = None):
    """The final result on a crop: the written instances (else labels) over the image.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A finished :func:`chunkseg.predict_to_zarr` output; its ``instances`` are shown if
        :func:`chunkseg.label` wrote them, else its argmax labels.
    image : optional
        As :func:`overview`; the background.
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`default_crop`.
    storage_options : dict, optional

    Returns
    -------
    matplotlib.figure.Figure
        Two panels on the crop: the objects over the image (or class colours over it), and the
        objects alone; each global id in one colour (the same colour in every figure), chunk
        borders dashed red: an object crossing them keeps its id.

    Notes
    -----
    Reads the crop of ``instances`` (or ``labels``) and of the image at full resolution.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _reconstruction(out, img, _check_crop(crop, out.plan))


def _reconstruction(out: _Output, img: _Image | None, crop):
    plan = out.plan
    (y0, y1), (x0, x1) = crop
    base = _display(img.crop(crop)) if img is not None else None
    if out.instances is not None:
        ids = np.asarray(out.instances[y0:y1, x0:x1])
        n_crop = int(np.unique(ids[ids > 0]).size)
        over = _instance_rgb(ids, None if base is None else 0.15 + 0.6 * base, alpha=0.85)
        alone = _instance_rgb(ids)
        what = (f"instances of class {out.default_cls()}: {n_crop} objects in the crop, "
                f"{int(out.instances.attrs.get('objects', 0))} in all")
    else:
        labels = out.labels(crop)
        over = _class_rgb(labels, base) if base is not None else _class_rgb(labels)
        alone = _class_rgb(labels)
        what = f"labels (argmax of {out.classes} classes; run chunkseg.instances for objects)"
    fig = _figure((13.0, 6.5 * (y1 - y0) / (x1 - x0) + 1.2))
    axes = fig.subplots(1, 2)
    for ax, rgb, title in ((axes[0], over, "over the image" if base is not None else ""),
                           (axes[1], alone, "alone")):
        _imshow(ax, rgb, (y0, x0))
        _chunk_borders(ax, plan, crop, lw=1.8)
        _set_view(ax, crop)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"final result on y {y0}..{y1}, x {x0}..{x1}: {what}\nred dashed: chunk "
                 "borders (objects cross them with one id)", fontsize=11)
    return fig


# -- 5. seams ---------------------------------------------------------------------------------

def naive_patches(image, model, tile: int | tuple[int, int], crop=None, *, batch_size: int = 8,
                  device: str = "cpu", normalization=None,
                  storage_options: dict | None = None) -> np.ndarray:
    """Logits of the naive tiling: the model on patches laid edge to edge, no overlap, no blend.

    Patch ``(i, j)`` covers ``[i * T_y, (i + 1) * T_y) x [j * T_x, (j + 1) * T_x)``; the last
    ones reach past the image and are reflect-padded there (as the engine pads). Each pixel
    takes the logits of the one patch that holds it.

    Parameters
    ----------
    image
        Anything :func:`chunkseg.open_image` takes, or an array-like ``(H, W[, C])``.
    model
        Anything :func:`chunkseg.as_model` takes.
    tile : int or (int, int)
        Patch size ``(T_y, T_x)``.
    crop : ((y0, y1), (x0, x1)), optional
        Region to return; default the whole image (which must then be at most
        :data:`MAX_CROP_PIXELS`).
    batch_size : int, default 8
    device, normalization
        As :func:`chunkseg.as_model`.
    storage_options : dict, optional

    Returns
    -------
    (K, h, w) ndarray of float32
        The crop's logits, exactly as the model returned them for its patch.

    Notes
    -----
    Runs the model on the patches that meet the crop only. Memory: ``K`` float32 planes of the
    crop grown to whole patches.
    """
    from ..errors import InvalidValueError
    from ..plan import normalize_pair, plan_tiles

    tile_ = normalize_pair(tile, "tile")
    if min(tile_) < 1:
        raise InvalidValueError(f"`tile` must be positive. Got {tile!r}.")
    img = image if isinstance(image, _Image) else _Image(image, None, storage_options)

    plan = plan_tiles(img.shape, tile_, 0, img.shape)
    crop_ = _check_crop(((0, img.shape[0]), (0, img.shape[1])) if crop is None else crop, plan)
    return _naive_patches(img, _predictor(model, device, normalization), tile_, crop_,
                          positive_int(batch_size, "batch_size"))


def _naive_patches(img: _Image, predictor, tile: tuple[int, int], crop, batch_size: int,
                   classes: int | None = None) -> np.ndarray:
    (y0, y1), (x0, x1) = crop
    ty, tx = tile
    ky0, ky1 = y0 // ty, -(-y1 // ty)
    kx0, kx1 = x0 // tx, -(-x1 // tx)
    keys = [(ky, kx) for ky in range(ky0, ky1) for kx in range(kx0, kx1)]
    logits = _run_tiles(predictor, img, [(ky * ty, kx * tx) for ky, kx in keys], tile,
                        batch_size, classes)
    k = logits[0].shape[0]
    full = np.empty((k, (ky1 - ky0) * ty, (kx1 - kx0) * tx), np.float32)
    for (ky, kx), z in zip(keys, logits):
        full[:, (ky - ky0) * ty:(ky - ky0 + 1) * ty, (kx - kx0) * tx:(kx - kx0 + 1) * tx] = z
    oy, ox = ky0 * ty, kx0 * tx
    return full[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox].copy()


def seam_arrays(store, image, model, *, crop=None, cls: int | None = None, batch_size: int = 8,
                device: str = "cpu", normalization=None,
                storage_options: dict | None = None) -> dict:
    """What :func:`seams` draws: naive patches vs the blended output on a crop.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output; the naive patches use its tile size.
    image, model
        The input and the model the output was computed with (as :func:`tile_components`).
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`default_crop`.
    cls : int, optional
        Class whose probability is compared; default as :func:`tile_components`.
    batch_size, device, normalization, storage_options
        As :func:`tile_components`.

    Returns
    -------
    dict
        ``crop``; ``tile`` ``(T_y, T_x)``; ``cls``; ``naive_logits`` ``(K, h, w)`` float32
        (:func:`naive_patches`); ``naive_probability`` ``(h, w)`` float32 (softmax, class
        ``cls``); ``naive_labels`` ``(h, w)`` (argmax); ``labels`` ``(h, w)`` the output's;
        ``probability`` ``(h, w)`` float32 the output's blended probability of ``cls``
        (from ``probabilities``, else softmax of ``logits``; None if it holds labels only);
        ``difference`` ``(h, w)`` float32 ``|naive_probability - probability|`` (None without
        a probability); ``disagree`` ``(h, w)`` bool ``naive_labels != labels``;
        ``patch_edges`` ``(ys, xs)``: image coordinates of the naive patch borders inside the
        crop (multiples of the tile).

    Notes
    -----
    Runs the model on the naive patches meeting the crop and reads the crop of the output.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _seam_arrays(out, img, _predictor(model, device, normalization),
                        _check_crop(crop, out.plan), _cls_index(cls, out),
                        positive_int(batch_size, "batch_size"))


def _seam_arrays(out: _Output, img: _Image, predictor, crop, cls: int, batch_size: int) -> dict:
    from ..kernels import blend

    tile = out.plan.tile
    naive = _naive_patches(img, predictor, tile, crop, batch_size, out.classes)
    naive_p = blend.probabilities_from_logits(naive)[cls]
    naive_labels = blend.labels_from_logits(naive)
    labels = out.labels(crop)
    prob = out.probability(cls, crop)
    (y0, y1), (x0, x1) = crop
    edges = tuple(tuple(range((a // t + 1) * t, b, t)) for (a, b), t in zip(crop, tile))
    return {"crop": crop, "tile": tile, "cls": cls, "naive_logits": naive,
            "naive_probability": naive_p, "naive_labels": naive_labels, "labels": labels,
            "probability": prob,
            "difference": None if prob is None else np.abs(naive_p - prob).astype(np.float32),
            "disagree": naive_labels != labels, "patch_edges": edges}


def seams(store, image, model, *, crop=None, cls: int | None = None, batch_size: int = 8,
          device: str = "cpu", normalization=None, storage_options: dict | None = None):
    """Naive non-overlapping patches vs the blended output, with the patch borders marked.

    Parameters are those of :func:`seam_arrays`.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels on the crop: the argmax of the naive patches (tile ``T``, stride ``T``,
        no blending), the output's labels (the same tile, overlapping and blended), and
        ``|p_naive - p_blended|`` of class ``cls`` (or, for an output with labels only, where
        the labels disagree); the naive patch borders dashed cyan on all three.

    Notes
    -----
    As :func:`seam_arrays`.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    arrays = _seam_arrays(out, img, _predictor(model, device, normalization),
                          _check_crop(crop, out.plan), _cls_index(cls, out),
                          positive_int(batch_size, "batch_size"))
    return _seams(out, arrays)


def _seams(out: _Output, a: dict):
    plan = out.plan
    crop = a["crop"]
    (y0, y1), (x0, x1) = crop
    fig = _figure((19.0, 6.2 * (y1 - y0) / (x1 - x0) + 1.3))
    axes = fig.subplots(1, 3)
    _imshow(axes[0], _class_rgb(a["naive_labels"]), (y0, x0))
    axes[0].set_title(f"naive: patches {plan.tile[0]} x {plan.tile[1]} edge to edge, "
                      "argmax", fontsize=10)
    _imshow(axes[1], _class_rgb(a["labels"]), (y0, x0))
    axes[1].set_title(f"chunkseg: overlap {plan.overlap[0]}, {out.attrs.get('window', '?')} "
                      "blending, argmax", fontsize=10)
    if a["difference"] is not None:
        diff = a["difference"]  # NaN where a mask kept the model off
        top = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
        im = _imshow(axes[2], diff, (y0, x0), cmap="magma", vmin=0, vmax=max(top, 1e-6))
        fig.colorbar(im, ax=axes[2], shrink=0.8)
        axes[2].set_title(f"|p naive - p blended| of class {a['cls']} (max {top:.3f})",
                          fontsize=10)
    else:
        _imshow(axes[2], a["disagree"].astype(np.float32), (y0, x0), cmap="magma", vmin=0,
                vmax=1)
        axes[2].set_title(f"labels disagree ({int(a['disagree'].sum())} px)", fontsize=10)
    ys, xs = a["patch_edges"]
    for ax in axes:
        for e in ys:
            ax.plot([x0 - 0.5, x1 - 0.5], [e - 0.5, e - 0.5], color=_PATCH_COLOUR, lw=1.0,
                    ls="--")
        for e in xs:
            ax.plot([e - 0.5, e - 0.5], [y0 - 0.5, y1 - 0.5], color=_PATCH_COLOUR, lw=1.0,
                    ls="--")
        _set_view(ax, crop)
    fig.suptitle(f"seams on y {y0}..{y1}, x {x0}..{x1}: naive patch borders dashed cyan "
                 f"(class colours: 0 dark, 1 light)", fontsize=11)
    return fig


# -- all of them ------------------------------------------------------------------------------

def figures(store, out_dir: str | os.PathLike, *, image=None, model=None, crop=None,
            cls: int | None = None, max_side: int = 2048, batch_size: int = 8,
            device: str = "cpu", normalization=None, storage_options: dict | None = None,
            dpi: int = 110, overwrite: bool = False) -> dict[str, Path]:
    """Write the figures of a finished output as PNG files (``chunkseg figures OUT``).

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A finished :func:`chunkseg.predict_to_zarr` output: a Zarr v3 group with ``labels``
        ``(y, x)`` and/or ``probabilities`` / ``logits`` ``(class, y, x)``, the attrs ``tile``,
        ``overlap``, ``chunks``, ``window``, ``classes``; maybe ``instances`` ``(y, x)`` uint32
        (:func:`chunkseg.label`).
    out_dir : str or os.PathLike
        Folder for the PNGs (created if missing).
    image : optional
        The input the output was computed from: anything :func:`chunkseg.open_image` takes (or
        an array-like with step slicing). Needed by the tile predictions and the seams, drawn
        under the others.
    model : optional
        Anything :func:`chunkseg.as_model` takes: the output's model. With ``image``, the tile
        predictions and the seams are drawn too. It is never taken from the output's attrs
        (they are data, not code to import).
    crop : ((y0, y1), (x0, x1)), optional
        Full-resolution region of figures 2-5 (at most :data:`MAX_CROP_PIXELS`); default
        :func:`default_crop`: about 3 x 3 tiles around a chunk corner.
    cls : int, optional
        Class of the objects; default the class of ``instances`` (else 1).
    max_side : int, default 2048
        Longer side of the overview, pixels.
    batch_size : int, default 8
        Tiles per model call.
    device, normalization
        As :func:`chunkseg.as_model`.
    storage_options : dict, optional
        fsspec options for a URL ``store`` or ``image``.
    dpi : int, default 110
        Resolution of the PNGs.
    overwrite : bool, default False
        Replace PNGs of an earlier call.

    Returns
    -------
    dict of str to Path
        The files written, keyed by figure: ``overview`` (``overview.png``, :func:`overview`),
        ``tiles`` (``tiles.png``, :func:`tile_decomposition`), ``reconstruction``
        (``reconstruction.png``, :func:`reconstruction`) always; ``tile_predictions``
        (``tile_predictions.png``, :func:`tile_predictions`) and ``seams`` (``seams.png``,
        :func:`seams`) with ``model`` and ``image``. In the order of :data:`FIGURES`.

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If one of the PNGs to write exists and ``overwrite`` is False (checked before any is
        written).
    chunkseg.errors.InvalidValueError
        For a bad argument (``model`` without ``image``, a crop outside the image, an image
        of another shape, a class the output lacks, ...).
    chunkseg.errors.NotFoundError
        If ``store`` holds no Zarr group.

    Notes
    -----
    Reads every ``step``-th pixel of the image and the output for the overview, block by block
    (:func:`read_overview`), and the crop at full resolution; runs the model on the crop's
    tiles (9 by default) and on the naive patches that meet it. Memory: the overview (at most
    ``max_side^2`` pixels) and a few full-resolution planes of the crop.
    """
    from ..errors import InvalidTypeError, InvalidValueError
    from ..outputs._lifecycle import replacing
    from ..outputs._target import check_output_files

    if not isinstance(out_dir, str | os.PathLike):
        raise InvalidTypeError(f"`out_dir` must be a folder path. Got {type(out_dir).__name__}.")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InvalidValueError(f"`out_dir` must be a folder. Got {str(folder)!r}, a file.")
    if model is not None and image is None:
        raise InvalidValueError(
            "`image` must be given with `model` (the tile predictions and the seams run the "
            "model on the image). Got image=None.")
    if isinstance(dpi, bool) or not isinstance(dpi, int | np.integer) or not 10 <= dpi <= 600:
        raise InvalidValueError(f"`dpi` must be an int from 10 to 600. Got {dpi!r}.")
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    crop_ = _check_crop(crop, out.plan)
    cls_ = _cls_index(cls, out)
    bs = positive_int(batch_size, "batch_size")
    names = [n for n in FIGURES if model is not None or n not in ("tile_predictions", "seams")]
    paths = {n: folder / f"{n}.png" for n in names}
    # never over an input, under any name (the image, the output store)
    check_output_files(paths.values(), overwrite=overwrite, sources=(store, image))
    predictor = None if model is None else _predictor(model, device, normalization)
    makers = {
        "overview": lambda: _overview(out, img, crop_, max_side),
        "tiles": lambda: _tile_decomposition(out, img, crop_),
        "tile_predictions": lambda: _tile_predictions(
            out, _tile_components(out, img, predictor, crop_, cls_, None, bs), crop_, cls_),
        "reconstruction": lambda: _reconstruction(out, img, crop_),
        "seams": lambda: _seams(out, _seam_arrays(out, img, predictor, crop_, cls_, bs)),
    }
    if isinstance(max_side, bool) or not isinstance(max_side, int | np.integer) or max_side < 1:
        raise InvalidValueError(f"`max_side` must be a positive int. Got {max_side!r}.")
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in names:
        fig = makers[name]()
        with replacing(paths[name]) as part:  # an earlier figure stays until this one is whole
            fig.savefig(part, dpi=int(dpi))
        written[name] = paths[name]
    return written
