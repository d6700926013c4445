"""The per-block work of the engine: reading blocks straight from the input, the tile runner
(accumulate a block's tiles, cut it into pieces, fold a chunk's pieces), the probe of the
model on the first tile and the check that the input is finite where tiles run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InvalidValueError, ModelOutputError, ModelRunError
from ..kernels import blend
from ..kernels.tta import TTAModel, check_tta
from ..models.adapters import TorchAdapter
from ..models.resolve import ResolvedModel, resolve_model
from ..plan import TilePlan, tile_mask
from .threads import SplitBatches, in_flight

__all__ = ["KERNELS", "BlockReader", "TileRunner", "make_runner", "reflect_index"]

KERNELS = ("auto", "torch", "numpy")
"""Per-chunk kernels: ``torch`` on the model's device, ``numpy`` (the reference), ``auto``."""


def reflect_index(start: int, stop: int, length: int) -> np.ndarray:
    """Image indices of coordinates ``start..stop-1`` under ``numpy.pad(mode="reflect")``.

    Coordinates before 0 or from ``length`` on are mirrored about the edge pixel (which is not
    repeated), as often as needed, so any range maps into ``[0, length)``.

    Parameters
    ----------
    start, stop : int
        Half-open range of image coordinates, pixels; may lie partly or wholly outside the image.
    length : int
        Image length along the axis, pixels, at least 1.

    Returns
    -------
    (stop - start,) ndarray of int64
        Indices in ``[0, length)``; equal to ``numpy.pad(numpy.arange(length), ..., "reflect")``
        over the same range (tested).
    """
    idx = np.arange(start, stop, dtype=np.int64)
    if length == 1:
        return np.zeros_like(idx)
    period = 2 * (length - 1)
    idx = np.abs(idx) % period
    return np.where(idx >= length, period - idx, idx)


class BlockReader:
    """Read any region of the reflect-padded image straight from the input, channels-first.

    One task reads its block with one slice of the input (a Zarr array, in-memory array or any
    dask array, computed synchronously inside the task): no padding, rechunking or halo tasks
    in the graph. Regions that reach past the image edges are mirrored in the task.

    Parameters
    ----------
    image : (H, W, C_in) dask array
    direct : callable, optional
        ``direct(y0, y1, x0, x1) -> (y, x, C_in) ndarray`` reading the same image without dask
        (:class:`chunkseg.io.ZarrRegionReader` for Zarr inputs).
    """

    def __init__(self, image: da.Array, direct=None):
        self.image = image
        self.direct = direct

    def __call__(self, ys: tuple[int, int], xs: tuple[int, int]) -> np.ndarray:
        """Pixels ``[ys[0], ys[1]) x [xs[0], xs[1])`` (image coordinates, may pass the edges).

        Returns
        -------
        (C_in, y, x) ndarray of the image's dtype, C-contiguous
        """
        h, w = self.image.shape[:2]
        iy, ix = reflect_index(*ys, h), reflect_index(*xs, w)
        (y0, y1), (x0, x1) = (int(iy.min()), int(iy.max()) + 1), (int(ix.min()), int(ix.max()) + 1)
        if self.direct is not None:
            region = self.direct(y0, y1, x0, x1)
        else:
            region = np.asarray(self.image[y0:y1, x0:x1].compute(scheduler="sync"))
        if y1 - y0 != len(iy) or (iy[0] != y0) or np.any(np.diff(iy) != 1):
            region = region[iy - y0]
        if x1 - x0 != len(ix) or (ix[0] != x0) or np.any(np.diff(ix) != 1):
            region = region[:, ix - x0]
        return np.ascontiguousarray(region.transpose(2, 0, 1))


