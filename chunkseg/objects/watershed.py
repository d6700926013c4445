"""Seeded watershed and region agglomeration across chunks: ``label(..., method="watershed")``.

Four passes over the chunks of a written output's probabilities, each task holding one chunk
(plus a halo in the third):

1. **Seeds**: connected components of the seed mask (``probabilities[cls] >= seed_threshold``,
   the maxima of a capped distance transform, or either:
   :func:`chunkseg.kernels.watershed.seed_mask`, exact on a chunk read with its halo) with one
   global id each (:mod:`chunkseg.kernels.components`: label, summarise, merge on the client); objects
   smaller than ``min_seed_size`` pixels are dropped and the rest numbered in raster order.
2. **Seeds, written**: each chunk's seeds again, mapped to their global ids, into a scratch
   array (``NAME-seeds``), and its boundary probability ``1 - probabilities[cls]`` (float32)
   into another (``NAME-boundary``), each chunk written once. The scratch arrays are sharded
   by chunk with inner chunks of at most 256 px, so the next pass's windows decompress
   only the inner chunks they touch (not the 3 x 3 chunks of the probabilities around them,
   both classes each: 7.5 times fewer bytes at 1536 px chunks).
3. **Flooding and region graph**: every chunk is flooded from the seeds of its window (the
   chunk and ``floor(max_cost) + 1`` pixels around it, read from the scratch arrays) over the
   boundary probability
   (:func:`chunkseg.kernels.watershed.flood_block`); the halo is the proven bound of the
   flooding's reach, so the chunk, and the row and column after it, equal the whole image's
   flooding. The chunk's fragments go to a second scratch array (``NAME-fragments``); the
   touching fragment pairs of the chunk and its next row and column, with the boundary
   probability along their border (:func:`chunkseg.kernels.watershed.boundary_pairs`), and
   each fragment's first pixel are written as the chunk's record (``graph/IY_IX`` of the run's
   record group ``chunkseg/label-NAME``), read back by the client when every chunk is done.
   A task holds one window.
4. **Agglomeration and relabelling**: on the client the fragments are joined on that graph
   (one node per fragment, far fewer than pixels) by ``agglomeration``: the pairs whose mean
   boundary probability is below ``merge_threshold`` (union-find), or a multicut or mutex
   watershed whose costs change sign at ``merge_threshold``; the objects are numbered in the
   raster order of their first pixel (:func:`chunkseg.kernels.agglomerate.agglomerate`; the
   graph's sums are exact integers, so the result does not depend on the chunking with either
   method); each chunk of fragments is mapped through
   that lookup table into the final array (by :func:`chunkseg.objects.instances.label`) and the
   scratch arrays are deleted.

The result does not depend on the chunking (tested against the in-memory reference for several
chunkings, including chunks smaller than the halo).

**Resume.** Passes 1 and 4's merge only read; passes 2 and 3 and the final writing mark each
chunk once it is written (:class:`chunkseg.outputs._marks.ChunkMarks` in the run's record), so
``label(..., resume=True)`` after an interruption runs the reading passes again (the same
result: every step is deterministic) and writes only the chunks not marked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
from zarr.codecs import ZstdCodec

from ..errors import InvalidTypeError, InvalidValueError
from ..kernels import agglomerate as agg
from ..kernels import components as kern
from ..kernels import watershed as ws
from ..outputs._arrays import ArrayWriter, create_array
from ..outputs._marks import ChunkMarks
from ..scheduling import compute

__all__ = ["WatershedSettings", "watershed_lookup"]

SCRATCH_SUFFIXES = ("-seeds", "-boundary", "-fragments")
"""The scratch arrays of the seeds, the boundary probability and the fragments are
``NAME + suffix``, deleted at the end."""

_INNER = 256
"""Largest inner chunk (px) of the scratch arrays' shards."""


def _inner_chunk(c: int) -> int:
    """The largest divisor of ``c`` up to :data:`_INNER` if it is at least 32, else ``c``."""
    for d in range(min(c, _INNER), 31, -1):
        if c % d == 0:
            return d
    return c


