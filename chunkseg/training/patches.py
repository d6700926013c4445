"""Training patches from images of any size: a lazy, picklable :class:`torch.utils.data.Dataset`.

:class:`PatchDataset` cuts ``(image, labels)`` pairs into tile-sized training patches. Every
input is opened with :func:`chunkseg.io.open_image`, exactly like :func:`chunkseg.predict`'s
input (Zarr/NGFF path or URL, TIFF, PNG/JPEG, numpy/dask/xarray), so nothing is loaded whole:
each ``dataset[i]`` reads one tile-sized region of the image and of the labels (Zarr inputs
through :class:`chunkseg.io.ZarrRegionReader`, one Zarr selection; other inputs through the
lazy dask array, computed synchronously). The dataset pickles without open file handles and
reopens its inputs lazily in each process, so it works with
``torch.utils.data.DataLoader(num_workers=N)``.

Three ways to place patches (``sampling``):

``"grid"``
    Every position of a regular grid with step ``stride`` (default: the tile, no overlap),
    plus one last row/column flush with the image end, so every pixel is in some patch.
``"random"``
    ``samples`` patches per epoch at uniform random positions over all pairs.
``"balanced"``
    ``samples`` patches per epoch whose centre pixel's class is drawn uniformly over the
    classes present: class first, then a pixel of that class uniformly over all pairs.

:func:`augmentation` builds the usual albumentations pipelines (D4 flips/rotations, EM
brightness/contrast jitter and elastic deformation, RGB colour jitter); needs
``chunkseg[train]`` (albumentations).
"""

from __future__ import annotations

import operator
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import dask
import numpy as np

from ..engine.runner import BlockReader
from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError

try:
    import torch
    import torch.utils.data
except ImportError as _err:  # pragma: no cover - torch is an optional extra
    raise MissingDependencyError(
        f"`chunkseg.training.patches` needs PyTorch. Got ImportError: {_err}. Install it with "
        "`pip install 'chunkseg[torch,train]'`."
    ) from _err
from ..io import open_image
from ..io._locations import _is_url
from ..models.load import Normalization
from ..plan import normalize_pair

__all__ = ["PatchDataset", "augmentation", "grid_starts", "SAMPLINGS", "AUGMENTATIONS"]

#: The values ``sampling`` takes.
SAMPLINGS: tuple[str, ...] = ("grid", "random", "balanced")
#: The values :func:`augmentation`'s ``kind`` takes.
AUGMENTATIONS: tuple[str, ...] = ("em", "rgb", "flips", "none")

#: Side of the cells over which ``sampling="balanced"`` counts classes (at most; a cell never
#: crosses a chunk of the label array). A draw reads one cell of labels.
BALANCE_CELL = 256
#: Label cells that ``sampling="balanced"`` keeps per process (least recently used dropped).
CELL_CACHE_BYTES = 32 * 2**20

_INT32 = np.iinfo(np.int32)


# --------------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------------


def grid_starts(length: int, tile: int, stride: int) -> np.ndarray:
    """Start coordinates of grid patches along one axis.

    Parameters
    ----------
    length, tile, stride : int
        Axis length, patch length and step, all positive, ``tile <= length``.

    Returns
    -------
    (n,) ndarray of int64
        ``0, stride, 2 * stride, ...`` while the patch fits, plus ``length - tile`` when the
        last of those does not end at ``length`` (a patch flush with the image end), so
        ``n = (length - tile) // stride + 1 + ((length - tile) % stride != 0)``. With
        ``stride <= tile`` every coordinate is inside some patch.

    Examples
    --------
    >>> grid_starts(10, 4, 4).tolist()
    [0, 4, 6]
    """
    starts = np.arange(0, length - tile + 1, stride, dtype=np.int64)
    if starts[-1] + tile < length:
        starts = np.append(starts, np.int64(length - tile))
    return starts


def _mask_range(start: np.ndarray | int, stop: np.ndarray | int, size: int, msize: int):
    """Mask pixels ``[lo, hi)`` covering image pixels ``[start, stop)`` (the rule of
    :func:`chunkseg.plan.tile_mask`: mask pixel ``i`` covers ``[i * H / M, (i + 1) * H / M)``)."""
    start, stop = np.asarray(start, np.int64), np.asarray(stop, np.int64)
    return (start * msize) // size, -((-stop * msize) // size)


# --------------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool | np.bool_)


def _positive_pair(value: Any, name: str) -> tuple[int, int]:
    pair = normalize_pair(value, name)
    if min(pair) < 1:
        raise InvalidValueError(f"`{name}` must be positive. Got {value!r}.")
    return pair


def _split_pairs(pairs: Any) -> list[tuple[Any, Any]]:
    """``pairs`` as a list of ``(image, labels)``; one pair alone is accepted."""
    if isinstance(pairs, Sequence) and not isinstance(pairs, str | bytes):
        items = list(pairs)
        # an image or a label image is never a list or tuple, so (image, labels) is one pair
        if len(items) == 2 and not any(isinstance(x, list | tuple) for x in items):
            return [(items[0], items[1])]
        out = []
        for k, pair in enumerate(items):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                what = type(pair).__name__
                if isinstance(pair, list | tuple):
                    what += f" of length {len(pair)}"
                raise InvalidTypeError(
                    f"`pairs[{k}]` must be an (image, labels) tuple. Got {what}. Pass a list of "
                    "(image, labels) tuples, or one tuple."
                )
            out.append((pair[0], pair[1]))
        if not out:
            raise InvalidValueError(
                "`pairs` must hold at least one (image, labels) pair. Got an empty sequence."
            )
        return out
    raise InvalidTypeError(
        f"`pairs` must be an (image, labels) tuple or a sequence of them. Got "
        f"{type(pairs).__name__}."
    )