class TileRunner:
    """The per-block work: reader, model, window and settings, one object in the graph.

    A cluster ships it once per worker (it is a single graph key). ``run_tiles`` (a boolean
    grid over all tiles) and ``predicate`` (a function of the block) skip background tiles and
    chunks; see :func:`predict`'s ``mask``.

    Parameters
    ----------
    reader : BlockReader
    model : ResolvedModel
        Resolved once for the run (:func:`chunkseg.models.resolve.resolve_model`).
    window : (T_y, T_x) ndarray of float32
    plan : TilePlan
    batch_size, classes : int
    kernel : {"auto", "torch", "numpy"}
        ``auto``: the torch kernel for a torch model, else numpy; :attr:`kernel` holds the
        one chosen.
    run_tiles : (n_y, n_x) ndarray of bool, optional
    predicate : callable, optional
    torch_threads : int, optional
        Torch intra-op threads for the torch kernel on the CPU (one per dask thread by default).
    fill_nan : bool, default False
        Fill pixels no tile ran on with NaN logits (with a mask) instead of 0.
    tta : {None, "flips", "d4"}, default None
        Test-time augmentation: each tile's logits averaged over its flipped/rotated copies
        (:class:`chunkseg.kernels.tta.TTAModel`) before the window weights them.
    """

    def __init__(self, reader: BlockReader, model: ResolvedModel, window: np.ndarray,
                 plan: TilePlan, batch_size: int, classes: int, *, kernel: str = "auto",
                 run_tiles: np.ndarray | None = None, predicate=None,
                 torch_threads: int | None = None, fill_nan: bool = False,
                 tta: str | None = None):
        self.reader = reader
        self.resolved = model
        self.window = window
        self.plan = plan
        self.batch_size = batch_size
        self.classes = classes
        self.kernel = model.kernel(kernel)  # "torch" or "numpy"
        self.run_tiles = run_tiles
        self.predicate = predicate
        self.torch_threads = torch_threads
        self.fill_nan = fill_nan
        self.tta = tta
        self.schedule = plan.schedule()  # every task's geometry, derived once (and shipped)

    @property
    def fill_value(self) -> float:
        """Logits where no tile ran: NaN with a mask, else 0 (never reached: every pixel is
        covered)."""
        return np.nan if self.fill_nan else 0.0

    @property
    def model(self):
        """The callable the tiles run through (an adapter, or a LazyModel)."""
        return self.resolved.model

    def torch_model(self) -> TorchAdapter | None:
        """The torch adapter when the torch kernel is used (loaded once per process), else
        None."""
        return self.resolved.torch_adapter() if self.kernel == "torch" else None

    def accumulate(self, iy: int, ix: int) -> dict:
        """Read block ``(iy, ix)``, run its tiles, accumulate; cut it into per-chunk pieces.

        Returns
        -------
        dict
            ``(jy, jx) -> piece``: the block's part that falls in output chunk ``(jy, jx)``,
            ``(K + 1, h, w)`` float32 (ndarray, or a tensor on the model's device). Pieces for
            other chunks are copies, so the block is freed once its own chunk is folded.
        """
        ys, xs = self.schedule.block_extent(iy, ix)
        block = self.reader(ys, xs)
        run = None
        (ky0, ky1), (kx0, kx1) = self.schedule.owned_tiles(iy, ix)
        if self.run_tiles is not None:
            run = self.run_tiles[ky0:ky1, kx0:kx1]
        skip = (self.predicate is not None and not self.predicate(block)) or (
            run is not None and not run.any())
        if not skip:
            _check_finite_input(block, ys, xs, self.plan, run,
                                f"chunk ({iy}, {ix}) (y, x of the chunk grid), ")
        try:
            torch_model = self.torch_model()
            if torch_model is not None:
                return self._accumulate_torch(block, torch_model, run, skip, iy, ix)
            if skip:  # background: the model never sees it
                acc = np.zeros((self.classes + 1,) + block.shape[1:], dtype=np.float32)
            else:
                model = self.model if self.tta is None else TTAModel(self.model, self.tta)
                acc = blend.accumulate_block(block, model, self.window, self.plan.overlap,
                                             batch_size=self.batch_size, classes=self.classes,
                                             run=run)
        except (ModelOutputError, ModelRunError) as err:
            where = (f"in chunk ({iy}, {ix}) (y, x of the chunk grid), tiles {ky0}..{ky1 - 1} "
                     f"(y) x {kx0}..{kx1 - 1} (x) of the tile grid, image pixels y "
                     f"{ys[0]}..{ys[1]}, x {xs[0]}..{xs[1]}: {err}")
            if isinstance(err, ModelOutputError):
                raise ModelOutputError(where) from None
            # the model's own exception stays the cause (its traceback shows where it failed)
            raise ModelRunError(
                f"{where} The chunks written before are marked; fix the model, then finish the "
                "run with resume=True (CLI: --resume)."
            ) from err.__cause__
        return self._pieces(acc, iy, ix)

    def _accumulate_torch(self, block, adapter: TorchAdapter, run, skip, iy: int, ix: int):
        import torch

        from ..kernels.blend_torch import accumulate_block_torch, on_device

        def cut(acc):  # on the device's driving thread
            return self._pieces(acc, iy, ix)

        if skip:
            def zeros():
                return cut(torch.zeros((self.classes + 1,) + block.shape[1:],
                                       dtype=torch.float32, device=adapter.device))

            return on_device(adapter.device, zeros)
        module = adapter.module
        if adapter.device.type == "cpu":
            if self.torch_threads and torch.get_num_threads() != self.torch_threads:
                torch.set_num_threads(self.torch_threads)
            # the cores other blocks leave idle take parts of each batch (engine/threads.py)
            module = SplitBatches(module, torch.get_num_threads())
        module = module if self.tta is None else TTAModel(module, self.tta)
        with in_flight():
            return accumulate_block_torch(
                block, module, self.window, self.plan.overlap, device=adapter.device,
                normalization=adapter.normalization, batch_size=self.batch_size,
                classes=self.classes, run=run, then=cut)

    def _pieces(self, acc, iy: int, ix: int) -> dict:
        pieces = {}
        for (jy, jx), (sy, sx) in self.schedule.pieces(iy, ix):
            piece = acc[:, sy, sx]
            if (jy, jx) != (iy, ix):  # kept until a later chunk: a copy, not a view of acc
                piece = piece.clone() if hasattr(piece, "clone") else piece.copy()
            pieces[(jy, jx)] = piece
        return pieces

    def fold(self, jy: int, jx: int, pieces: Sequence[tuple[tuple[slice, slice], Any]]):
        """Overlap-add of output chunk ``(jy, jx)``: ``(K + 1, h, w)`` ndarray or tensor."""
        shape = (self.classes + 1, *self.schedule.chunk_shape(jy, jx))
        if pieces and hasattr(pieces[0][1], "clone"):
            from ..kernels.blend_torch import fold_pieces_torch

            return fold_pieces_torch(shape, pieces)
        return blend.fold_pieces(shape, pieces)