@dataclass(frozen=True, slots=True)
class WatershedSettings:
    """The watershed's parameters (see :func:`chunkseg.label`), checked.

    Attributes
    ----------
    seed_threshold : float
        Seeds are components of ``probabilities[cls] >= seed_threshold``, in (0, 1].
    min_seed_size : int
        Seeds of fewer pixels are dropped, >= 1.
    boundary_weight : float
        Extra cost of entering a pixel of boundary probability 1, >= 0.
    max_cost : float
        Pixels farther (in cost) from every seed stay 0, 1 to 256; the halo is
        ``floor(max_cost)``.
    merge_threshold : float or None
        With ``agglomeration="threshold"``: touching fragments whose border's mean boundary
        probability is below it are joined; None: no agglomeration. With ``"multicut"`` or
        ``"mutex"``: the mean boundary probability at which joining and cutting cost the
        same, in (0, 1), required.
    agglomeration : {"threshold", "multicut", "mutex"}
        How fragments are joined (:func:`chunkseg.kernels.agglomerate.agglomerate`).
    seeds : {"threshold", "maxima", "both"}
        Seed pixels: ``probabilities[cls] >= seed_threshold``, the maxima of the capped
        distance transform of ``probabilities[cls] >= 0.5``, or either
        (:func:`chunkseg.kernels.watershed.seed_mask`).
    maxima_radius : int
        The maxima's neighbourhood radius, px, 1 to 64; the seeds' halo is
        ``3 * maxima_radius`` (:func:`chunkseg.kernels.watershed.seed_halo`).
    """

    seed_threshold: float = 0.98
    min_seed_size: int = 10
    boundary_weight: float = 10.0
    max_cost: float = 32.0
    merge_threshold: float | None = None
    agglomeration: str = "threshold"
    seeds: str = "threshold"
    maxima_radius: int = 4

    def __post_init__(self) -> None:
        def number(name: str, value: Any) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise InvalidTypeError(f"`{name}` must be a number. Got {value!r}.")
            return float(value)

        t = number("seed_threshold", self.seed_threshold)
        if not 0.0 < t <= 1.0:
            raise InvalidValueError(
                f"`seed_threshold` must be a probability in (0, 1]. Got {self.seed_threshold!r}. "
                "Seeds are the pixels at or above it; 0.98 is the default.")
        if (isinstance(self.min_seed_size, bool) or not isinstance(self.min_seed_size, int | np.integer)):
            raise InvalidTypeError(f"`min_seed_size` must be an int. Got {self.min_seed_size!r}.")
        if self.min_seed_size < 1:
            raise InvalidValueError(
                f"`min_seed_size` must be >= 1 pixel. Got {self.min_seed_size!r}.")
        if number("boundary_weight", self.boundary_weight) < 0:
            raise InvalidValueError(
                f"`boundary_weight` must be >= 0. Got {self.boundary_weight!r}.")
        mc = number("max_cost", self.max_cost)
        if not 1.0 <= mc <= ws.MAX_COST:
            raise InvalidValueError(
                f"`max_cost` must be between 1 and {ws.MAX_COST:g} (it is the halo in pixels). "
                f"Got {self.max_cost!r}.")
        if self.merge_threshold is not None:
            m = number("merge_threshold", self.merge_threshold)
            if not 0.0 <= m <= 1.0:
                raise InvalidValueError(
                    f"`merge_threshold` must be a probability in [0, 1] or None (no merging). "
                    f"Got {self.merge_threshold!r}.")
        agg.check(self.agglomeration, self.merge_threshold)
        if self.seeds not in ws.SEED_MODES:
            raise InvalidValueError(
                f"`seeds` must be one of {ws.SEED_MODES}. Got {self.seeds!r}.")
        if (isinstance(self.maxima_radius, bool)
                or not isinstance(self.maxima_radius, int | np.integer)):
            raise InvalidTypeError(f"`maxima_radius` must be an int. Got {self.maxima_radius!r}.")
        if not 1 <= self.maxima_radius <= 64:
            raise InvalidValueError(
                f"`maxima_radius` must be between 1 and 64 px. Got {self.maxima_radius!r}.")

    def to_dict(self) -> dict:
        """The settings as plain JSON values (the attrs of the written array)."""
        return {"seed_threshold": float(self.seed_threshold),
                "min_seed_size": int(self.min_seed_size),
                "boundary_weight": float(self.boundary_weight), "max_cost": float(self.max_cost),
                "merge_threshold": (None if self.merge_threshold is None
                                    else float(self.merge_threshold)),
                "agglomeration": self.agglomeration, "seeds": self.seeds,
                "maxima_radius": int(self.maxima_radius)}

    @classmethod
    def from_dict(cls, d: dict) -> WatershedSettings:
        """Inverse of :meth:`to_dict` (settings written before ``seeds`` existed are
        threshold seeds)."""
        return cls(**{k: d[k] for k in ("seed_threshold", "min_seed_size", "boundary_weight",
                                        "max_cost", "merge_threshold", "agglomeration",
                                        "seeds", "maxima_radius") if k in d})