def _split_masks(mask: Any, n: int) -> list[Any]:
    if mask is None:
        return [None] * n
    if isinstance(mask, list | tuple):
        if len(mask) != n:
            raise InvalidValueError(
                f"`mask` must hold one mask (or None) per pair. Got {len(mask)} masks for "
                f"{n} pairs."
            )
        return list(mask)
    if n != 1:
        raise InvalidValueError(
            f"`mask` must be a list with one mask (or None) per pair when there are several "
            f"pairs. Got one {type(mask).__name__} for {n} pairs; pass `[mask_0, mask_1, ...]`."
        )
    return [mask]


def _open(source: Any, storage_options: Mapping[str, Any] | None):
    """:func:`open_image`, with ``storage_options`` only for URL sources."""
    options = None
    if storage_options is not None and isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        options = storage_options if isinstance(path, str) and _is_url(path) else None
    return open_image(source, storage_options=options)


class _Opened:
    """One pair opened in this process: the lazy arrays and their region readers."""

    def __init__(self, image, labels, mask):
        self.image, self.labels, self.mask = image, labels, mask
        self.read_image = BlockReader(image.data, image.encoding.get("chunkseg_reader"))
        self.read_labels = BlockReader(labels.data, labels.encoding.get("chunkseg_reader"))
        self.read_mask = (None if mask is None else
                          BlockReader(mask.data, mask.encoding.get("chunkseg_reader")))


def _reseed(transform: Any, seq: np.random.SeedSequence) -> None:
    """Give an albumentations transform (and each transform of a Compose its own) seed."""
    setter = getattr(transform, "set_random_seed", None)
    if setter is None:
        return
    setter(int(seq.generate_state(1)[0]))
    children = getattr(transform, "transforms", None)
    if isinstance(children, Sequence):
        for child, child_seq in zip(children, seq.spawn(len(children))):
            _reseed(child, child_seq)


# --------------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------------