def _probe_classes(reader: BlockReader, model, plan: TilePlan) -> int:
    """Run the model on the first tile of the image: number of classes, and an early check."""
    (y0, x0), (ty, tx) = (o[0] for o in plan.tile_origins()), plan.tile
    ys, xs = (int(y0), int(y0) + ty), (int(x0), int(x0) + tx)
    tile = reader(ys, xs)
    _check_finite_input(tile, ys, xs, plan, None, "the first tile, ")
    batch = tile[None].astype(np.float32)
    return blend.check_model_output(blend.run_model(model, batch), batch.shape).shape[1]


def _check_finite_input(block: np.ndarray, ys: tuple[int, int], xs: tuple[int, int],
                        plan: TilePlan, run: np.ndarray | None, where: str) -> None:
    """Refuse a float input block holding NaN or infinity where tiles are to run.

    ``block`` is ``(C_in, y, x)``, read at image coordinates ``ys``, ``xs`` (reflect-padded
    past the edges); ``run``, the block's owned tiles to run (all when None): non-finite pixels
    that only skipped tiles cover are allowed (the model never sees them). Integer inputs are
    not checked (always finite); for float ones this costs one ``isfinite`` pass.

    Raises
    ------
    chunkseg.errors.InvalidValueError
        Naming ``where``, the number of non-finite pixels and the first one's image
        coordinates, and the fix.
    """
    if block.dtype.kind != "f" or np.isfinite(block).all():
        return
    bad = ~np.isfinite(block).all(axis=0)
    if run is not None:  # only the pixels of the tiles that run
        covered = np.zeros(bad.shape, bool)
        (ty, tx), (sy, sx) = plan.tile, plan.stride
        for i, j in np.argwhere(run):
            covered[i * sy : i * sy + ty, j * sx : j * sx + tx] = True
        bad &= covered
    n = int(np.count_nonzero(bad))
    if not n:
        return
    by, bx = (int(v) for v in np.argwhere(bad)[0])
    h, w = plan.image_shape
    py = int(reflect_index(ys[0] + by, ys[0] + by + 1, h)[0])
    px = int(reflect_index(xs[0] + bx, xs[0] + bx + 1, w)[0])
    raise InvalidValueError(
        f"`image` must hold finite values where the model runs; in {where}image pixels y "
        f"{ys[0]}..{ys[1]}, x {xs[0]}..{xs[1]} hold {n} pixels with NaN or infinity (the first "
        f"at y {py}, x {px} of the image). Clean the input first (fill NaN, e.g. "
        "numpy.nan_to_num or xarray's fillna, or skip those regions with `mask`), then run "
        "again."
    )