def _seed_block(src, cls: int, settings: WatershedSettings, ys, xs) -> tuple:
    """One chunk's seed mask (read with the seeds' halo) and its probability."""
    height, width = src.shape[-2:]
    h = ws.seed_halo(settings.seeds, settings.maxima_radius)
    wy0, wx0 = max(ys[0] - h, 0), max(xs[0] - h, 0)
    window = np.asarray(src[cls, wy0:min(ys[1] + h, height), wx0:min(xs[1] + h, width)])
    mask = ws.seed_mask(window, settings.seeds, settings.seed_threshold,
                        settings.maxima_radius)
    inner = (slice(ys[0] - wy0, ys[1] - wy0), slice(xs[0] - wx0, xs[1] - wx0))
    return mask[inner], window[inner]


def _seed_summary(src, cls: int, settings: WatershedSettings, ys, xs, connectivity: int,
                  width: int):
    seeds, n = kern.label_block(_seed_block(src, cls, settings, ys, xs)[0], connectivity)
    return kern.summarise_block(seeds, n, (ys[0], xs[0]), width), np.bincount(
        seeds.ravel(), minlength=n + 1)


def _seed_task(src, cls: int, settings: WatershedSettings, ys, xs, connectivity: int,
               lookup: np.ndarray, writer: ArrayWriter, boundary_writer: ArrayWriter,
               marks: ChunkMarks, iy: int, ix: int, what: str) -> int:
    """Label one chunk's seeds again, map them to their global ids, write them and the
    chunk's boundary probability (once each), mark."""
    mask, p = _seed_block(src, cls, settings, ys, xs)
    seeds, _ = kern.label_block(mask, connectivity)
    region = (slice(*ys), slice(*xs))
    writer.write(region, lookup.astype(writer.dtype)[seeds], what)
    boundary_writer.write(region, 1.0 - p.astype(np.float32), what)
    marks.mark(iy, ix)
    return 1


def _flood_task(seeds_array, boundary_array, ys, xs, shape: tuple[int, int], depth: int,
                weight: float, max_cost: float, writer: ArrayWriter, graph, marks: ChunkMarks,
                iy: int, ix: int, what: str) -> int:
    """Flood one chunk from the seeds in its window (the chunk and ``depth`` pixels around it),
    write its fragments (once) and its region-graph record (:func:`_write_record`), mark."""
    height, width = shape
    wy0, wx0 = max(ys[0] - depth, 0), max(xs[0] - depth, 0)
    wy1, wx1 = min(ys[1] + depth, height), min(xs[1] + depth, width)
    seeds = np.asarray(seeds_array[wy0:wy1, wx0:wx1])
    boundary = np.asarray(boundary_array[wy0:wy1, wx0:wx1])
    frag = ws.flood_block(seeds, boundary, weight, max_cost)[0].astype(np.uint32)
    rows, cols = ys[1] - ys[0], xs[1] - xs[0]
    oy, ox = ys[0] - wy0, xs[0] - wx0
    writer.write((slice(*ys), slice(*xs)), frag[oy:oy + rows, ox:ox + cols], what)
    # the chunk plus the next row and column, where the image has them (exact: depth > halo)
    ext = (slice(oy, oy + rows + 1), slice(ox, ox + cols + 1))
    pairs = ws.boundary_pairs(frag[ext], boundary[ext], rows, cols)
    ids, first = kern.first_pixels(frag[oy:oy + rows, ox:ox + cols], (ys[0], xs[0]), width)
    _write_record(graph, iy, ix, pairs, ids, first, writer.location)
    marks.mark(iy, ix)
    return 1


