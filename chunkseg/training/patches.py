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

The parts live beside it: :mod:`chunkseg.training.sampling` (where patches lie),
:mod:`chunkseg.training.labels` (stored labels -> class indices), :mod:`chunkseg.training.augment`
(:func:`augmentation`, the usual albumentations pipelines: D4 flips/rotations, EM
brightness/contrast jitter and elastic deformation, RGB colour jitter; needs ``chunkseg[train]``,
re-exported here) and the opening of the pairs.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError

try:
    import torch
    import torch.utils.data
except ImportError as _err:  # pragma: no cover - torch is an optional extra
    raise MissingDependencyError(
        f"`chunkseg.training.patches` needs PyTorch. Got ImportError: {_err}. Install it with "
        "`pip install 'chunkseg[torch,train]'`."
    ) from _err
from .._check import int_pair, non_negative_int, positive_int
from ..models.spec import Normalization
from ._pairs import OpenedPair, open_pair, split_masks, split_pairs
from .augment import AUGMENTATIONS, augment_patch, augmentation
from .labels import LabelSpec
from .sampling import (
    CELL_CACHE_BYTES,
    SAMPLINGS,
    centred_origin,
    count_cells,
    draw_class_pixel,
    grid_fractions,
    grid_starts,
    mask_fraction,
)

__all__ = ["PatchDataset", "augmentation", "grid_starts", "SAMPLINGS", "AUGMENTATIONS"]


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
    cell (at most :data:`~chunkseg.training.sampling.BALANCE_CELL` pixels square, inside one chunk of the labels) in one
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

    def __init__(self, pairs: Any, *, tile: int | tuple[int, int],
                 stride: int | tuple[int, int] | None = None, sampling: str = "grid",
                 samples: int | None = None, mask: Any = None, min_foreground: float = 0.5,
                 transform: Callable[..., Any] | None = None,
                 label_map: Mapping[float, int] | None = None, ignore_index: int = -100,
                 normalization: Normalization | None = None,
                 classes: int | Sequence[str] | None = None, seed: int = 0,
                 storage_options: Mapping[str, Any] | None = None,
                 value_range: tuple[float, float] | None = None, max_attempts: int = 100):
        self.tile = int_pair(tile, "tile", minimum=1)
        self.stride = self.tile if stride is None else int_pair(stride, "stride", minimum=1)
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
        else:
            fix = f"Give the patches per epoch with sampling={sampling!r}."
            if samples is None:  # missing, not of a wrong type
                raise InvalidValueError(f"`samples` must be a positive int. Got None. {fix}")
            samples = positive_int(samples, "samples", fix)
        self.samples = samples
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
        self.label_spec = LabelSpec(label_map=label_map, ignore_index=ignore_index, classes=classes)
        if normalization is not None and not isinstance(normalization, Normalization):
            raise InvalidTypeError(
                "`normalization` must be a chunkseg.models.Normalization or None. Got "
                f"{type(normalization).__name__}; e.g. Normalization(scale=1/255)."
            )
        self.normalization = normalization
        self.seed = non_negative_int(seed, "seed")
        self.max_attempts = positive_int(max_attempts, "max_attempts")
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

        pair_list = split_pairs(pairs)
        masks = split_masks(mask, len(pair_list))
        self._sources = [(im, lab, m) for (im, lab), m in zip(pair_list, masks)]
        self._opened: dict[int, OpenedPair] = {}
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

    # ------------------------------------------------------------------ label settings

    @property
    def label_map(self) -> dict | None:
        """Stored label value -> class index, or None (:class:`~chunkseg.training.labels.LabelSpec`)."""
        return self.label_spec.label_map

    @property
    def ignore_index(self) -> int:
        """Label of pixels not to train on."""
        return self.label_spec.ignore_index

    @property
    def classes(self) -> int | None:
        """``K`` given by ``classes`` (its length for names), or None."""
        return self.label_spec.count

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """The class names given by ``classes``, or None."""
        return self.label_spec.names

    # ------------------------------------------------------------------ opening (per process)

    def _open_pair(self, p: int) -> OpenedPair:
        opened = self._opened.get(p)
        if opened is None:
            opened = open_pair(self._sources[p], p, self.storage_options,
                               integer_labels=self.label_map is None)
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

    def _read_labels(self, p: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        raw = self._open_pair(p).read_labels((y0, y1), (x0, x1))[0]
        return self.label_spec.to_classes(raw, p)

    def _count_classes(self) -> None:
        """One dask pass over every pair's labels: class counts per cell (cached)."""
        arrays = [self._open_pair(p).labels.data[:, :, 0] for p in range(len(self._sources))]
        self._cells, self._counts = count_cells(arrays, self.label_spec.to_classes,
                                                self.ignore_index, self.classes)

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
        return self.label_spec.num_classes

    # ------------------------------------------------------------------ mask

    def _mask_fraction(self, p: int, y0: int, x0: int) -> float:
        opened = self._open_pair(p)
        return mask_fraction(opened.read_mask, opened.mask.shape[:2], self.image_shapes[p],
                             self.tile, y0, x0)

    def _grid_origins(self) -> np.ndarray:
        out = []
        ty, tx = self.tile
        sy, sx = self.stride
        for p, (h, w) in enumerate(self.image_shapes):
            ys, xs = grid_starts(h, ty, sy), grid_starts(w, tx, sx)
            keep = np.ones((len(ys), len(xs)), bool)
            mask = self._open_pair(p).mask
            if mask is not None and self.min_foreground > 0:
                keep = grid_fractions(mask.data, (h, w), self.tile, ys, xs) >= self.min_foreground
            iy, ix = np.nonzero(keep)
            out.append(np.stack([np.full(len(iy), p), ys[iy], xs[ix]], axis=1))
        return np.concatenate(out).astype(np.int64)

    # ------------------------------------------------------------------ sampling

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``: new random/balanced positions and new augmentation draws.

        Parameters
        ----------
        epoch : int
            Non-negative. The draws are a function of ``(seed, epoch, index)`` only.

        Raises
        ------
        TypeError, ValueError
            If ``epoch`` is not a non-negative int.
        """
        epoch = non_negative_int(epoch, "epoch")
        if epoch != self.epoch:
            self.epoch = epoch
            self._drawn = {}

    def _seed(self, i: int, stream: int) -> np.random.SeedSequence:
        """Stream 0: the draw of patch ``i``'s position; stream 1: its augmentation."""
        return np.random.SeedSequence([self.seed, self.epoch, i, stream])

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
        rng = np.random.default_rng(self._seed(i, 0))
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
        c, j, k = draw_class_pixel(rng, self._present, self._cumulative, self._counts)
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
        y0, x0 = centred_origin(cy0 + py, cx0 + px, self.image_shapes[p], self.tile)
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
            image, labels = augment_patch(self.transform, image, labels, self._dtypes[p],
                                          self.value_range, self._seed(i, 1))
        image = image.astype(np.float32, copy=False)
        if self.normalization is not None:
            image = self.normalization(image[None])[0]
        return (torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)))

    def __repr__(self) -> str:
        return (f"PatchDataset({len(self._sources)} pair(s), tile={self.tile}, "
                f"sampling={self.sampling!r}, {len(self)} patches, epoch={self.epoch})")
