"""The per-block work of :func:`chunkseg.predict_instances`: run a block's tiles, clean their
borders, paste the kept objects into layers, cut the pieces; fold a chunk's pieces into its
winners and the O(objects) tables the client merges. The rule, ids and layers are described
in :mod:`chunkseg.objects.tile_instances`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..engine.runner import BlockReader
from ..errors import InvalidValueError, ModelOutputError
from ..kernels.blend import mapped_zeros
from ..models.resolve import ResolvedModel, resolve_instance_model
from ..plan import TilePlan

__all__ = ["EMPTY_TABLE", "FOLD_STRIP_ELEMENTS", "InstanceTileRunner", "check_labels",
           "concat_tables"]

FOLD_STRIP_ELEMENTS = 2**20
"""Layer elements (8 bytes each) one fold step holds: the fold works in strips of rows."""

EMPTY_TABLE = {
    "gid": np.zeros(0, np.uint64), "prio": np.zeros(0, np.float64),
    "size": np.zeros(0, np.int64), "oversized": np.zeros(0, bool),
}


def check_labels(out: Any, shape: tuple[int, int, int], where: str) -> np.ndarray:
    """A model's per-tile instance maps as an integer ndarray ``(N, T_y, T_x)``, or an error."""
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().cpu().numpy()
    arr = np.asarray(out)
    fix = ("An instance model must map a float32 batch (N, C_in, tile_y, tile_x) to integer "
           "instance ids (N, tile_y, tile_x): 0 = background, 1..n = the tile's objects.")
    if arr.dtype.kind not in "iu":
        raise ModelOutputError(
            f"{where}: the model returned {type(out).__name__} of dtype {arr.dtype}; instance "
            f"ids must be integers (not float, bool or other). {fix}")
    if arr.shape != shape:
        raise ModelOutputError(
            f"{where}: the model returned an array of shape {arr.shape}, expected {shape}. {fix}")
    return arr