def make_runner(image: da.Array, model: ResolvedModel | Any, plan: TilePlan, window: np.ndarray, *,
                batch_size: int = 8, classes: int | None = None, mask: Any = None,
                kernel: str = "auto", torch_threads: int | None = None,
                direct=None, tta: str | None = None) -> TileRunner:
    """The :class:`TileRunner` of an image, model and plan.

    Parameters
    ----------
    image : (H, W, C_in) dask array
    model : ResolvedModel or callable
        Resolved once for the run (:func:`chunkseg.models.resolve.resolve_model`); anything
        else is resolved here.
    plan : TilePlan
    window : (T_y, T_x) ndarray of float32
    batch_size : int, default 8
    classes : int, optional
        ``K``; when None the model runs once on the first tile here, which also checks its
        output (shape, finite values) before any task exists.
    mask : array_like or callable, optional
        As :func:`predict`'s ``mask``.
    kernel : {"auto", "torch", "numpy"}, default "auto"
    torch_threads : int, optional
        Torch intra-op threads in tasks on the CPU.
    direct : callable, optional
        A reader without dask (see :class:`BlockReader`).
    tta : {None, "flips", "d4"}, default None
        See :func:`predict`.

    Returns
    -------
    TileRunner

    Raises
    ------
    ValueError
        For an unknown ``kernel`` or a bad ``mask``.
    TypeError
        For ``kernel="torch"`` with a model that is not a torch model.
    chunkseg.errors.ModelOutputError
        If the probe's output is wrong.
    """
    if kernel not in KERNELS:
        raise InvalidValueError(f"`kernel` must be one of {KERNELS}. Got {kernel!r}.")
    model = resolve_model(model)
    reader = BlockReader(image, direct)
    if classes is None:
        classes = _probe_classes(reader, model.model, plan)
    run_tiles = predicate = None
    if callable(mask):
        predicate = mask
    elif mask is not None:
        run_tiles = tile_mask(plan, mask)
    return TileRunner(reader, model, window, plan, batch_size, classes, kernel=kernel,
                      run_tiles=run_tiles, predicate=predicate, torch_threads=torch_threads,
                      fill_nan=mask is not None, tta=check_tta(tta, plan.tile))