class PatchDataset(torch.utils.data.Dataset):
    """Tile-sized training patches cut lazily from (image, labels) pairs of any size.

    Parameters
    ----------
    pairs : (image, labels) or sequence of (image, labels)
        Each ``image`` and ``labels`` is anything :func:`chunkseg.io.open_image` accepts (Zarr
        or NGFF path/URL, TIFF, PNG/JPEG, numpy, dask or xarray array). Images are
        ``(Y, X)`` or ``(Y, X, C)``, all with the same ``C``; labels are ``(Y, X)`` (or
        ``(Y, X, 1)``) with their image's ``Y`` and ``X``. One pair alone is accepted.
    tile : int or (int, int)
        Patch size ``(T_y, T_x)``; must fit inside every image.
    stride : int or (int, int), optional
        Grid step for ``sampling="grid"``; default ``tile`` (non-overlapping patches, the
        "patchify" recipe). ``stride < tile`` overlaps patches; ``stride > tile`` leaves gaps.
    sampling : {"grid", "random", "balanced"}, default "grid"
        ``"grid"``: the starts of :func:`grid_starts` along y and x (a last row/column flush
        with the image end, so with ``stride <= tile`` every pixel is covered), pairs in
        order, row-major. ``"random"``: ``samples`` patches per epoch, each at a position
        drawn uniformly over every position of every pair (a pair is drawn in proportion to
        its number of positions). ``"balanced"``: ``samples`` patches per epoch; for each, a
        class is drawn uniformly over the classes present in the labels, then a pixel of
        that class uniformly over all pairs, and the patch is centred on it (shifted inside
        the image near the border, so the pixel is then off-centre but inside the patch).
    samples : int, optional
        Patches per epoch; required for ``"random"`` and ``"balanced"``, None for ``"grid"``.
    mask : array_like, path or list, optional
        Foreground mask per pair (a list with one mask or None per pair; a single mask for a
        single pair), anything :func:`~chunkseg.io.open_image` reads, foreground where > 0.
        Same ``(Y, X)`` as the image, or smaller (a thumbnail, mapped as in
        :func:`chunkseg.plan.tile_mask`: mask pixel ``i`` covers image pixels
        ``[i * Y / M_y, (i + 1) * Y / M_y)``). A patch's mask fraction is the foreground share
        of the mask pixels covering it (exact at full resolution).
    min_foreground : float, default 0.5
        Keep a grid patch whose mask fraction is ``>= min_foreground``; for random and
        balanced sampling a patch below it is redrawn (at most ``max_attempts`` draws).
    transform : callable, optional
        ``transform(image=(T_y, T_x, C) ndarray, mask=(T_y, T_x) int32 ndarray) -> dict`` with
        ``"image"`` and ``"mask"`` of the same shapes: an albumentations transform (see
        :func:`augmentation`) or any callable with that signature. The image is passed as
        uint8 for a uint8 image, else as float32 scaled by ``value_range`` to ``[0, 1]``
        (albumentations' intensity transforms assume that range and clip to it) and scaled
        back afterwards; the mask holds class indices and ``ignore_index``. An object with
        ``set_random_seed`` (every albumentations transform) is reseeded before each patch
        from ``(seed, epoch, index)``, so augmentation is reproducible and the same in every
        DataLoader worker; other callables use their own randomness.
    label_map : mapping, optional
        Stored label value -> class index (``{255: 0, 0: 1}`` for ISBI 2012); stored values
        not in the map become ``ignore_index``. Without it the stored labels are the class
        indices and must have an integer or boolean dtype.
    ignore_index : int, default -100
        Label of pixels not to train on (PyTorch's ``cross_entropy`` default). Stored values
        equal to it (without ``label_map``) stay ignored.
    normalization : chunkseg.models.Normalization, optional
        Applied to the float32 patch after augmentation, by the same
        :meth:`Normalization.__call__ <chunkseg.models.Normalization.__call__>` the model
        adapters run at inference, so a model trained on these patches runs in
        :func:`chunkseg.predict` with ``normalization=`` the same object. None: the patch in
        stored units, as float32.
    classes : int or sequence of str, optional
        Number of classes ``K`` (or their names). Labels outside ``[0, K)`` (other than
        ``ignore_index``) then raise ValueError when read. Without it, any non-negative class
        index is accepted.
    seed : int, default 0
        Seed of the random and balanced draws and of the augmentation; non-negative.
    storage_options : mapping, optional
        fsspec options for the inputs given as URLs (local paths and arrays ignore them).
    value_range : (float, float), optional
        Stored values mapped to ``[0, 1]`` for ``transform`` (and back after it): default
        the dtype's range for 8/16-bit integers other than uint8 (``(0, 65535)`` for uint16),
        else ``(0, 1)``, i.e. floats and wider integers are passed unchanged as float32, so
        give it for float images not in ``[0, 1]`` when the transform changes intensities.
        uint8 is passed as uint8 unless this is given.
    max_attempts : int, default 100
        Draws per random/balanced patch before an error when the mask rejects them.

    Raises
    ------
    TypeError
        Wrong type of an argument; non-integer labels without ``label_map``.
    ValueError
        Labels not 2-D or of another y/x shape than their image (the message names the pair
        index), images with different channel counts, a tile larger than an image, a mask
        larger than its image or leaving no grid patch, an unknown ``sampling``, a missing or
        superfluous ``samples``, ``min_foreground`` outside ``[0, 1]``.

    Notes
    -----
    Cost. Opening reads metadata only. A grid with a mask computes the mask fraction of every
    patch in one lazy pass over the mask (a dask cumulative sum, chunk by chunk; the integral
    image is evaluated only at the patch corners). ``"balanced"`` counts the classes of every
    cell (at most :data:`BALANCE_CELL` pixels square, inside one chunk of the labels) in one
    dask pass over the labels, chunk by chunk, at construction (cached on the dataset, and
    pickled with it to the workers); each draw then reads one cell of labels to find its
    pixel (for Zarr, the storage chunk(s) holding the cell), besides the patch itself. A mask
    with random or balanced sampling reads the mask's window of each draw. Random and
    balanced positions are drawn in ``__getitem__`` (in the DataLoader's workers), from
    ``(seed, epoch, index)`` alone; :attr:`origins` draws them all in the calling process.

    DataLoader: ``set_epoch`` changes this process's copy; call it before iterating, with
    ``persistent_workers=False`` (the default), so that the workers, which get a copy per
    epoch, see it.

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((100, 120), np.uint8); labels = np.zeros((100, 120), np.uint8)
    >>> ds = PatchDataset((image, labels), tile=64)
    >>> len(ds), ds[0][0].shape, ds[0][1].dtype
    (4, torch.Size([1, 64, 64]), torch.int64)
    """

    def __init__(self, pairs, *, tile, stride=None, sampling="grid", samples=None, mask=None,
                 min_foreground=0.5, transform=None, label_map=None, ignore_index=-100,
                 normalization=None, classes=None, seed=0, storage_options=None,
                 value_range=None, max_attempts=100):
        self.tile = _positive_pair(tile, "tile")
        self.stride = self.tile if stride is None else _positive_pair(stride, "stride")
        if not isinstance(sampling, str) or sampling not in SAMPLINGS:
            raise InvalidValueError(
                f"`sampling` must be one of {list(SAMPLINGS)}. Got {sampling!r}."
            )
        self.sampling = sampling
        if sampling == "grid":
            if samples is not None:
                raise InvalidValueError(
                    f"`samples` must be None with sampling='grid' (the grid fixes the number of "
                    f"patches). Got samples={samples!r}; drop it or use sampling='random'."
                )
        elif not _is_int(samples) or samples < 1:
            error = InvalidTypeError if samples is not None and not _is_int(samples) \
                else InvalidValueError
            raise error(
                f"`samples` must be a positive int (patches per epoch) with "
                f"sampling={sampling!r}. Got {samples!r}."
            )
        self.samples = None if samples is None else int(samples)
        if not isinstance(min_foreground, Real) or isinstance(min_foreground, bool):
            raise InvalidTypeError(
                f"`min_foreground` must be a float in [0, 1]. Got {min_foreground!r}."
            )
        if not 0.0 <= float(min_foreground) <= 1.0:
            raise InvalidValueError(
                f"`min_foreground` must be in [0, 1]. Got {min_foreground!r}."
            )
        self.min_foreground = float(min_foreground)
        if transform is not None and not callable(transform):
            raise InvalidTypeError(
                "`transform` must be callable as transform(image=..., mask=...) -> dict, "
                f"or None. Got {type(transform).__name__}; see chunkseg.training.patches.augmentation."
            )
        self.transform = transform
        if not _is_int(ignore_index):
            raise InvalidTypeError(f"`ignore_index` must be an int. Got {ignore_index!r}.")
        if not _INT32.min <= ignore_index <= _INT32.max:
            raise InvalidValueError(
                f"`ignore_index` must fit in int32. Got {ignore_index}; use e.g. -100."
            )
        self.ignore_index = int(ignore_index)
        self.label_map = self._check_label_map(label_map)
        self.classes, self.class_names = self._check_classes(classes)
        if normalization is not None and not isinstance(normalization, Normalization):
            raise InvalidTypeError(
                "`normalization` must be a chunkseg.models.Normalization or None. Got "
                f"{type(normalization).__name__}; e.g. Normalization(scale=1/255)."
            )
        self.normalization = normalization
        if not _is_int(seed):
            raise InvalidTypeError(f"`seed` must be a non-negative int. Got {seed!r}.")
        if seed < 0:
            raise InvalidValueError(f"`seed` must be a non-negative int. Got {seed}.")
        self.seed = int(seed)
        if not _is_int(max_attempts):
            raise InvalidTypeError(f"`max_attempts` must be a positive int. Got {max_attempts!r}.")
        if max_attempts < 1:
            raise InvalidValueError(f"`max_attempts` must be a positive int. Got {max_attempts}.")
        self.max_attempts = int(max_attempts)
        if storage_options is not None and not isinstance(storage_options, Mapping):
            raise InvalidTypeError(
                "`storage_options` must be a mapping of fsspec options or None. "
                f"Got {type(storage_options).__name__}."
            )
        self.storage_options = None if storage_options is None else dict(storage_options)
        if value_range is not None:
            try:
                lo, hi = (float(v) for v in value_range)
            except (TypeError, ValueError):
                raise InvalidTypeError(
                    f"`value_range` must be a pair of numbers (lo, hi) or None. Got {value_range!r}."
                ) from None
            if not hi > lo:
                raise InvalidValueError(f"`value_range` must have hi > lo. Got {value_range!r}.")
            value_range = (lo, hi)
        self.value_range = value_range

        pair_list = _split_pairs(pairs)
        masks = _split_masks(mask, len(pair_list))
        self._sources = [(im, lab, m) for (im, lab), m in zip(pair_list, masks)]
        self._opened: dict[int, _Opened] = {}
        self._cell_cache: OrderedDict = OrderedDict()
        self._drawn: dict[int, tuple[int, int, int]] = {}
        self.epoch = 0

        shapes, dtypes, channels = [], [], None
        for p in range(len(self._sources)):
            opened = self._open_pair(p)
            h, w, c = opened.image.shape
            if channels is None:
                channels = c
            elif c != channels:
                raise InvalidValueError(
                    f"`pairs[{p}]` image must have as many channels as pairs[0]'s ({channels}), "
                    f"so that patches batch together. Got {c} channels (shape {opened.image.shape})."
                )
            ty, tx = self.tile
            if h < ty or w < tx:
                raise InvalidValueError(
                    f"`tile` must fit inside every image. Got tile {self.tile} for pairs[{p}] of "
                    f"size {(h, w)} (y, x). Use a smaller tile, or pad the image."
                )
            shapes.append((h, w))
            dtypes.append(np.dtype(opened.image.dtype))
        self.channels = int(channels)
        self.image_shapes: tuple[tuple[int, int], ...] = tuple(shapes)
        self._dtypes = dtypes
        if normalization is not None:
            normalization.check_channels(self.channels)

        self._counts: np.ndarray | None = None
        self._cells: np.ndarray | None = None
        if sampling == "grid":
            self._grid = self._grid_origins()
            if len(self._grid) == 0:
                raise InvalidValueError(
                    f"`mask` must leave at least one grid patch with a foreground fraction >= "
                    f"min_foreground={self.min_foreground}. Got none. Lower `min_foreground` "
                    "or check the masks."
                )
        elif sampling == "random":
            ty, tx = self.tile
            positions = np.array([(h - ty + 1) * (w - tx + 1) for h, w in shapes], np.float64)
            self._pair_weights = positions / positions.sum()
        else:
            self._count_classes()
            totals = self._counts.sum(axis=0)
            self._present = np.flatnonzero(totals > 0)
            if len(self._present) == 0:
                raise InvalidValueError(
                    "`pairs` labels must hold at least one labelled pixel for "
                    "sampling='balanced'. Got only ignored pixels; check `label_map`."
                )
            self._cumulative = np.cumsum(self._counts, axis=0)

    # ------------------------------------------------------------------ argument helpers

    def _check_label_map(self, label_map):
        if label_map is None:
            return None
        if not isinstance(label_map, Mapping):
            raise InvalidTypeError(
                "`label_map` must be a mapping {stored value: class index} or None. Got "
                f"{type(label_map).__name__}; e.g. {{255: 0, 0: 1}}."
            )
        if not label_map:
            raise InvalidValueError("`label_map` must not be empty. Got {}; pass None instead.")
        for key, value in label_map.items():
            if not isinstance(key, Real):
                raise InvalidTypeError(
                    f"`label_map` keys must be numbers (stored label values). Got {key!r}."
                )
            if not _is_int(value):
                raise InvalidTypeError(
                    f"`label_map` values must be int class indices. Got {key!r}: {value!r}."
                )
            if value < 0 or value == self.ignore_index:
                raise InvalidValueError(
                    f"`label_map` values must be class indices >= 0 other than ignore_index "
                    f"({self.ignore_index}). Got {key!r}: {value!r}; leave values to ignore "
                    "out of the map."
                )
        keys = np.array(sorted(label_map), dtype=np.float64)
        values = np.array([label_map[k] for k in sorted(label_map)], dtype=np.int64)
        self._lut = (keys, values)
        return dict(label_map)

    def _check_classes(self, classes):
        if classes is None:
            return None, None
        if _is_int(classes):
            if classes < 1:
                raise InvalidValueError(f"`classes` must be at least 1. Got {classes}.")
            k, names = int(classes), None
        elif isinstance(classes, Sequence) and not isinstance(classes, str) and classes and all(
                isinstance(c, str) for c in classes):
            k, names = len(classes), tuple(classes)
        else:
            raise InvalidTypeError(
                "`classes` must be a number of classes, a sequence of class names, or None. "
                f"Got {classes!r}."
            )
        if self.label_map is not None and max(self.label_map.values()) >= k:
            raise InvalidValueError(
                f"`label_map` values must be class indices below classes={k}. Got "
                f"{max(self.label_map.values())}."
            )
        if 0 <= self.ignore_index < k:
            raise InvalidValueError(
                f"`ignore_index` must not be a class index in [0, {k}). Got {self.ignore_index}."
            )
        return k, names

    # ------------------------------------------------------------------ opening (per process)

    def _open_pair(self, p: int) -> _Opened:
        opened = self._opened.get(p)
        if opened is not None:
            return opened
        image_src, labels_src, mask_src = self._sources[p]
        image = _open(image_src, self.storage_options)
        labels = _open(labels_src, self.storage_options)
        h, w = image.shape[:2]
        if labels.shape[2] != 1:
            raise InvalidValueError(
                f"`pairs[{p}]` labels must be 2-D (y, x) or (y, x, 1). Got shape "
                f"{labels.shape} (y, x, c). Pass one channel, e.g. `labels[..., 0]`."
            )
        if labels.shape[:2] != (h, w):
            raise InvalidValueError(
                f"`pairs[{p}]` labels must have the image's y/x shape {(h, w)}. Got "
                f"{labels.shape[:2]}. Pair each image with its own label image."
            )
        kind = np.dtype(labels.dtype).kind
        if self.label_map is None and kind not in "biu":
            raise InvalidTypeError(
                f"`pairs[{p}]` labels must have an integer or boolean dtype when `label_map` is "
                f"None (they are class indices). Got {labels.dtype}. Pass label_map= "
                "(e.g. {0.0: 0, 1.0: 1}) or convert the labels."
            )
        mask = None
        if mask_src is not None:
            mask = _open(mask_src, self.storage_options)
            if mask.shape[2] != 1:
                raise InvalidValueError(
                    f"`mask` of pair {p} must be 2-D (y, x). Got shape {mask.shape} (y, x, c)."
                )
            if mask.shape[0] > h or mask.shape[1] > w:
                raise InvalidValueError(
                    f"`mask` of pair {p} must be at most its image's size {(h, w)} (full "
                    f"resolution or a thumbnail). Got {mask.shape[:2]}."
                )
        opened = _Opened(image, labels, mask)
        self._opened[p] = opened
        return opened

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_opened"] = {}  # reopened lazily in each worker: no handles travel
        state["_cell_cache"] = OrderedDict()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # ------------------------------------------------------------------ labels

    def _to_classes(self, raw: np.ndarray, p: int) -> np.ndarray:
        """Stored labels -> int64 class indices with ``ignore_index``; checks the range."""
        if self.label_map is not None:
            keys, values = self._lut
            flat = raw.astype(np.float64, copy=False)
            idx = np.clip(np.searchsorted(keys, flat), 0, len(keys) - 1)
            out = np.where(keys[idx] == flat, values[idx], np.int64(self.ignore_index))
            return out.astype(np.int64, copy=False)
        out = raw.astype(np.int64)
        bad = (out != self.ignore_index) & (
            (out < 0) if self.classes is None else ((out < 0) | (out >= self.classes)))
        if bad.any():
            value = int(out[bad].flat[0])
            rule = ">= 0" if self.classes is None else f"in [0, {self.classes})"
            raise InvalidValueError(
                f"`pairs[{p}]` labels must be class indices {rule} or ignore_index "
                f"({self.ignore_index}). Got {value}. Pass `label_map=` to map stored values "
                "to classes, or `classes=`/`ignore_index=` to match the labels."
            )
        return out

    def _read_labels(self, p: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self._to_classes(self._open_pair(p).read_labels((y0, y1), (x0, x1))[0], p)

    def _count_classes(self) -> None:
        """One dask pass over every pair's labels: class counts per cell (cached)."""
        tasks, cells = [], []
        for p in range(len(self._sources)):
            data = self._open_pair(p).labels.data[:, :, 0]
            offsets = [np.concatenate([[0], np.cumsum(c)]) for c in data.chunks]
            blocks = data.to_delayed()
            for by in range(blocks.shape[0]):
                for bx in range(blocks.shape[1]):
                    y0, x0 = int(offsets[0][by]), int(offsets[1][bx])
                    tasks.append(dask.delayed(self._block_counts)(blocks[by, bx], p, y0, x0))
        results = dask.compute(*tasks, scheduler="threads")
        width = max([len(c) for _, counts in results for c in counts] + [1])
        if self.classes is not None:
            width = max(width, self.classes)
        rows = []
        for coords, counts in results:
            for coord, count in zip(coords, counts):
                cells.append(coord)
                rows.append(np.pad(count, (0, width - len(count))))
        self._cells = np.asarray(cells, np.int64).reshape(-1, 5)  # pair, y0, y1, x0, x1
        self._counts = np.asarray(rows, np.int64).reshape(-1, width)

    def _block_counts(self, block: np.ndarray, p: int, y0: int, x0: int):
        classes = self._to_classes(np.asarray(block), p)
        coords, counts = [], []
        h, w = classes.shape
        for cy in range(0, h, BALANCE_CELL):
            for cx in range(0, w, BALANCE_CELL):
                cell = classes[cy:cy + BALANCE_CELL, cx:cx + BALANCE_CELL]
                valid = cell[(cell >= 0) & (cell != self.ignore_index)]
                coords.append((p, y0 + cy, y0 + cy + cell.shape[0], x0 + cx, x0 + cx + cell.shape[1]))
                counts.append(np.bincount(valid.ravel()))
        return coords, counts

    @property
    def class_counts(self) -> np.ndarray:
        """Labelled pixels per class over all pairs, ``(K,)`` int64 (``ignore_index`` and the
        mask not counted). Computed by one lazy pass over the labels on first access (at
        construction for ``sampling="balanced"``), then cached."""
        if self._counts is None:
            self._count_classes()
        return self._counts.sum(axis=0)

    @property
    def num_classes(self) -> int | None:
        """``K`` from ``classes``, else ``max(label_map values) + 1``, else None (unknown)."""
        if self.classes is not None:
            return self.classes
        if self.label_map is not None:
            return max(self.label_map.values()) + 1
        return None

    # ------------------------------------------------------------------ mask

    def _mask_fraction(self, p: int, y0: int, x0: int) -> float:
        opened = self._open_pair(p)
        (h, w), (ty, tx) = self.image_shapes[p], self.tile
        my, mx = opened.mask.shape[:2]
        r0, r1 = _mask_range(y0, y0 + ty, h, my)
        c0, c1 = _mask_range(x0, x0 + tx, w, mx)
        window = opened.read_mask((int(r0), int(r1)), (int(c0), int(c1)))
        return float(np.mean(window > 0))

    def _grid_origins(self) -> np.ndarray:
        out = []
        ty, tx = self.tile
        sy, sx = self.stride
        for p, (h, w) in enumerate(self.image_shapes):
            ys, xs = grid_starts(h, ty, sy), grid_starts(w, tx, sx)
            keep = np.ones((len(ys), len(xs)), bool)
            mask = self._open_pair(p).mask
            if mask is not None and self.min_foreground > 0:
                keep = self._grid_fractions(mask, (h, w), ys, xs) >= self.min_foreground
            iy, ix = np.nonzero(keep)
            out.append(np.stack([np.full(len(iy), p), ys[iy], xs[ix]], axis=1))
        return np.concatenate(out).astype(np.int64)

    def _grid_fractions(self, mask, shape, ys, xs) -> np.ndarray:
        """Mask fraction of every grid patch: integral image of the mask (lazy, dask) read at
        the patch corners only."""
        (h, w), (ty, tx) = shape, self.tile
        my, mx = mask.shape[:2]
        r0, r1 = _mask_range(ys, ys + ty, h, my)
        c0, c1 = _mask_range(xs, xs + tx, w, mx)
        rows, cols = np.unique(np.concatenate([r0, r1])), np.unique(np.concatenate([c0, c1]))
        fg = (mask.data[:, :, 0] > 0).astype(np.int64)
        integral = np.pad(fg.cumsum(axis=0).cumsum(axis=1), ((1, 0), (1, 0)))
        corners = np.asarray(integral[rows][:, cols].compute(scheduler="threads"))
        a0, a1 = np.searchsorted(rows, r0), np.searchsorted(rows, r1)
        b0, b1 = np.searchsorted(cols, c0), np.searchsorted(cols, c1)
        total = (corners[a1[:, None], b1[None, :]] - corners[a0[:, None], b1[None, :]]
                 - corners[a1[:, None], b0[None, :]] + corners[a0[:, None], b0[None, :]])
        area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
        return total / area

    # ------------------------------------------------------------------ sampling

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``: new random/balanced positions and new augmentation draws.

        Parameters
        ----------
        epoch : int
            Non-negative. The draws are a function of ``(seed, epoch, index)`` only.
        """
        if not _is_int(epoch):
            raise InvalidTypeError(f"`epoch` must be a non-negative int. Got {epoch!r}.")
        if epoch < 0:
            raise InvalidValueError(f"`epoch` must be a non-negative int. Got {epoch}.")
        if int(epoch) != self.epoch:
            self.epoch = int(epoch)
            self._drawn = {}

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, i, stream]))

    def _origin(self, i: int) -> tuple[int, int, int]:
        if self.sampling == "grid":
            p, y0, x0 = self._grid[i]
            return int(p), int(y0), int(x0)
        drawn = self._drawn.get(i)
        if drawn is None:
            drawn = self._draw(i)
            self._drawn[i] = drawn
        return drawn

    def _draw(self, i: int) -> tuple[int, int, int]:
        rng = self._rng(i, 0)
        ty, tx = self.tile
        for _ in range(self.max_attempts):
            if self.sampling == "random":
                p = int(rng.choice(len(self._pair_weights), p=self._pair_weights))
                h, w = self.image_shapes[p]
                y0, x0 = int(rng.integers(h - ty + 1)), int(rng.integers(w - tx + 1))
            else:
                p, y0, x0 = self._draw_balanced(rng)
            if (self._sources[p][2] is None or self.min_foreground == 0
                    or self._mask_fraction(p, y0, x0) >= self.min_foreground):
                return p, y0, x0
        raise InvalidValueError(
            f"`min_foreground` must be reachable: {self.max_attempts} {self.sampling} draws for "
            f"patch {i} all had a mask fraction below {self.min_foreground}. Lower "
            "`min_foreground`, check the masks, or raise `max_attempts`."
        )

    def _draw_balanced(self, rng: np.random.Generator) -> tuple[int, int, int]:
        c = int(self._present[rng.integers(len(self._present))])
        cumulative = self._cumulative[:, c]
        rank = int(rng.integers(cumulative[-1]))  # uniform over every pixel of class c
        j = int(np.searchsorted(cumulative, rank, side="right"))
        k = rank - int(cumulative[j] - self._counts[j, c])
        p, cy0, cy1, cx0, cx1 = (int(v) for v in self._cells[j])
        cell = self._cell_cache.get(j)
        if cell is None:
            cell = self._read_labels(p, cy0, cy1, cx0, cx1).astype(np.int32)
            self._cell_cache[j] = cell
            while sum(v.nbytes for v in self._cell_cache.values()) > CELL_CACHE_BYTES:
                self._cell_cache.popitem(last=False)
        else:
            self._cell_cache.move_to_end(j)
        hits = np.flatnonzero(cell == c)
        if k >= len(hits):
            raise InvalidValueError(
                f"`pairs[{p}]` labels must not change while the dataset is used: cell y "
                f"{cy0}..{cy1}, x {cx0}..{cx1} held {self._counts[j, c]} pixels of class {c} "
                f"when counted, {len(hits)} now. Build the dataset again."
            )
        py, px = divmod(int(hits[k]), cx1 - cx0)
        (h, w), (ty, tx) = self.image_shapes[p], self.tile
        y0 = min(max(cy0 + py - ty // 2, 0), h - ty)
        x0 = min(max(cx0 + px - tx // 2, 0), w - tx)
        return p, y0, x0

    @property
    def origins(self) -> np.ndarray:
        """``(len, 3)`` int64: pair index, ``y0``, ``x0`` of every patch (this epoch's draws
        for random and balanced sampling, drawn here if not yet drawn: with a mask or
        ``"balanced"`` this reads what the draws need)."""
        if self.sampling == "grid":
            return self._grid.copy()
        return np.array([self._origin(i) for i in range(len(self))], np.int64).reshape(-1, 3)

    # ------------------------------------------------------------------ Dataset protocol

    def __len__(self) -> int:
        return len(self._grid) if self.sampling == "grid" else int(self.samples)

    def __getitem__(self, i) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch ``i``: image float32 ``(C, T_y, T_x)`` (augmented, then normalised) and
        labels int64 ``(T_y, T_x)`` (class indices and ``ignore_index``).

        Raises
        ------
        IndexError
            If ``i`` is out of range.
        """
        i = operator.index(i)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"patch index {i} out of range for {n} patches")
        p, y0, x0 = self._origin(i)
        ty, tx = self.tile
        image = self._open_pair(p).read_image((y0, y0 + ty), (x0, x0 + tx))  # (C, T_y, T_x)
        labels = self._read_labels(p, y0, y0 + ty, x0, x0 + tx)
        if self.transform is not None:
            image, labels = self._augment(image, labels, p, i)
        image = image.astype(np.float32, copy=False)
        if self.normalization is not None:
            image = self.normalization(image[None])[0]
        return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)))

    def _augment(self, image: np.ndarray, labels: np.ndarray, p: int, i: int):
        dtype = self._dtypes[p]
        hwc = np.moveaxis(image, 0, -1)
        scale = None
        if dtype == np.uint8 and self.value_range is None:
            x = np.ascontiguousarray(hwc)
        else:
            if self.value_range is not None:
                lo, hi = self.value_range
            elif dtype.kind in "iu" and dtype.itemsize <= 2:  # exact in float32
                lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
            else:
                lo, hi = 0.0, 1.0
            scale = (lo, hi)
            x = np.ascontiguousarray((hwc.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo))
        _reseed(self.transform, np.random.SeedSequence([self.seed, self.epoch, i, 1]))
        out = self.transform(image=x, mask=labels.astype(np.int32))
        if not isinstance(out, Mapping) or "image" not in out or "mask" not in out:
            raise InvalidTypeError(
                "`transform` must return a dict with 'image' and 'mask' (the albumentations "
                f"convention). Got {type(out).__name__}."
            )
        im, mk = np.asarray(out["image"]), np.asarray(out["mask"])
        if im.ndim == 2:
            im = im[:, :, None]
        want = (*self.tile, self.channels)
        if im.shape != want or mk.shape != self.tile:
            raise InvalidValueError(
                f"`transform` must keep the patch shape: image {want}, mask {self.tile}. Got "
                f"image {im.shape}, mask {mk.shape}. Rotations by 90 degrees (D4, "
                "RandomRotate90) swap y and x: use a square tile, or augmentation('flips') "
                "style flips only."
            )
        im = im.astype(np.float32)
        if scale is not None:
            im = im * np.float32(scale[1] - scale[0]) + np.float32(scale[0])
        return np.moveaxis(im, -1, 0), mk.astype(np.int64)

    def __repr__(self) -> str:
        return (f"PatchDataset({len(self._sources)} pair(s), tile={self.tile}, "
                f"sampling={self.sampling!r}, {len(self)} patches, epoch={self.epoch})")


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