class InstanceTileRunner:
    """The per-block work of :func:`predict_instances`, with :class:`chunkseg.engine.TileRunner`'s
    contract for :func:`chunkseg.engine.blend_graph` (``plan``, ``accumulate``, ``fold``).

    Picklable; it reads its geometry from the plan's :class:`~chunkseg.plan.BlockSchedule`,
    derived once.

    Parameters
    ----------
    reader : chunkseg.engine.runner.BlockReader
    model : ResolvedModel or callable
        float32 ``(N, C_in, T_y, T_x)`` -> integer ``(N, T_y, T_x)`` instance ids, resolved
        once for the run (:func:`chunkseg.models.resolve.resolve_instance_model`).
    plan : TilePlan
    batch_size : int
        Tiles per model call.

    Notes
    -----
    ``accumulate(iy, ix)`` returns ``{(jy, jx): (block, layers, table)}``: ``layers`` the
    ``(L, h, w)`` uint32 indices (1-based, 0 for none) into ``table`` of the block's kept
    objects in chunk ``(jy, jx)`` (one layer per tile parity class, see
    :mod:`chunkseg.objects.tile_instances`: 4 bytes per layer and pixel), ``table`` the block's objects (sorted
    ``gid`` uint64, ``prio`` float64, ``size`` int64 pixels, ``oversized`` bool).
    ``fold(jy, jx, pieces)`` returns ``(winners, stats)``: the chunk's ``(h, w)`` uint64 winner
    ids and the O(objects) tables the client merges (see :func:`merge_tables`).
    """

    def __init__(self, reader: BlockReader, model: ResolvedModel | Any, plan: TilePlan,
                 batch_size: int = 8):
        self.reader = reader
        self.model = (model if isinstance(model, ResolvedModel)
                      else resolve_instance_model(model)).model
        self.plan = plan
        self.batch_size = int(batch_size)
        self.schedule = plan.schedule()  # every task's geometry, derived once (and shipped)
        self._origins = plan.tile_origins()
        self._mod = tuple(math.ceil(t / s) for t, s in zip(plan.tile, plan.stride))
        self.layers = self._mod[0] * self._mod[1]
        self._per_tile = plan.tile[0] * plan.tile[1]

    # -- per tile ----------------------------------------------------------------------------
    def clean_tile(self, labels: np.ndarray, ky: int, kx: int):
        """Border cleaning of one tile's instance map (the rule of :mod:`chunkseg.objects.tile_instances`).

        Parameters
        ----------
        labels : (T_y, T_x) integer ndarray
            The model's ids for tile ``(ky, kx)``, non-negative.
        ky, kx : int
            The tile's index in the global grid.

        Returns
        -------
        box : ((int, int), (int, int))
            Image coordinates ``(y0, y1), (x0, x1)`` of the tile clipped to the image.
        gids : (y1 - y0, x1 - x0) ndarray of uint64
            Global id of the kept object at each pixel, 0 elsewhere.
        table : dict of ndarray
            The kept objects: ``gid`` (uint64, ascending), ``prio`` (float64, centrality:
            distance of the centroid to the nearest tile edge), ``size`` (int64) and
            ``oversized`` (bool: touches a tile edge that is not the image border).
        """
        plan = self.plan
        boxes, inner, tbox = [], [], []
        for axis, k in enumerate((ky, kx)):
            t0 = int(self._origins[axis][k])
            t1 = t0 + plan.tile[axis]
            n = plan.image_shape[axis]
            boxes.append((max(t0, 0), min(t1, n)))
            inner.append((t0 > 0, t1 < n))  # an edge inside the image, not its border
            tbox.append((t0, t1))
        (y0, y1), (x0, x1) = boxes
        ty0, tx0 = tbox[0][0], tbox[1][0]
        lab = labels[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0]
        vals, inv = np.unique(lab, return_inverse=True)
        inv = inv.reshape(lab.shape)
        flat = inv.ravel()
        n = len(vals)
        size = np.bincount(flat, minlength=n).astype(np.int64)
        rows = np.broadcast_to(np.arange(y0, y1, dtype=np.float64)[:, None], lab.shape)
        cols = np.broadcast_to(np.arange(x0, x1, dtype=np.float64)[None, :], lab.shape)
        # sums of integer coordinates, exact in float64 (below 2**53), then exact integers
        sums = [np.rint(np.bincount(flat, weights=c.ravel(), minlength=n)).astype(np.int64)
                for c in (rows, cols)]
        keep = vals != 0
        for axis, k in enumerate((ky, kx)):
            s = plan.stride[axis]
            keep &= (sums[axis] >= k * s * size) & (sums[axis] < (k + 1) * s * size)
        touched = np.zeros(n, bool)
        (top, bottom), (left, right) = inner
        for on, edge in ((top, inv[0, :]), (bottom, inv[-1, :]), (left, inv[:, 0]),
                         (right, inv[:, -1])):
            if on:
                touched[edge] = True
        rank = np.cumsum(keep)
        tile_index = ky * plan.grid_shape[1] + kx
        gid_of = np.where(keep, np.uint64(tile_index * self._per_tile) + rank.astype(np.uint64),
                          np.uint64(0))
        centre = [sums[a][keep] / size[keep] for a in range(2)]
        prio = np.minimum.reduce([np.minimum(centre[a] - tbox[a][0], tbox[a][1] - 1 - centre[a])
                                  for a in range(2)]) if keep.any() else np.zeros(0)
        table = {"gid": gid_of[keep], "prio": prio.astype(np.float64), "size": size[keep],
                 "oversized": touched[keep]}
        return ((y0, y1), (x0, x1)), gid_of[inv], table

    def layer(self, ky: int, kx: int) -> int:
        """The layer tile ``(ky, kx)`` is pasted into; tiles of one layer never overlap."""
        return (ky % self._mod[0]) * self._mod[1] + (kx % self._mod[1])

    # -- per block ---------------------------------------------------------------------------
    def accumulate(self, iy: int, ix: int) -> dict:
        """Read block ``(iy, ix)``, run and clean its tiles, paste them; cut the pieces.

        Returns
        -------
        dict
            ``(jy, jx) -> (block index, (L, h, w) uint32 layers, table)`` for every output
            chunk the block reaches (see the class Notes).

        Raises
        ------
        chunkseg.errors.ModelOutputError
            If the model's output for a batch is not integer, has the wrong shape, or holds
            negative ids; names the tiles.
        """
        plan = self.plan
        ys, xs = self.schedule.block_extent(iy, ix)
        block = self.reader(ys, xs)
        # each pixel of a layer holds 1 + the index of its kept object in this block's table
        # (uint32: half the memory of global ids; fold maps them back through the table)
        canvas = mapped_zeros((self.layers, ys[1] - ys[0], xs[1] - xs[0]), np.uint32)
        kept = 0
        (ky0, ky1), (kx0, kx1) = self.schedule.owned_tiles(iy, ix)
        tiles = [(ky, kx) for ky in range(ky0, ky1) for kx in range(kx0, kx1)]
        ty, tx = plan.tile
        tables = []
        for start in range(0, len(tiles), self.batch_size):
            batch_tiles = tiles[start : start + self.batch_size]
            offs = [(int(self._origins[0][ky]) - ys[0], int(self._origins[1][kx]) - xs[0])
                    for ky, kx in batch_tiles]
            batch = np.stack([block[:, oy : oy + ty, ox : ox + tx] for oy, ox in offs]
                             ).astype(np.float32)
            where = (f"in chunk ({iy}, {ix}), tiles {batch_tiles[0]}..{batch_tiles[-1]} (y, x "
                     "of the tile grid)")
            labels = check_labels(self.model(batch), (len(batch_tiles), ty, tx), where)
            for (ky, kx), lab in zip(batch_tiles, labels):
                if lab.dtype.kind == "i" and lab.size and lab.min() < 0:
                    t0y, t0x = int(self._origins[0][ky]), int(self._origins[1][kx])
                    raise ModelOutputError(
                        f"in chunk ({iy}, {ix}), tile ({ky}, {kx}) of the tile grid (image "
                        f"pixels y {t0y}..{t0y + ty}, x {t0x}..{t0x + tx}): the model returned "
                        f"negative instance ids (min {int(lab.min())}); ids must be 0 "
                        "(background) or positive.")
                ((y0, y1), (x0, x1)), gids, table = self.clean_tile(lab, ky, kx)
                dst = canvas[self.layer(ky, kx), y0 - ys[0] : y1 - ys[0], x0 - xs[0] : x1 - xs[0]]
                base = np.uint64((ky * plan.grid_shape[1] + kx) * self._per_tile)
                on = gids != 0  # gid = base + rank, rank 1.. in the order of the tile's table
                np.copyto(dst, (gids - base).astype(np.uint32) + np.uint32(kept), where=on)
                kept += len(table["gid"])
                tables.append(table)
        if kept >= np.iinfo(np.uint32).max:
            raise InvalidValueError(
                f"`tile` and `chunks` must keep fewer than 2**32 objects in one block. Got "
                f"{kept} in block ({iy}, {ix}); use smaller `chunks`.")
        table = concat_tables(tables)
        pieces = {}
        for (jy, jx), (sy, sx) in self.schedule.pieces(iy, ix):
            part = canvas[:, sy, sx]
            if (jy, jx) != (iy, ix):  # kept until a later chunk: a copy, not a view
                part = part.copy()
            pieces[(jy, jx)] = ((iy, ix), part, table)
        return pieces

    # -- per output chunk --------------------------------------------------------------------
    def fold(self, jy: int, jx: int, pieces: Sequence[tuple[tuple[slice, slice], Any]]):
        """Put chunk ``(jy, jx)``'s layers together; winners, intersections, first pixels.

        Returns
        -------
        winners : (h, w) ndarray of uint64
            The id of the covering object of highest priority (ties: higher id), 0 where none.
        stats : dict
            ``objects``: the table of the objects of block ``(jy, jx)`` (each object is
            reported by its own block's chunk only); ``winners``/``first``: the ids that win a
            pixel here and the global raster index ``y * W + x`` of their first such pixel;
            ``pairs`` ``(P, 2)`` uint64 (smaller id first) and ``counts`` int64: pixels here
            covered by both objects of a pair.
        """
        plan = self.plan
        h, w = self.schedule.chunk_shape(jy, jx)
        tables, own = [], None
        for _, (block, _, table) in pieces:
            tables.append(table)
            if tuple(block) == (jy, jx):
                own = table
        table = concat_tables(tables)
        order = np.argsort(table["gid"], kind="stable")
        gid_sorted, prio_sorted = table["gid"][order], table["prio"][order]
        winners = np.zeros((h, w), np.uint64)
        ids_list, first_list, pair_list, count_list = [], [], [], []
        (y0, _), (x0, _) = self.schedule.chunk_bounds(jy, jx)
        # strips of rows, so that the uint64 layers and the per-pixel priorities of only a few
        # MiB exist at once (not 80 bytes a pixel of the whole chunk)
        rows = max(1, FOLD_STRIP_ELEMENTS // (self.layers * w))
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            layers = np.zeros((self.layers, r1 - r0, w), np.uint64)
            for (dy, dx), (_, part, tbl) in pieces:
                a, b, _ = dy.indices(h)
                a0, a1 = max(a, r0), min(b, r1)
                if a0 >= a1:
                    continue
                sub = part[:, a0 - a : a1 - a]
                # table indices (1-based) -> global ids; one tile per layer and pixel
                gids = (np.where(sub != 0, tbl["gid"][sub.astype(np.int64) - 1], np.uint64(0))
                        if len(tbl["gid"]) else np.zeros(sub.shape, np.uint64))
                view = layers[:, a0 - r0 : a1 - r0, dx]
                np.maximum(view, gids.astype(np.uint64, copy=False), out=view)
            best_g, pairs, counts = self._winners(layers, gid_sorted, prio_sorted)
            winners[r0:r1] = best_g
            pair_list += pairs
            count_list += counts
            ids, first = np.unique(best_g.ravel(), return_index=True)
            first, ids = first[ids != 0], ids[ids != 0]
            ids_list.append(ids.astype(np.uint64))
            first_list.append((y0 + r0 + first // w).astype(np.int64) * plan.image_shape[1]
                              + x0 + first % w)
        stats = {
            "objects": own if own is not None else dict(EMPTY_TABLE),
            "winners": (np.concatenate(ids_list) if ids_list else np.zeros(0, np.uint64)),
            "first": (np.concatenate(first_list) if first_list else np.zeros(0, np.int64)),
            "pairs": (np.concatenate(pair_list) if pair_list else np.zeros((0, 2), np.uint64)),
            "counts": (np.concatenate(count_list) if count_list else np.zeros(0, np.int64)),
        }
        return winners, stats

    def _winners(self, layers: np.ndarray, gid_sorted: np.ndarray, prio_sorted: np.ndarray):
        """Per pixel of ``(L, h, w)`` uint64 layers: the winner id (highest priority, ties the
        higher id), and the pairs of ids covering a pixel together with their pixel counts."""
        h, w = layers.shape[1:]
        best_g = np.zeros((h, w), np.uint64)
        best_p = np.full((h, w), -np.inf)
        pair_list, count_list = [], []
        for a in range(self.layers):
            g = layers[a]
            nz = g != 0
            if not nz.any():
                continue
            p = np.full((h, w), -np.inf)
            idx = np.searchsorted(gid_sorted, g[nz])
            if np.any(gid_sorted[np.minimum(idx, len(gid_sorted) - 1)] != g[nz]):
                raise RuntimeError("an object id in a piece is missing from its table")
            p[nz] = prio_sorted[idx]
            better = (p > best_p) | ((p == best_p) & (g > best_g))
            best_g = np.where(better, g, best_g)
            best_p = np.where(better, p, best_p)
            for b in range(a + 1, self.layers):
                both = nz & (layers[b] != 0)
                if both.any():
                    ga, gb = g[both], layers[b][both]
                    pairs = np.stack([np.minimum(ga, gb), np.maximum(ga, gb)], axis=1)
                    uniq, counts = np.unique(pairs, axis=0, return_counts=True)
                    pair_list.append(uniq)
                    count_list.append(counts.astype(np.int64))
        return best_g, pair_list, count_list


def concat_tables(tables: list[dict]) -> dict:
    """The object tables (``gid``, ``prio``, ``size``, ``oversized`` arrays) one after the
    other, with :data:`EMPTY_TABLE`'s dtypes; an empty table for none."""
    if not tables:
        return {k: v.copy() for k, v in EMPTY_TABLE.items()}
    return {k: np.concatenate([t[k] for t in tables]).astype(v.dtype, copy=False)
            for k, v in EMPTY_TABLE.items()}
