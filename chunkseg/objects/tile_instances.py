"""Instance segmentation with per-tile instance models: border cleaning, pasting, global ids.

Some models return, per tile, an instance label map (0 = background, ``1..n`` = objects local
to that tile) rather than logits, which cannot be blended. :func:`predict_instances` runs such a
model on the global tile grid of :mod:`chunkseg.plan` and stitches the tiles' objects into one
label image, the way PyBlendPatches (and Cellpose/StarDist-style tiled prediction) does: every
object is taken from the one tile that sees it most centrally, and the tiles' leftovers at their
edges are dropped.

The rule (per tile, per axis ``k``-th tile ``[k S - b, k S - b + T)``, core ``[k S, (k + 1) S)``)
-----------------------------------------------------------------------------------------------
1. The tile's labels are clipped to the image: what lies in the reflect padding is dropped, so
   an object at the image border is cut at the border, never mirrored.
2. An object is **kept iff its centroid**, the mean of the pixels that tile sees (in the image),
   **lies in the tile's core**. The cores partition the image, so an object seen whole by every
   tile that sees it whole has one centroid and is kept by exactly one tile.
3. Partial views (an object cut by a tile edge that is not the image border) are not kept by
   their tile, because their centroid lies outside its core: this holds for every object whose
   pixels lie within ``r <= min(b, O - b, S) / 2`` of its centroid along each axis (``b = O // 2``),
   i.e. objects less than about ``overlap / 2`` across. For those the result is exact: each is
   kept once, whole, from the tile where it lies most central (proof in
   :func:`predict_instances`' Notes; tested in ``tests/test_tile_instances.py``).
4. A kept object that touches an edge of its tile that is not the image border is larger than
   the tile's context: it is kept as that tile sees it, and counted; the run warns once
   (:class:`LargeObjectWarning`) with the count, since such objects may be split or
   duplicated (as partial views in several tiles).

Pasting, ids and overlaps
-------------------------
A kept object gets the global id ``g = t * T_y * T_x + rank``: ``t`` the row-major index of its
tile in the global grid, ``rank`` its position (1-based) among the tile's kept objects in the
order of their local ids; ``g`` depends on nothing but the tile grid. Its priority is its
centrality in its tile (the distance of its centroid to the nearest tile edge, pixels).

The tiles are pasted into ``L = ceil(T_y / S_y) * ceil(T_x / S_x)`` *layers* (tile ``(k_y, k_x)``
into layer ``(k_y mod ceil(T_y / S_y), k_x mod ceil(T_x / S_x))``); tiles of one layer never
overlap, so each pixel of each layer holds the id of at most one object, and a layer is the same
whatever the chunking. The blocks and their forward-only fold are :func:`chunkseg.engine.blend_graph`'s;
the fold puts the layers of a chunk together and then, per pixel:

* the **winner** is the covering object of highest priority (ties: the higher id): a max, so
  independent of fold order and chunking;
* every pair of covering objects adds 1 to their **intersection** count (exact and additive
  over chunks).

The winners' ids go to a temporary uint64 array in the output group. On the client, with the
O(objects) tables only: kept objects whose **IoU** (intersection over union of the full kept
masks) is ``>= 0.5`` are the same object (union-find, one id); every object that won a pixel
gets a consecutive final id ``1..N`` in the raster order of its first pixel. A second, cheap
pass maps the temporary ids to the final ones chunk by chunk and writes ``instances``; the
temporary array is then deleted.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from .._check import isel_arg, isel_attrs, positive_int
from .._redact import secrets_of
from .._version import __version__
from ..engine.graph import blend_graph
from ..engine.runner import BlockReader
from ..errors import InvalidValueError, LargeObjectWarning, ModelOutputError
from ..io import open_image
from ..models.resolve import resolve_instance_model
from ..outputs._arrays import ArrayWriter, check_aligned, create_array
from ..outputs._lifecycle import writing
from ..outputs._manifest import _so, consolidate
from ..outputs._ownership import require_group
from ..outputs._target import MARKER, describe_location
from ..plan import BlockSchedule, TilePlan, plan_tiles
from ..scheduling import compute, dask_threads, open_client
from ._tile_runner import InstanceTileRunner, check_labels, concat_tables

__all__ = [
    "IOU_MATCH",
    "LargeObjectWarning",
    "InstanceTileRunner",
    "check_id_space",
    "predict_instances",
]

IOU_MATCH = 0.5
"""Kept objects of different tiles with at least this IoU are one object."""

TEMP_GROUP = "chunkseg_tmp"
"""Subgroup of the output holding the temporary winner ids (deleted when the run ends)."""


def check_id_space(plan: TilePlan) -> int:
    """The largest global object id the plan can produce, after checking that it fits int64.

    Parameters
    ----------
    plan : TilePlan

    Returns
    -------
    int
        ``n_tiles * T_y * T_x`` (each tile has at most ``T_y * T_x`` objects).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If that exceeds ``2**63 - 1`` (ids are uint64, sums and sorts run in int64).
    """
    top = plan.n_tiles * plan.tile[0] * plan.tile[1]
    if top > np.iinfo(np.int64).max:
        raise InvalidValueError(
            f"the image {plan.image_shape} with tile {plan.tile} has {plan.n_tiles} tiles of up "
            f"to {plan.tile[0] * plan.tile[1]} objects each: {top} possible object ids overflow "
            "64 bits. Use a larger stride (smaller overlap or larger tile) or split the image."
        )
    return int(top)


def merge_tables(stats: Sequence[dict]) -> dict:
    """The final ids from every chunk's stats: IoU matching, then raster-order numbering.

    Parameters
    ----------
    stats : sequence of dict
        :meth:`InstanceTileRunner.fold`'s stats of every output chunk (O(objects) each).

    Returns
    -------
    dict
        ``keys`` (sorted uint64 winner ids) and ``values`` (their final ids, uint32, or uint64
        beyond ``2**32 - 1`` objects), ``n_objects`` (N, the final ids are ``1..N``),
        ``kept`` (objects kept by the tiles), ``merged`` (pairs matched at IoU >= 0.5) and
        ``oversized`` (kept objects touching an inner edge of their tile).

    Notes
    -----
    Everything here is a function of per-object and per-pixel quantities that do not depend on
    the chunking: object sizes and flags (from the one tile that kept each object), pairwise
    intersections (sums over pixels) and first winner pixels (minima over pixels). Matched
    objects form groups (union-find); a group's id is its smallest member's, its first pixel
    the smallest over its members, and groups are numbered ``1..N`` in the order of their
    first pixels, which are distinct (a pixel has one winner).
    """
    objects = concat_tables([s["objects"] for s in stats])
    gid, first_of = np.unique(objects["gid"], return_index=True)
    size = objects["size"][first_of]
    oversized = int(objects["oversized"][first_of].sum())
    pairs = np.concatenate([s["pairs"] for s in stats]) if stats else np.zeros((0, 2), np.uint64)
    counts = np.concatenate([s["counts"] for s in stats]) if stats else np.zeros(0, np.int64)
    rep_keys = np.zeros(0, np.uint64)
    rep_vals = np.zeros(0, np.uint64)
    merged = 0
    if len(pairs):
        uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
        inter = np.bincount(inv.ravel(), weights=counts, minlength=len(uniq))
        ia, ib = np.searchsorted(gid, uniq[:, 0]), np.searchsorted(gid, uniq[:, 1])
        if len(gid) == 0 or np.any(gid[np.minimum(ia, len(gid) - 1)] != uniq[:, 0]) \
                or np.any(gid[np.minimum(ib, len(gid) - 1)] != uniq[:, 1]):
            raise RuntimeError("an overlapping object is missing from the object tables")
        iou = inter / (size[ia] + size[ib] - inter)
        match = uniq[iou >= IOU_MATCH]
        merged = len(match)
        parent: dict[int, int] = {}

        def find(x: int) -> int:
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(x, x) != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        for a, b in match.tolist():
            ra, rb = find(a), find(b)
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)  # the root is the group's smallest id
        if parent:
            rep_keys = np.array(sorted(parent), np.uint64)
            rep_vals = np.array([find(int(k)) for k in rep_keys.tolist()], np.uint64)
    winners = (np.concatenate([s["winners"] for s in stats]) if stats
               else np.zeros(0, np.uint64))
    first = np.concatenate([s["first"] for s in stats]) if stats else np.zeros(0, np.int64)
    keys, inv = np.unique(winners, return_inverse=True)
    key_first = np.full(len(keys), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(key_first, inv.ravel(), first)
    group = keys.copy()
    if len(rep_keys):
        pos = np.searchsorted(rep_keys, keys)
        hit = (pos < len(rep_keys)) & (rep_keys[np.minimum(pos, len(rep_keys) - 1)] == keys)
        group[hit] = rep_vals[pos[hit]]
    groups, ginv = np.unique(group, return_inverse=True)
    group_first = np.full(len(groups), np.iinfo(np.int64).max, np.int64)
    np.minimum.at(group_first, ginv.ravel(), key_first)
    n = len(groups)
    dtype = np.uint32 if n <= np.iinfo(np.uint32).max else np.uint64
    final_of_group = np.empty(n, dtype)
    final_of_group[np.argsort(group_first, kind="stable")] = np.arange(1, n + 1, dtype=dtype)
    return {"keys": keys, "values": final_of_group[ginv.ravel()], "n_objects": int(n),
            "kept": int(len(gid)), "merged": int(merged), "oversized": oversized}


class _TempWriter:
    """Writes a chunk's winner ids into the temporary array (the fold's ``finish`` context)."""

    def __init__(self, writer: ArrayWriter, schedule: BlockSchedule):
        self.writer = writer
        self.schedule = schedule

    def __call__(self, jy: int, jx: int, winners: np.ndarray) -> None:
        self.writer.write(_region(self.schedule, jy, jx), winners,
                          what=f"output chunk ({jy}, {jx})")


def _region(schedule: BlockSchedule, jy: int, jx: int) -> tuple[slice, slice]:
    """Image pixels of output chunk ``(jy, jx)``."""
    (y0, y1), (x0, x1) = schedule.chunk_bounds(jy, jx)
    return slice(y0, y1), slice(x0, x1)


def _fold_task(runner: InstanceTileRunner, writer: _TempWriter, jy: int, jx: int, dsts,
               *pieces) -> dict:
    winners, stats = runner.fold(jy, jx, list(zip(dsts, pieces)))
    writer(jy, jx, winners)
    return stats


def _gather(stats: list) -> list:
    return list(stats)


def _relabel_task(mapping: dict, source, target: ArrayWriter, schedule: BlockSchedule,
                  jy: int, jx: int) -> int:
    region = _region(schedule, jy, jx)
    ids = np.asarray(source[region])
    keys, values = mapping["keys"], mapping["values"]
    out = np.zeros(ids.shape, values.dtype)
    nz = ids != 0
    if nz.any():
        pos = np.searchsorted(keys, ids[nz])
        out[nz] = values[pos]
    target.write(region, out, what=f"output chunk ({jy}, {jx})")
    return 1


def _probe(runner: InstanceTileRunner) -> None:
    """Run the model on the first tile: a wrong model fails before anything is written."""
    plan = runner.plan
    (y0, x0), (ty, tx) = (int(o[0]) for o in plan.tile_origins()), plan.tile
    batch = runner.reader((y0, y0 + ty), (x0, x0 + tx))[None].astype(np.float32)
    labels = check_labels(runner.model(batch), (1, ty, tx), "tile (0, 0) of the tile grid")
    if labels.dtype.kind == "i" and labels.min() < 0:
        raise ModelOutputError(
            f"tile (0, 0) of the tile grid: the model returned negative instance ids (min "
            f"{int(labels.min())}); ids must be 0 (background) or positive.")


def predict_instances(
    image: Any,
    model: Any,
    store: Any,
    *,
    tile: int | tuple[int, int] = 256,
    overlap: int | tuple[int, int] = 64,
    chunks: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    overwrite: bool = False,
    storage_options: dict | None = None,
    scheduler: Any = None,
    progress: bool = False,
    isel: Mapping[str, int | slice] | None = None,
) -> xr.DataArray:
    """Segment instances with a per-tile instance model and write one seamless label image.

    Runs ``model`` on every tile of the global grid (:func:`chunkseg.plan.plan_tiles`), keeps
    each object from the one tile whose core holds its centroid (PyBlendPatches-style border
    cleaning, see the module docstring for the rule), pastes the kept objects with globally
    unique ids, matches duplicates by IoU and writes consecutive ids ``1..N`` to a Zarr v3 group.

    Parameters
    ----------
    image : array_like, str or path
        ``(y, x)`` or ``(y, x, c)``; anything :func:`chunkseg.io.open_image` accepts (numpy,
        dask, xarray, a Zarr array/group, a Zarr path or fsspec URL, a small PNG/JPEG/TIFF).
    model : callable or str
        A ``'package.module:factory'`` spec (the factory returns the callable), or
        ``model(batch)`` with ``batch`` a float32 ``(N, C_in, T_y, T_x)`` ndarray (the raw pixel
        values) returns integer instance ids ``(N, T_y, T_x)`` (any signed or unsigned integer
        dtype, any values ``>= 0``): 0 is background, each other value one object of that
        tile. It must treat each tile of the batch on its own.
    store : str, os.PathLike or zarr store
        Output Zarr v3 group: a path, an fsspec URL or a store.
    tile : int or (int, int), default 256
        Tile size the model sees, pixels.
    overlap : int or (int, int), default 64
        Overlap between tiles, ``0 <= overlap < tile``; objects less than about
        ``overlap / 2`` across are stitched exactly (see Notes).
    chunks : int or (int, int), optional
        Computation and output chunk, pixels, any size; default 1536 (or the image's size).
    batch_size : int, default 8
        Tiles per model call.
    overwrite : bool, default False
        Replace a previous chunkseg output at ``store`` (see
        :func:`chunkseg.outputs._target.check_output_target`).
    storage_options : dict, optional
        fsspec options for URL inputs and outputs.
    scheduler : None, str or distributed.Client
        See :func:`chunkseg.scheduling.open_client`; default dask's threaded scheduler.
    progress : bool, default False
        Show progress bars (one per pass).

    isel : mapping of str to int, optional
        One plane of a stack, by dimension name (:func:`chunkseg.open_image`): e.g.
        ``{"t": 0, "z": 10}`` of an OME-Zarr ``(t, c, z, y, x)`` (CLI: ``--planes t=0,z=10``).
        Each axis other than ``y``, ``x``, ``c`` must be left of length 1: instances are
        written for one 2-D image.

    Returns
    -------
    xarray.DataArray
        ``instances``, dims ``("y", "x")``, shape ``(H, W)``, uint32 (uint64 if there are more
        than ``2**32 - 1`` objects), 0 = background, objects ``1..N`` numbered in the raster
        order of their first pixel; opened with ``xarray.open_zarr`` (dask-backed, chunked as
        the computation). The group's attrs hold ``tile``, ``overlap``, ``stride``, ``chunks``,
        ``padding``, ``method``, ``n_objects``, ``oversized_objects``, ``complete`` and the
        ``chunkseg_version`` marker.

    Raises
    ------
    chunkseg.errors.InvalidValueError, chunkseg.errors.InvalidTypeError
        Bad arguments (as :func:`chunkseg.plan.plan_tiles`; ``batch_size < 1``; a model that
        is not callable), or a grid whose object ids would overflow 64 bits
        (:func:`check_id_space`).
    chunkseg.errors.ModelOutputError
        If the model returns floats, bools, the wrong shape or negative ids; checked on the
        first tile before anything is written, and on every batch, naming the tiles.
    chunkseg.errors.OutputExistsError, chunkseg.errors.OutputOverlapError
        As :func:`chunkseg.predict_to_zarr`, before anything is read or written.
    chunkseg.errors.OutputWriteError
        If a chunk write fails.

    Warns
    -----
    LargeObjectWarning
        Once per run, with their number, when kept objects touch an inner edge of their tile:
        objects larger than the overlap's context may be split into pieces or kept twice.

    Notes
    -----
    *Rule.* Tile ``k`` covers ``[k S - b, k S - b + T)`` per axis (``S = T - O``,
    ``b = O // 2``), its core is ``[k S, (k + 1) S)``; the cores partition the image. A tile's
    map is clipped to the image, and a tile keeps an object iff the centroid of what it sees of
    it lies in its core (tested in exact integers: ``k S n <= sum(y) < (k + 1) S n``).

    *Exactness.* Let an object's pixels lie within ``r`` of its centroid ``c`` along each axis,
    ``r <= min(b, O - b, S) / 2`` (strictly below ``b`` and ``O - b``). The tile ``B`` whose
    core holds ``c`` sees it whole (it extends ``b`` before and ``O - b`` after its core) and
    keeps it. Another tile ``A`` that saw only a part would need that part's centroid in its
    core; along an axis where ``A`` precedes ``B``, that centroid is ``>= c - r``, so
    ``c < k_B S + r`` and every pixel is ``< k_B S + 2 r <= k_B S + O - b``, inside ``A``
    (symmetrically after; along an axis where they agree, ``A`` sees what ``B`` sees): ``A``
    would see the object whole, with centroid ``c`` outside its core. So each such object is
    kept exactly once and whole, and the output equals the whole-image segmentation (for a
    model like "threshold, then connected components" it is the whole-image labelling, ids in
    raster order, as ``scipy.ndimage.label``).

    *Chunk independence.* The tiles, hence the model's maps, the kept objects, their ids
    ``t * T_y * T_x + rank`` and priorities depend only on the tile grid. Pixel winners are a
    max over the covering objects (of priority, then id), intersections are sums over pixels
    and first pixels minima over pixels; the IoU matching and numbering then use only those
    totals (:func:`merge_tables`). So ``instances`` is identical for any ``chunks`` (and any
    ``batch_size``, for a model that treats tiles independently).

    *Memory.* A block task holds its input block and ``L = ceil(T_y / S_y) ceil(T_x / S_x)``
    uint64 id layers of it (``L = 4`` for ``overlap <= tile / 2``), a fold task ``L`` layers of
    its chunk; the client only O(objects) tables. Blocks go through
    :func:`chunkseg.engine.blend_graph`'s rolling window (threads + 2 blocks). The winners are
    written once to a temporary uint64 array (subgroup ``chunkseg_tmp``), read back once by the
    renumbering pass, then deleted.

    The method follows PyBlendPatches' border cleaning of tiled instance predictions (keep
    what is central, drop what touches an inner tile edge), with a centroid-in-core rule that
    makes "central" a partition.
    """
    import zarr
    from zarr.codecs import ZstdCodec

    resolved = resolve_instance_model(model)  # once per run
    batch_size = positive_int(batch_size, "batch_size")
    out_so = _so(store, storage_options)
    with writing(store, source=image, overwrite=overwrite, storage_options=out_so,
                 what="chunkseg predict-instances") as target:
        arr = open_image(image, storage_options=_so(image, storage_options), isel=isel)
        plan = plan_tiles(arr.shape, tile, overlap, chunks)
        check_id_space(plan)
        reader = BlockReader(arr.data, arr.encoding.get("chunkseg_reader"))
        runner = InstanceTileRunner(reader, resolved, plan, int(batch_size))
        _probe(runner)
        attrs = {
            MARKER: __version__,
            "tile": list(plan.tile), "overlap": list(plan.overlap), "stride": list(plan.stride),
            "chunks": list(plan.chunks), "padding": "reflect",
            "method": ("per-tile instances; keep an object iff its centroid lies in the tile's "
                       "stride cell; max-priority paste (centrality); IoU >= 0.5 matching; "
                       "ids 1..N in raster order of first pixel"),
            "source": str(arr.attrs.get("source", "array")),
            **isel_attrs(isel_arg(isel)),
            "complete": False,
        }
        location = describe_location(store)
        with open_client(scheduler) as client:
            threads = dask_threads(client)
            group = zarr.open_group(target.store, mode="w", storage_options=out_so,
                                    attributes=attrs)
            check_aligned("instances", plan.output_chunks(), plan.chunks)
            temp = create_array(require_group(group, TEMP_GROUP), name="winners",
                                shape=plan.image_shape, chunks=plan.chunks, dtype="uint64",
                                compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
                                write_empty_chunks=True)
            token = tokenize(arr.data.name, plan, uuid.uuid4().hex)
            writer = _TempWriter(ArrayWriter(temp, location, name=f"{TEMP_GROUP}/winners"),
                                 runner.schedule)
            dsk, _, fold_keys = blend_graph(runner, _fold_task, context=writer, lag=threads + 2,
                                            token=token)
            gather_key = f"chunkseg-instances-gather-{token}"
            dsk[gather_key] = (_gather, list(fold_keys))
            run_on = scheduler if client is None else client
            stats = compute(Delayed(gather_key, HighLevelGraph.from_collections(
                gather_key, dsk, dependencies=[])), scheduler=run_on, progress=progress,
                label=f"predicting instances in {len(fold_keys)} chunks", count=fold_keys,
                secrets=secrets_of(storage_options))[0]
            merged = merge_tables(stats)
            del stats
            n = merged["n_objects"]
            target = create_array(group, name="instances", shape=plan.image_shape,
                                  chunks=plan.chunks, dtype=merged["values"].dtype,
                                  compressor=ZstdCodec(level=1), dimension_names=("y", "x"),
                                  attributes={"long_name": "instance labels", "units": "1",
                                              "background": 0, "n_objects": n},
                                  write_empty_chunks=True)
            out_writer = ArrayWriter(target, location, name="instances",
                                     fix="Run again with overwrite=True.")
            map_key = f"chunkseg-instances-map-{token}"
            src_key, dst_key = f"chunkseg-instances-src-{token}", f"chunkseg-instances-dst-{token}"
            schedule_key = f"chunkseg-instances-schedule-{token}"
            dsk2: dict = {map_key: {"keys": merged["keys"], "values": merged["values"]},
                          src_key: temp, dst_key: out_writer,
                          schedule_key: runner.schedule}
            keys2 = []
            for jy in range(plan.chunk_grid[0]):
                for jx in range(plan.chunk_grid[1]):
                    key = (f"chunkseg-instances-relabel-{token}", jy, jx)
                    dsk2[key] = (_relabel_task, map_key, src_key, dst_key, schedule_key, jy,
                                 jx)
                    keys2.append(key)
            done_key = f"chunkseg-instances-done-{token}"
            dsk2[done_key] = (sum, keys2)
            written = compute(Delayed(done_key, HighLevelGraph.from_collections(
                done_key, dsk2, dependencies=[])), scheduler=run_on, progress=progress,
                label=f"writing instances: {len(keys2)} chunks", count=keys2,
                secrets=secrets_of(storage_options))[0]
            if written != plan.n_chunks:
                raise RuntimeError(f"wrote {written} of {plan.n_chunks} chunks.")
        del group[TEMP_GROUP]
        group.attrs.update({"n_objects": n, "kept_objects": merged["kept"],
                            "iou_matches": merged["merged"],
                            "oversized_objects": merged["oversized"], "complete": True})
        if merged["oversized"]:
            warnings.warn(
                f"{merged['oversized']} kept object(s) touch an inner edge of their tile: they are "
                f"larger than the tiles' context (overlap {plan.overlap}) and may be split into "
                "pieces or kept twice. Use a larger overlap (objects should be under about "
                "overlap / 2 across) or a larger tile.", LargeObjectWarning, stacklevel=2)
        consolidate(group)
    return xr.open_zarr(store, storage_options=out_so)["instances"]