def _write_record(graph, iy: int, ix: int, pairs, ids, first, location: str) -> None:
    """One chunk's region-graph pairs ``(u, v, total, count)`` and its fragments' first pixels
    ``(id, first, 0, 0)``, one int64 ``(k + m, 4)`` array ``graph/IY_IX`` of the run's record
    (``attrs["pairs"] = k``): kept until the run finishes, so a resumed run needs no chunk's
    flooding again."""
    table = np.zeros((len(pairs[0]) + len(ids), 4), np.int64)
    table[:len(pairs[0])] = np.stack(pairs, axis=1)
    table[len(pairs[0]):, 0], table[len(pairs[0]):, 1] = ids, first
    array = create_array(graph, name=f"{iy}_{ix}", shape=table.shape,
                         chunks=(max(len(table), 1), 4), dtype="int64",
                         compressor=ZstdCodec(level=1), dimension_names=("row", "column"),
                         attributes={"pairs": len(pairs[0])}, overwrite=True)
    ArrayWriter(array, location, f"graph/{iy}_{ix}").write(
        (slice(None), slice(None)), table, f"the region graph of chunk ({iy}, {ix})")


def _read_records(graph, keys) -> tuple[np.ndarray, ...]:
    """``u, v, total, count, ids, first`` of the chunks ``keys``, concatenated."""
    pairs, nodes = [], []
    for iy, ix in keys:
        array = graph[f"{iy}_{ix}"]
        table, k = np.asarray(array[...]), int(array.attrs["pairs"])
        pairs.append(table[:k])
        nodes.append(table[k:, :2])
    p = np.concatenate(pairs) if pairs else np.zeros((0, 4), np.int64)
    n = np.concatenate(nodes) if nodes else np.zeros((0, 2), np.int64)
    return p[:, 0], p[:, 1], p[:, 2], p[:, 3], n[:, 0], n[:, 1]


