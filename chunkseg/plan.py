"""Tile-grid geometry: pure numpy, no dask, no pixels read.

The global grid
---------------
Along each axis (``y`` and ``x`` alike) an image of length ``H`` is covered by ``n = ceil(H / S)``
tiles of length ``T`` with stride ``S = T - O``, where ``O`` is the overlap. Tile ``k`` starts at
image coordinate ``k * S - b`` with ``b = O // 2`` and ends at ``k * S - b + T``. Its central
*stride cell* ``[k * S, (k + 1) * S)`` lies inside the tile with ``b`` pixels of context before and
``O - b`` after, so even the pixels on the image border are seen away from the tile's edge.

The image is reflect-padded (``numpy.pad(..., mode="reflect")``, the edge pixel not repeated, as
PyTorch's and MONAI's ``"reflect"``) by ``b`` before and ``n * S + O - b - H`` after, so that every
tile the model sees has the full tile size, also when the image is smaller than one tile.

Chunks
------
The computation chunk ``C`` (also the output Zarr chunk) may be any size; ``C >= T`` is the
useful range. Chunk ``j`` covers ``[j * C, (j + 1) * C)`` of the image (the last chunk is cut at
``H``) and *owns* the tiles that start in it (a tile starting before the image, the first one,
belongs to chunk 0), so every tile of the global grid is computed exactly once. Its accumulator
block spans the owned tiles, from the first one's start to the last one's end: it begins inside
the chunk and overhangs the chunk's end by less than a tile. The overlap-add is therefore
*forward-only*: an output chunk receives the overhang of the chunks before it along each axis
(with ``C >= T``, its upper, left and upper-left neighbours) and nothing from the chunks after
it, so it is final as soon as its own block is done. A chunk owns no tile when it is shorter than
the stride at the image's end; its pixels then come from its neighbours' overhang alone.

The chunk grid may be shifted (``chunk_offset``, boundaries at ``j * C - offset``). *Tile cells*
(``chunks="tiles"``: ``C = S``, ``offset = b``) put every boundary on a tile's start: chunk ``k``
owns tile ``k`` alone and receives only the overhang of tiles ``k - 1`` along each axis, so at
most 2 x 2 tiles feed an output chunk (what a lazy slice of :func:`chunkseg.predict` runs).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field

import numpy as np

from ._check import int_pair, positive_int
from .errors import InvalidTypeError, InvalidValueError

__all__ = [
    "TilePlan",
    "BlockSchedule",
    "AxisSchedule",
    "plan_tiles",
    "fold_sources",
    "tile_mask",
    "normalize_pair",
    "DEFAULT_CHUNK_TARGET",
]

#: Default computation chunk side (pixels), capped at the image's size.
DEFAULT_CHUNK_TARGET = 1536


def normalize_pair(value: int | tuple[int, int] | list[int], name: str) -> tuple[int, int]:
    """Turn an int or a length-2 sequence into a ``(y, x)`` tuple of Python ints.

    The rule is :func:`chunkseg._check.int_pair`'s (without a minimum); see there.

    Parameters
    ----------
    value : int or sequence of 2 ints
        One value for both axes, or one per axis in ``(y, x)`` order.
    name : str
        Parameter name used in error messages.

    Returns
    -------
    tuple of 2 int

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not an integer or a sequence of two integers.
    """
    return int_pair(value, name)


@dataclass(frozen=True)
class TilePlan:
    """The global tile grid and chunking of one image: plain data, inspectable before any read.

    Build it with :func:`plan_tiles`, which validates the arguments. All lengths are pixels,
    all pairs are ``(y, x)``.
    """

    image_shape: tuple[int, int]
    """Image size ``(H, W)``."""
    tile: tuple[int, int]
    """Tile size ``(T_y, T_x)`` the model sees."""
    overlap: tuple[int, int]
    """Overlap ``(O_y, O_x)`` between neighbouring tiles, ``0 <= O < T``."""
    chunks: tuple[int, int]
    """Computation (and output) chunk ``(C_y, C_x)``, pixels; any positive size."""
    channels: int = 1
    """Number of input channels ``C_in``."""
    chunk_offset: tuple[int, int] = (0, 0)
    """Shift of the chunk grid, pixels, ``0 <= chunk_offset < chunks``: chunk boundaries lie at
    ``j * chunks - chunk_offset`` (clipped to the image), so the first chunk is
    ``chunks - chunk_offset`` long. With ``chunks == stride`` and ``chunk_offset ==
    halo_before`` every chunk is one tile's stride cell shifted onto the tile's start (a *tile
    cell*, :meth:`tile_cells`), which only 2 x 2 tiles touch."""

    # -- per-axis geometry -------------------------------------------------------------------
    @property
    def stride(self) -> tuple[int, int]:
        """``tile - overlap`` per axis."""
        return (self.tile[0] - self.overlap[0], self.tile[1] - self.overlap[1])

    @property
    def halo_before(self) -> tuple[int, int]:
        """Context before a tile's stride cell, ``overlap // 2``; also the padding before."""
        return (self.overlap[0] // 2, self.overlap[1] // 2)

    @property
    def halo_after(self) -> tuple[int, int]:
        """Context after a tile's stride cell, ``overlap - overlap // 2``."""
        return tuple(o - b for o, b in zip(self.overlap, self.halo_before))  # type: ignore[return-value]

    @property
    def grid_shape(self) -> tuple[int, int]:
        """Number of tiles per axis, ``ceil(H / stride)``."""
        return tuple(math.ceil(h / s) for h, s in zip(self.image_shape, self.stride))  # type: ignore[return-value]

    @property
    def n_tiles(self) -> int:
        """Total number of tiles the model runs on."""
        gy, gx = self.grid_shape
        return gy * gx

    @property
    def padded_shape(self) -> tuple[int, int]:
        """Shape of the reflect-padded image, ``n * stride + overlap`` per axis."""
        return tuple(n * s + o for n, s, o in zip(self.grid_shape, self.stride, self.overlap))  # type: ignore[return-value]

    @property
    def pad_width(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((before_y, after_y), (before_x, after_x))`` reflect padding of the image."""
        return tuple(  # type: ignore[return-value]
            (b, p - b - h)
            for b, p, h in zip(self.halo_before, self.padded_shape, self.image_shape)
        )

    @property
    def tiles_per_chunk(self) -> tuple[int, int]:
        """Most tiles any chunk owns, per axis (``ceil(chunk / stride)`` or fewer)."""
        return tuple(max(b - a for a, b in r) for r in self.owned_tiles())  # type: ignore[return-value]

    @property
    def chunk_grid(self) -> tuple[int, int]:
        """Number of chunks per axis, ``ceil((H + chunk_offset) / chunk)``."""
        return tuple(math.ceil((h + o) / c) for h, c, o in  # type: ignore[return-value]
                     zip(self.image_shape, self.chunks, self.chunk_offset))

    @property
    def tile_cells(self) -> bool:
        """Whether every chunk is a tile cell (``chunks == stride``, ``chunk_offset ==
        halo_before``): an output chunk then gets its pixels from the 2 x 2 tiles that start in
        it and before it, so a lazy slice computes only the tiles of the cells it touches."""
        return self.chunks == self.stride and self.chunk_offset == self.halo_before

    @property
    def n_chunks(self) -> int:
        """Total number of chunks (= tasks of the per-chunk kernel)."""
        cy, cx = self.chunk_grid
        return cy * cx

    def output_chunks(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Dask-style chunk sizes of the output (image coordinates), per axis."""
        return tuple(  # type: ignore[return-value]
            _split(h, c, o) for h, c, o in zip(self.image_shape, self.chunks, self.chunk_offset)
        )

    def owned_tiles(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Per axis, the range ``(k0, k1)`` of tile indices each chunk owns (may be empty).

        Chunk ``j`` owns the tiles whose start (image coordinates, clipped at 0) lies in
        ``[j * C - offset, (j + 1) * C - offset)`` (``offset``: :attr:`chunk_offset`).
        """
        out = []
        for axis in range(2):
            starts = np.maximum(self.tile_origins()[axis], 0) + self.chunk_offset[axis]
            owner = np.minimum(starts // self.chunks[axis], self.chunk_grid[axis] - 1)
            bounds = np.searchsorted(owner, np.arange(self.chunk_grid[axis] + 1))
            out.append([(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])])
        return tuple(out)  # type: ignore[return-value]

    def block_extents(self) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """Per axis, ``(start, stop)`` image coordinates of each chunk's accumulator block.

        Block ``j`` spans the tiles chunk ``j`` owns, from the first one's start to the last
        one's end (``(k1 - k0 - 1) * stride + tile`` pixels). The first start is ``-overlap // 2``
        and stops may pass the image end: those parts lie in the padding and are discarded by
        the fold. A chunk that owns no tile has an empty block ``(start, start)`` at its own
        start.
        """
        out = []
        for axis in range(2):
            t = self.tile[axis]
            origins = self.tile_origins()[axis]
            ext = []
            for j, (k0, k1) in enumerate(self.owned_tiles()[axis]):
                if k1 > k0:
                    ext.append((int(origins[k0]), int(origins[k1 - 1]) + t))
                else:
                    start = max(j * self.chunks[axis] - self.chunk_offset[axis], 0)
                    ext.append((start, start))
            out.append(ext)
        return tuple(out)  # type: ignore[return-value]

    def tile_origins(self) -> tuple[np.ndarray, np.ndarray]:
        """Image coordinates of the first pixel of every tile, per axis (may be negative)."""
        return tuple(  # type: ignore[return-value]
            np.arange(n) * s - b for n, s, b in zip(self.grid_shape, self.stride, self.halo_before)
        )

    def schedule(self) -> BlockSchedule:
        """The blocks and chunks of this plan, derived once: each block's extent, owned tiles
        and pieces, each chunk's bounds (see :class:`BlockSchedule`)."""
        return BlockSchedule(*(_axis_schedule(self, axis) for axis in range(2)))

    def memory_per_task(
        self, classes: int = 2, batch_size: int = 8, input_itemsize: int = 1
    ) -> int:
        """Estimated peak bytes held by one per-chunk task, model activations excluded.

        Counts the input block (the tiles of the fullest chunk), its float32 copy, one batch of float32 tiles and
        their logits, the float32 accumulator of ``classes + 1`` planes (weighted logits and the
        weight sum), and the folded float32 output chunk.

        Parameters
        ----------
        classes : int, default 2
            Number of classes ``K`` the model returns.
        batch_size : int, default 8
            Tiles per model call.
        input_itemsize : int, default 1
            Bytes per input pixel and channel (1 for uint8).

        Returns
        -------
        int
            Bytes.

        Raises
        ------
        chunkseg.errors.InvalidValueError, chunkseg.errors.InvalidTypeError
            If ``classes`` or ``batch_size`` is not a positive int.
        """

        classes = positive_int(classes, "classes", "The model's number of classes (CLI: "
                               "--classes), e.g. 2.")
        batch_size = positive_int(batch_size, "batch_size", "Tiles per model call (CLI: "
                                  "--batch-size), e.g. 8.")
        by, bx = ((m - 1) * s + t for m, s, t in zip(self.tiles_per_chunk, self.stride, self.tile))
        ty, tx = self.tile
        block = by * bx * self.channels * (input_itemsize + 4)
        batch = batch_size * ty * tx * (self.channels + classes) * 4
        acc = (classes + 1) * by * bx * 4
        folded = (classes + 1) * self.chunks[0] * self.chunks[1] * 4
        return int(block + batch + acc + folded)

    def to_dict(self) -> dict:
        """JSON-serialisable description: the fields plus the derived geometry."""
        d = asdict(self)
        if d["chunk_offset"] == (0, 0):  # the regular grid: described as before the shift
            del d["chunk_offset"]
        d.update(
            stride=list(self.stride),
            grid_shape=list(self.grid_shape),
            n_tiles=self.n_tiles,
            chunk_grid=list(self.chunk_grid),
            n_chunks=self.n_chunks,
            tiles_per_chunk=list(self.tiles_per_chunk),
            pad_width=[list(p) for p in self.pad_width],
            padding="reflect",
        )
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> TilePlan:
        """The plan :meth:`to_dict` (or an output's ``plan`` attribute) describes.

        Derived entries are ignored; the fields are validated by :func:`plan_tiles`.

        Raises
        ------
        ValueError
            If a field is missing.
        """
        missing = [k for k in ("image_shape", "tile", "overlap", "chunks") if k not in d]
        if missing:
            raise InvalidValueError(f"`d` must hold the plan's fields; missing {missing}. Got keys "
                             f"{sorted(d)}.")
        return plan_tiles(tuple(d["image_shape"]), tuple(d["tile"]), tuple(d["overlap"]),
                          tuple(d["chunks"]), channels=int(d.get("channels", 1)),
                          chunk_offset=tuple(d.get("chunk_offset", (0, 0))))

    def summary(self, classes: int = 2, batch_size: int = 8, input_itemsize: int = 1) -> str:
        """A few human-readable lines describing the plan (what ``chunkseg plan`` prints)."""
        mem = self.memory_per_task(classes, batch_size, input_itemsize)
        return "\n".join(
            [
                f"image     {self.image_shape[0]} x {self.image_shape[1]} (y x), "
                f"{self.channels} channel(s)",
                f"tile      {self.tile[0]} x {self.tile[1]}, overlap {self.overlap[0]} x "
                f"{self.overlap[1]}, stride {self.stride[0]} x {self.stride[1]}",
                f"tiles     {self.grid_shape[0]} x {self.grid_shape[1]} = {self.n_tiles}",
                f"chunks    {self.chunks[0]} x {self.chunks[1]} px"
                + (f" (grid shifted by {self.chunk_offset[0]} x {self.chunk_offset[1]})"
                   if self.chunk_offset != (0, 0) else "")
                + f" -> {self.chunk_grid[0]} x {self.chunk_grid[1]} = {self.n_chunks}, up to "
                f"{self.tiles_per_chunk[0]} x {self.tiles_per_chunk[1]} tiles each",
                f"padding   reflect {self.pad_width[0]} (y), {self.pad_width[1]} (x)",
                f"memory    ~{mem / 2**20:.1f} MiB per task for {classes} classes, batch "
                f"{batch_size} (model activations not included)",
            ]
        )


def _split(length: int, chunk: int, offset: int = 0) -> tuple[int, ...]:
    first = min(chunk - offset, length)
    full, rest = divmod(length - first, chunk)
    return (first,) + (chunk,) * full + ((rest,) if rest else ())


def plan_tiles(
    image_shape: tuple[int, ...],
    tile: int | tuple[int, int] = 256,
    overlap: int | tuple[int, int] = 64,
    chunks: int | tuple[int, int] | str | None = None,
    *,
    channels: int = 1,
    chunk_offset: int | tuple[int, int] = 0,
) -> TilePlan:
    """Lay the global tile grid over an image and choose the computation chunks.

    Parameters
    ----------
    image_shape : tuple of int
        ``(H, W)`` or ``(H, W, C)``; only the first two entries are the spatial size. With three
        entries, ``channels`` is taken from the third.
    tile : int or (int, int), default 256
        Tile size the model sees, pixels. Tiles are always full size: the image is reflect-padded.
    overlap : int or (int, int), default 64
        Overlap between neighbouring tiles, ``0 <= overlap < tile``. Stride is
        ``tile - overlap``.
    chunks : int or (int, int) or "tiles", optional
        Computation chunk (also the output Zarr chunk), pixels, any positive size; at least the
        tile keeps the tasks few and big (1024, 2048 or the input's own chunks are good
        choices). Default: 1536 px (:data:`DEFAULT_CHUNK_TARGET`), or the image's size where
        that is smaller. ``"tiles"``: one chunk per tile cell (the stride, shifted by the
        halo before; ``chunk_offset`` is then ignored), see :attr:`TilePlan.tile_cells`.
    channels : int, default 1
        Number of input channels (for the memory estimate).
    chunk_offset : int or (int, int), default 0
        Shift of the chunk grid, pixels, ``0 <= chunk_offset < chunks``
        (:attr:`TilePlan.chunk_offset`).

    Returns
    -------
    TilePlan

    Raises
    ------
    TypeError
        If a size is not an int or a pair of ints.
    ValueError
        If a size is not positive or ``overlap >= tile``.

    Notes
    -----
    See the module docstring for the geometry. The layout follows the "global grid, each tile
    owned by one chunk" scheme; the blending is the weighted sum of windowed tile outputs divided
    by the summed windows, as in MONAI's ``sliding_window_inference``.
    """
    if len(image_shape) not in (2, 3):
        raise InvalidValueError(
            f"`image_shape` must be (H, W) or (H, W, C). Got {tuple(image_shape)!r}."
        )
    if len(image_shape) == 3:
        channels = int(image_shape[2])
    shape = (int(image_shape[0]), int(image_shape[1]))
    tile_ = int_pair(tile, "tile", minimum=1)
    overlap_ = int_pair(overlap, "overlap", minimum=0)
    if min(shape) < 1:
        raise InvalidValueError(f"`image_shape` must be positive. Got {shape!r}.")
    if any(o >= t for o, t in zip(overlap_, tile_)):
        raise InvalidValueError(
            f"`overlap` must be smaller than `tile` (stride = tile - overlap must be positive). "
            f"Got overlap={overlap_!r}, tile={tile_!r}. Use e.g. overlap={tile_[0] // 4}."
        )
    if channels < 1:
        raise InvalidValueError(f"`channels` must be >= 1. Got {channels!r}.")
    if chunks is None:
        chunks_ = tuple(min(h, DEFAULT_CHUNK_TARGET) for h in shape)
    elif isinstance(chunks, str) and chunks == "tiles":
        chunks_ = tuple(t - o for t, o in zip(tile_, overlap_))
        chunk_offset = tuple(o // 2 for o in overlap_)
    else:
        chunks_ = int_pair(chunks, "chunks", minimum=1, fix=f"Use a number of pixels (at least "
                           f"the tile {tile_!r} is best: fewer, bigger tasks) or 'tiles'.")
    offset_ = int_pair(chunk_offset, "chunk_offset", minimum=0)
    if any(o >= c for o, c in zip(offset_, chunks_)):
        raise InvalidValueError(
            f"`chunk_offset` must be smaller than `chunks` (it shifts the chunk grid by less than "
            f"a chunk). Got chunk_offset={offset_!r}, chunks={chunks_!r}. Use e.g. "
            "chunk_offset=0.")
    return TilePlan(shape, tile_, overlap_, chunks_, channels, offset_)  # type: ignore[arg-type]


def fold_sources(plan: TilePlan) -> tuple[list[list[tuple[int, slice, slice]]], ...]:
    """Which parts of which accumulator blocks add up to each output chunk (overlap-add).

    Parameters
    ----------
    plan : TilePlan

    Returns
    -------
    tuple of 2 lists (y, x)
        Entry ``[j]`` of an axis lists ``(i, src, dst)``: block ``i``'s pixels ``src`` (block
        coordinates) add onto output chunk ``j``'s pixels ``dst`` (chunk coordinates). The entry
        with ``i == j`` starts inside the chunk and runs to its end; the others are the overhang
        of the blocks before it (forward-only: ``i <= j``). The same as
        :meth:`AxisSchedule.sources` of :meth:`TilePlan.schedule`.
    """
    return tuple([[(i, slice(s0, s1), slice(d0, d1)) for i, s0, s1, d0, d1 in sources]
                  for sources in axis.sources] for axis in plan.schedule())


Piece = tuple[int, int, int, int, int]  # (other block or chunk, src0, src1, dst0, dst1)


def _axis_schedule(plan: TilePlan, axis: int) -> AxisSchedule:
    extents = plan.block_extents()[axis]
    bounds = np.cumsum((0,) + plan.output_chunks()[axis]).tolist()
    chunks = tuple(zip(bounds[:-1], bounds[1:]))
    pieces: list[list[Piece]] = [[] for _ in extents]
    for j, (lo, hi) in enumerate(chunks):
        for i, (start, stop) in enumerate(extents):
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                pieces[i].append((j, a - start, b - start, a - lo, b - lo))
    return AxisSchedule(chunks=chunks, extents=tuple(extents),
                        owned=tuple(plan.owned_tiles()[axis]),
                        pieces=tuple(tuple(p) for p in pieces))


@dataclass(frozen=True, slots=True)
class AxisSchedule:
    """One axis of a :class:`BlockSchedule`; block ``i`` belongs to chunk ``i``.

    Attributes
    ----------
    chunks : tuple of (int, int)
        Each output chunk's ``(start, stop)``, image coordinates.
    extents : tuple of (int, int)
        Each block's ``(start, stop)``, image coordinates (may pass the image's edges; empty
        for a chunk that owns no tile), as :meth:`TilePlan.block_extents`.
    owned : tuple of (int, int)
        Each block's range ``(k0, k1)`` of tile indices, as :meth:`TilePlan.owned_tiles`.
    pieces : tuple of tuple of (int, int, int, int, int)
        Each block's pieces ``(j, src0, src1, dst0, dst1)``: its pixels ``[src0, src1)`` (block
        coordinates) add onto chunk ``j``'s ``[dst0, dst1)`` (chunk coordinates); ``j``
        ascending, ``j >= i`` (forward-only).
    sources : tuple of tuple of (int, int, int, int, int)
        Derived from ``pieces``: each chunk's sources ``(i, src0, src1, dst0, dst1)``, ``i``
        ascending (the order of the overlap-add).
    """

    chunks: tuple[tuple[int, int], ...]
    extents: tuple[tuple[int, int], ...]
    owned: tuple[tuple[int, int], ...]
    pieces: tuple[tuple[Piece, ...], ...]
    sources: tuple[tuple[Piece, ...], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        sources: list[list[Piece]] = [[] for _ in self.chunks]
        for i, pieces in enumerate(self.pieces):
            for j, s0, s1, d0, d1 in pieces:
                sources[j].append((i, s0, s1, d0, d1))
        object.__setattr__(self, "sources", tuple(tuple(s) for s in sources))

    def to_dict(self) -> dict:
        """JSON-serialisable: the fields (``sources`` is derived) as lists."""
        return {name: _lists(getattr(self, name)) for name in _AXIS_FIELDS}

    @classmethod
    def from_dict(cls, d: dict) -> AxisSchedule:
        """The axis :meth:`to_dict` describes."""
        return cls(**{name: _tuples(d[name]) for name in _AXIS_FIELDS})


_AXIS_FIELDS = ("chunks", "extents", "owned", "pieces")


def _lists(value):  # nested tuples of ints -> nested lists (JSON), and back
    return [_lists(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value):
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else int(value)


@dataclass(frozen=True, slots=True)
class BlockSchedule:
    """Blocks, chunks and the forward-only fold of a :class:`TilePlan`, derived once
    (:meth:`TilePlan.schedule`); the engine's runners and graph only read it.

    The geometry is separable: block ``(iy, ix)`` is ``y``'s block ``iy`` by ``x``'s block
    ``ix``, and so are its pieces and each chunk's bounds.

    Attributes
    ----------
    y, x : AxisSchedule
    """

    y: AxisSchedule
    x: AxisSchedule

    def __iter__(self):  # y, x
        return iter((self.y, self.x))

    @property
    def chunk_grid(self) -> tuple[int, int]:
        """Chunks (and blocks) per axis."""
        return len(self.y.chunks), len(self.x.chunks)

    def chunk_bounds(self, jy: int, jx: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Image coordinates ``(y0, y1), (x0, x1)`` of output chunk ``(jy, jx)``."""
        return self.y.chunks[jy], self.x.chunks[jx]

    def chunk_shape(self, jy: int, jx: int) -> tuple[int, int]:
        """``(h, w)`` of output chunk ``(jy, jx)``."""
        return tuple(b - a for a, b in self.chunk_bounds(jy, jx))  # type: ignore[return-value]

    def block_extent(self, iy: int, ix: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Image coordinates ``(y0, y1), (x0, x1)`` of block ``(iy, ix)``."""
        return self.y.extents[iy], self.x.extents[ix]

    def owned_tiles(self, iy: int, ix: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Tile-grid ranges ``(ky0, ky1), (kx0, kx1)`` that block ``(iy, ix)`` owns."""
        return self.y.owned[iy], self.x.owned[ix]

    def owns_tiles(self, iy: int, ix: int) -> bool:
        """Whether block ``(iy, ix)`` owns any tile (else it has no task)."""
        (ky0, ky1), (kx0, kx1) = self.owned_tiles(iy, ix)
        return ky1 > ky0 and kx1 > kx0

    def pieces(self, iy: int, ix: int) -> list[tuple[tuple[int, int], tuple[slice, slice]]]:
        """Block ``(iy, ix)``'s pieces: ``((jy, jx), (src_y, src_x))``, its pixels (block
        coordinates) that fall in output chunk ``(jy, jx)``, chunks in row-major order."""
        return [((jy, jx), (slice(ys0, ys1), slice(xs0, xs1)))
                for jy, ys0, ys1, _, _ in self.y.pieces[iy]
                for jx, xs0, xs1, _, _ in self.x.pieces[ix]]

    def sources(self, jy: int, jx: int) -> list[tuple[tuple[int, int], tuple[slice, slice],
                                                      tuple[slice, slice]]]:
        """Output chunk ``(jy, jx)``'s sources: ``((iy, ix), src, dst)``, block ``(iy, ix)``'s
        pixels ``src`` (block coordinates) onto the chunk's ``dst`` (chunk coordinates), blocks
        in row-major order (the order of the overlap-add)."""
        return [((iy, ix), (slice(ys0, ys1), slice(xs0, xs1)), (slice(yd0, yd1), slice(xd0, xd1)))
                for iy, ys0, ys1, yd0, yd1 in self.y.sources[jy]
                for ix, xs0, xs1, xd0, xd1 in self.x.sources[jx]]

    def to_dict(self) -> dict:
        """JSON-serialisable: ``{"y": ..., "x": ...}`` (:meth:`AxisSchedule.to_dict`)."""
        return {"y": self.y.to_dict(), "x": self.x.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> BlockSchedule:
        """The schedule :meth:`to_dict` describes."""
        return cls(AxisSchedule.from_dict(d["y"]), AxisSchedule.from_dict(d["x"]))


def tile_mask(plan: TilePlan, mask) -> np.ndarray:
    """Which tiles of the grid touch the foreground of a low-resolution mask.

    Parameters
    ----------
    plan : TilePlan
    mask : (M_y, M_x) array_like
        Foreground where true (or > 0), at any resolution up to the image's, covering the whole
        image: mask pixel ``(i, j)`` covers image pixels ``[i * H / M_y, (i + 1) * H / M_y)`` by
        ``[j * W / M_x, (j + 1) * W / M_x)``. It is read whole, so keep it small (a thumbnail).

    Returns
    -------
    (n_y, n_x) ndarray of bool
        True for a tile whose extent (clipped to the image) overlaps a foreground mask pixel.

    Raises
    ------
    TypeError
        If ``mask`` is a path (read the file first).
    ValueError
        If ``mask`` is not 2-D or is larger than the image along an axis.
    """
    if isinstance(mask, str | os.PathLike):
        raise InvalidTypeError(
            f"`mask` must be an array (or a callable). Got the path {os.fspath(mask)!r}; read it "
            "first, e.g. `numpy.load(path)` (the CLI's --mask reads .npy, image files and Zarr).")
    m = np.asarray(mask)
    if m.ndim != 2 or m.size == 0:
        raise InvalidValueError(f"`mask` must be a non-empty 2-D array (y, x). Got shape {m.shape}.")
    if m.shape[0] > plan.image_shape[0] or m.shape[1] > plan.image_shape[1]:
        raise InvalidValueError(
            f"`mask` must be at most the image's size {plan.image_shape}; it is a low-resolution "
            f"foreground map. Got shape {m.shape}."
        )
    fg = (m > 0).astype(np.int64)
    integral = np.zeros((fg.shape[0] + 1, fg.shape[1] + 1), np.int64)
    integral[1:, 1:] = fg.cumsum(0).cumsum(1)
    ranges = []
    for axis in range(2):
        size, msize, t = plan.image_shape[axis], m.shape[axis], plan.tile[axis]
        lo = np.clip(plan.tile_origins()[axis], 0, size)
        hi = np.clip(plan.tile_origins()[axis] + t, 0, size)
        ranges.append(((lo * msize) // size, -((-hi * msize) // size)))  # floor, ceil
    (y0, y1), (x0, x1) = ranges
    total = (integral[y1[:, None], x1[None, :]] - integral[y0[:, None], x1[None, :]]
             - integral[y1[:, None], x0[None, :]] + integral[y0[:, None], x0[None, :]])
    return total > 0