def augmentation(kind: str = "em", *, elastic: bool = True, alpha: float = 100.0,
                 sigma: float = 10.0, elastic_p: float = 0.5, brightness: float = 0.1,
                 contrast: float = 0.1, saturation: float = 0.1, hue: float = 0.02,
                 jitter_p: float = 0.5, border: str = "reflect", ignore_index: int = -100):
    """An albumentations pipeline for :class:`PatchDataset`'s ``transform``.

    Parameters
    ----------
    kind : {"em", "rgb", "flips", "none"}, default "em"
        ``"em"``: D4 (the 8 rotations by 90 degrees and flips, ``A.D4``), then, if ``elastic``,
        an elastic deformation, then brightness/contrast jitter (``A.RandomBrightnessContrast``).
        ``"rgb"``: D4, the elastic deformation if ``elastic``, then ``A.ColorJitter``
        (expects 3 channels). ``"flips"``: D4 only. ``"none"``: the identity.
    elastic : bool, default True
        Add ``A.ElasticTransform`` to "em" and "rgb" (ignored by "flips" and "none").
    alpha, sigma : float, default 100, 10
        Elastic deformation of Simard et al. (2003), as used for the U-Net (Ronneberger et al.,
        2015): a displacement field of uniform noise in [-1, 1] per pixel and axis, smoothed by a
        Gaussian of ``sigma`` pixels and scaled by ``alpha`` (``noise_distribution="uniform"``).
        The defaults give about 2 px RMS displacement inside a 256 px tile, smooth over ~10 px
        (more at the tile edges, where the smoothing sees the replicated border).
    elastic_p : float, default 0.5
        Probability of the elastic deformation.
    brightness, contrast : float, default 0.1
        Jitter limits: ``"em"``: ``x * (1 + c) + b * max`` with ``c`` in ``[-contrast,
        contrast]``, ``b`` in ``[-brightness, brightness]`` and ``max`` 255 (uint8) or 1
        (float in [0, 1]), clipped to the range. ``"rgb"``: ``A.ColorJitter`` factors in
        ``[1 - v, 1 + v]``.
    saturation, hue : float, default 0.1, 0.02
        ``A.ColorJitter`` saturation factor range ``[1 - v, 1 + v]`` and hue shift ``[-hue,
        hue]`` (``"rgb"`` only).
    jitter_p : float, default 0.5
        Probability of the intensity jitter.
    border : {"reflect", "ignore"}, default "reflect"
        Pixels the elastic deformation pulls from outside the patch: ``"reflect"`` mirrors
        image and labels alike (``cv2.BORDER_REFLECT_101``), so they stay aligned and
        labelled; ``"ignore"`` fills the image with 0 and the labels with ``ignore_index``,
        so no loss is computed there. D4 creates no border.
    ignore_index : int, default -100
        Label fill for ``border="ignore"``; use the dataset's ``ignore_index``.

    Returns
    -------
    albumentations.Compose
        Called as ``transform(image=(H, W, C), mask=(H, W))``. The mask is always
        transformed with nearest-neighbour interpolation (``mask_interpolation=INTER_NEAREST``;
        D4 only permutes pixels), so class indices and ``ignore_index`` are never blended.

    Raises
    ------
    ValueError
        For an unknown ``kind`` or ``border``.
    chunkseg.errors.MissingDependencyError
        If albumentations is not installed (``pip install 'chunkseg[train]'``).

    Notes
    -----
    D4 changes the shape of a non-square tile; :class:`PatchDataset` refuses such output.
    """
    if not isinstance(kind, str) or kind not in AUGMENTATIONS:
        raise InvalidValueError(f"`kind` must be one of {list(AUGMENTATIONS)}. Got {kind!r}.")
    if border not in ("reflect", "ignore"):
        raise InvalidValueError(f"`border` must be 'reflect' or 'ignore'. Got {border!r}.")
    try:
        import albumentations as A
        import cv2
    except ImportError as err:
        raise MissingDependencyError(
            "`augmentation` needs albumentations. Got ImportError: "
            f"{err}. Install it with `pip install 'chunkseg[train]'`."
        ) from err
    if kind == "none":
        return A.Compose([])
    steps: list[Callable[..., Any]] = [A.D4(p=1.0)]
    if elastic and kind in ("em", "rgb"):
        if border == "reflect":
            edge = {"border_mode": cv2.BORDER_REFLECT_101}
        else:
            edge = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": ignore_index}
        steps.append(A.ElasticTransform(
            alpha=alpha, sigma=sigma, interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST, noise_distribution="uniform",
            p=elastic_p, **edge))
    if kind == "em":
        steps.append(A.RandomBrightnessContrast(
            brightness_limit=brightness, contrast_limit=contrast, p=jitter_p))
    elif kind == "rgb":
        steps.append(A.ColorJitter(
            brightness=(1 - brightness, 1 + brightness), contrast=(1 - contrast, 1 + contrast),
            saturation=(1 - saturation, 1 + saturation), hue=(-hue, hue), p=jitter_p))
    return A.Compose(steps, mask_interpolation=cv2.INTER_NEAREST)