def watershed_lookup(group, src, cls: int, settings: WatershedSettings, connectivity: int,
                     scratch_names: tuple[str, str, str], record, resume: bool,
                     location: str,
                     scheduler: Any, progress: bool, secrets) -> tuple[Callable, int, dict]:
    """Seeds, flooding into scratch arrays, region graph and agglomeration (passes 1-4).

    Parameters
    ----------
    group : zarr.Group
        The output group (writable); the scratch arrays are created in it.
    src : zarr.Array
        Its ``probabilities``, ``(class, y, x)``.
    cls : int
        The object class.
    settings : WatershedSettings
    connectivity : {1, 2}
        Of the seeds' components.
    scratch_names : (str, str, str)
        Names of the scratch arrays of the seeds, the boundary probability and the fragments.
    record : zarr.Group
        The run's record group (``chunkseg/label-NAME``): the passes' chunk marks
        (:class:`chunkseg.outputs._marks.ChunkMarks` ``seeds`` and ``fragments``) and the
        chunks' region-graph records (``graph/IY_IX``).
    resume : bool
        Keep the scratch arrays, marks and records of an interrupted run and write only the
        chunks not marked; else create them (the caller removed any earlier ones).
    location : str
        The output, for messages.
    scheduler, progress, secrets
        As :func:`chunkseg.scheduling.compute`.

    Returns
    -------
    block : callable
        ``block(iy, ix, ys, xs)`` -> chunk ``(iy, ix)``'s final object ids (int64), read from
        the fragments' scratch array (the call :func:`chunkseg.objects.instances.label`'s
        writing pass makes of its components too).
    n_objects : int
    info : dict
        ``seeds``: the seeds after the size filter (one fragment each), for the attrs.
    """
    agg.require(settings.agglomeration)  # before the passes: a missing library fails at once
    height, width = src.shape[-2:]
    cy, cx = src.chunks[-2:]
    ys_, xs_ = kern.block_grid((kern.axis_chunks(height, cy), kern.axis_chunks(width, cx)))
    grid = (len(ys_), len(xs_))
    # 1. seeds (reads only: run again on resume, the same result)
    tasks = {(iy, ix): dask.delayed(_seed_summary, pure=False)(
        src, cls, settings, ys, xs, connectivity, width)
        for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_)}
    results = dict(zip(tasks, compute(*tasks.values(), scheduler=scheduler, progress=progress,
                                      label="labelling: watershed seeds", secrets=secrets)))
    lookups, n_comp = kern.merge_summaries({k: r[0] for k, r in results.items()}, grid,
                                           connectivity)
    sizes = np.zeros(n_comp + 1, np.int64)
    for k, (_, local) in results.items():
        np.add.at(sizes, lookups[k], local)
    keep = sizes >= settings.min_seed_size
    keep[0] = False
    renumber = np.cumsum(keep) * keep  # raster order kept: ids were in raster order
    n_seeds = int(keep.sum())
    if n_seeds > np.iinfo(np.uint32).max:
        raise InvalidValueError(
            f"`seed_threshold` {settings.seed_threshold!r} gives {n_seeds} seeds; the watershed "
            "takes at most 2**32 - 1. Raise `seed_threshold` or `min_seed_size`.")
    # scratch arrays in shards of one chunk, of inner chunks of at most 256 px: a window
    # decompresses the inner chunks it touches, not the 3 x 3 chunks around it
    inner = (_inner_chunk(cy), _inner_chunk(cx))
    shards = None if inner == (cy, cx) else (cy, cx)

    def scratch(name: str, what: str, dtype: Any, pass_: str) -> tuple[Any, ArrayWriter]:
        if resume and name in group and pass_ in record:  # the pass that writes it began
            return group[name], ArrayWriter(group[name], location, name)
        array = create_array(
            group, name=name, shape=(height, width), chunks=inner, shards=shards, dtype=dtype,
            compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
            attributes={"long_name": f"watershed {what} (scratch, deleted at the end)"},
            overwrite=resume)  # resume: one left without its marks
        return array, ArrayWriter(array, location, name)

    def marks(what: str) -> ChunkMarks:
        if resume and what in record:
            return ChunkMarks.open(record, what, grid, location)
        return ChunkMarks.create(record, what, grid, location)

    # 2. the seeds with their global ids and the boundary probability, into scratch arrays
    # (each chunk written once)
    seeds, seed_writer = scratch(scratch_names[0], "seeds", kern.ids_dtype(n_seeds), "seeds")
    boundary, boundary_writer = scratch(scratch_names[1], "boundary", "float32", "seeds")
    seed_marks = marks("seeds")
    done = seed_marks.finished()
    jobs = [dask.delayed(_seed_task, pure=False)(
        src, cls, settings, ys, xs, connectivity, renumber[lookups[(iy, ix)]],
        seed_writer, boundary_writer, seed_marks, iy, ix, f"chunk ({iy}, {ix}) of the seeds")
        for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_) if (iy, ix) not in done]
    compute(*jobs, scheduler=scheduler, progress=progress, label="labelling: writing seeds",
            secrets=secrets)
    # 3. flooding with the halo (one more pixel: the pairs look at the next row and column)
    fragments, frag_writer = scratch(scratch_names[2], "fragments", kern.ids_dtype(n_seeds),
                                       "fragments")
    frag_marks = marks("fragments")
    graph = record.require_group("graph")
    depth = ws.halo(settings.max_cost) + 1
    done = frag_marks.finished()
    jobs = [dask.delayed(_flood_task, pure=False)(
        seeds, boundary, ys, xs, (height, width), depth, settings.boundary_weight,
        settings.max_cost, frag_writer, graph, frag_marks, iy, ix,
        f"chunk ({iy}, {ix}) of the fragments")
        for iy, ys in enumerate(ys_) for ix, xs in enumerate(xs_) if (iy, ix) not in done]
    compute(*jobs, scheduler=scheduler, progress=progress,
            label="labelling: watershed flooding", secrets=secrets)
    u, v, total, count, ids, f = _read_records(graph, [(iy, ix) for iy in range(grid[0])
                                                       for ix in range(grid[1])])
    first = np.full(n_seeds, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, ids - 1, f)
    # 4. agglomeration: fragment id -> object id
    lookup, n_objects = agg.agglomerate(n_seeds, u, v, total, count, settings.agglomeration,
                                        settings.merge_threshold, first)

    def block(iy: int, ix: int, ys, xs) -> np.ndarray:
        return lookup[np.asarray(fragments[ys[0]:ys[1], xs[0]:xs[1]]).astype(np.int64)]

    return block, n_objects, {"seeds": n_seeds}
