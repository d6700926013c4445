"""The Dask graph: direct block reads, per-chunk accumulation, forward-only overlap-add, writes.

The kernels live in :mod:`chunkseg.kernels.blend` (numpy, the reference) and
:mod:`chunkseg.kernels.blend_torch` (torch, on the model's device), the geometry in
:mod:`chunkseg.plan`; this module only wires them into a graph of a few tasks per chunk::

    accumulate (i, j): read the block (chunk's tiles, reflect padding at the image edges)
                       straight from the input, run its tiles, accumulate -> pieces
    piece (i, j -> k, l): the part of block (i, j) that falls in output chunk (k, l)
    fold (k, l): overlap-add of its own piece and the overhang of the blocks before it,
                 normalise -> logits (k, l)   [predict]
                 ... -> logits / probabilities / labels written to Zarr   [predict_to_zarr]

Each tile belongs to the block in which it starts, so every contribution to an output chunk
comes from blocks at or before it in row-major order: the chunk is final as soon as its own
block is done, and only the overhanging pieces (less than a tile wide) wait for the next row.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import json
import operator
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from .. import _ome
from .._check import positive_int
from .._redact import redact_attrs, redact_text, redacting_warnings, secrets_of
from .._version import __version__
from ..errors import (
    InvalidTypeError,
    InvalidValueError,
    ModelOutputError,
    ModelRunError,
    RunInterruptedError,
)
from ..io import open_image
from ..kernels import blend
from ..kernels.tta import TTAModel, check_tta
from ..kernels.windows import get_window, window_name
from ..models.load import (
    LazyModel,
    Normalization,
    TorchAdapter,
    as_model,
    describe_model,
    load_model,
    model_defaults,
)
from ..outputs import _pyramid
from ..outputs._arrays import ArrayWriter, check_aligned, create_array
from ..outputs._lifecycle import writing
from ..outputs._manifest import (
    MANIFEST,
    _fingerprint,
    _open,
    _reopen,
    _so,
    consolidate,
    open_output,
    output_progress,
)
from ..outputs._ownership import require_group
from ..outputs._target import MARKER, describe_location
from ..plan import (
    DEFAULT_CHUNK_TARGET,
    TilePlan,
    fold_sources,
    normalize_pair,
    plan_tiles,
    tile_mask,
)
from .placement import on_every_worker  # issue 20 item 9
from .scheduling import compute, open_client
from .threads import SplitBatches, in_flight  # issue 20 item 8

__all__ = [
    "OUTPUTS",
    "KERNELS",
    "BlockReader",
    "TileRunner",
    "blend_graph",
    "blend_logits",
    "predict",
    "predict_to_zarr",
    "open_output",
    "output_progress",
]

OUTPUTS = ("logits", "probabilities", "labels")
"""Names of the variables :func:`predict` can return."""

GPU_CHUNK = 2048
"""Default chunk, pixels, when the model runs on a CUDA device (measured on an H100, shipped
U-Net at 8192^2: 2048 px chunks 0.43-0.52 s, 1536 px 0.48-0.56 s, 1024 px 0.56-0.64 s for 2 to 16
dask threads)."""

DEFAULT_TILE = 256
"""Tile, pixels, when neither the call nor the model gives one."""

DEFAULT_OVERLAP = 64
"""Overlap, pixels, when neither the call nor the model gives one."""

DEFAULT_WINDOW = "gaussian"
"""Blending window of :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_BATCH_SIZE = 8
"""Tiles per model call in :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_OUTPUTS = ("logits", "labels")
"""Variables :func:`predict` returns and :func:`predict_to_zarr` writes."""

DEFAULT_DTYPE = "float32"
"""dtype of ``logits`` and ``probabilities`` in :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_DEVICE = "cpu"
"""Device of torch and ONNX models in :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_KERNEL = "auto"
"""Per-chunk kernel of :func:`predict` and :func:`predict_to_zarr` (one of :data:`KERNELS`)."""

GPU_READ_AHEAD = 4
"""Blocks read ahead of the GPU in :func:`predict_to_zarr` (its rolling window is this plus 2)."""

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
    model : callable
        From :func:`chunkseg.models.as_model`.
    window : (T_y, T_x) ndarray of float32
    plan : TilePlan
    batch_size, classes : int
    kernel : {"auto", "torch", "numpy"}
        ``auto``: the torch kernel for a torch model, else numpy.
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

    def __init__(self, reader: BlockReader, model, window: np.ndarray, plan: TilePlan,
                 batch_size: int, classes: int, *, kernel: str = "auto",
                 run_tiles: np.ndarray | None = None, predicate=None,
                 torch_threads: int | None = None, fill_nan: bool = False,
                 tta: str | None = None):
        self.reader = reader
        self.model = model
        self.window = window
        self.plan = plan
        self.batch_size = batch_size
        self.classes = classes
        self.kernel = kernel
        self.run_tiles = run_tiles
        self.predicate = predicate
        self.torch_threads = torch_threads
        self.fill_nan = fill_nan
        self.tta = tta
        self._derive()

    def _derive(self) -> None:
        """Geometry every task asks for, computed once (not shipped: rebuilt on unpickling)."""
        self._sources = fold_sources(self.plan)
        self._extents = self.plan.block_extents()
        self._owned = self.plan.owned_tiles()

    @property
    def fill_value(self) -> float:
        """Logits where no tile ran: NaN with a mask, else 0 (never reached: every pixel is
        covered)."""
        return np.nan if self.fill_nan else 0.0

    def torch_model(self) -> TorchAdapter | None:
        """The torch adapter when the torch kernel is to be used, else None."""
        if self.kernel == "numpy":
            return None
        model = load_model(self.model.spec) if isinstance(self.model, LazyModel) else self.model
        if isinstance(model, TorchAdapter):
            return model
        if self.kernel == "torch":
            raise InvalidTypeError(
                f"`kernel` 'torch' needs a torch model (torch.nn.Module, TorchScript file or a "
                f"factory returning a module). Got {type(model).__name__}; use kernel='numpy' "
                "or 'auto'."
            )
        return None

    def block_extent(self, iy: int, ix: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Image coordinates ``(y0, y1), (x0, x1)`` of block ``(iy, ix)``."""
        return self._extents[0][iy], self._extents[1][ix]

    def owned_tiles(self, iy: int, ix: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Tile-grid ranges ``(ky0, ky1), (kx0, kx1)`` that block ``(iy, ix)`` owns."""
        return self._owned[0][iy], self._owned[1][ix]

    def accumulate(self, iy: int, ix: int) -> dict:
        """Read block ``(iy, ix)``, run its tiles, accumulate; cut it into per-chunk pieces.

        Returns
        -------
        dict
            ``(jy, jx) -> piece``: the block's part that falls in output chunk ``(jy, jx)``,
            ``(K + 1, h, w)`` float32 (ndarray, or a tensor on the model's device). Pieces for
            other chunks are copies, so the block is freed once its own chunk is folded.
        """
        ys, xs = self.block_extent(iy, ix)
        block = self.reader(ys, xs)
        run = None
        (ky0, ky1), (kx0, kx1) = self.owned_tiles(iy, ix)
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
            # issue 20 item 8 (hook, engine/threads.py): idle cores take parts of each batch
            module = SplitBatches(module, torch.get_num_threads())
        module = module if self.tta is None else TTAModel(module, self.tta)
        with in_flight():
            return accumulate_block_torch(
                block, module, self.window, self.plan.overlap, device=adapter.device,
                normalization=adapter.normalization, batch_size=self.batch_size,
                classes=self.classes, run=run, then=cut)

    def _pieces(self, acc, iy: int, ix: int) -> dict:
        # per axis, the chunks block (iy, ix) reaches and its part for each
        dests = [[(j, src) for j, sources in enumerate(axis) for i, src, _ in sources if i == b]
                 for axis, b in zip(self._sources, (iy, ix))]
        pieces = {}
        for (jy, sy), (jx, sx) in itertools.product(*dests):
            piece = acc[:, sy, sx]
            if (jy, jx) != (iy, ix):  # kept until a later chunk: a copy, not a view of acc
                piece = piece.clone() if hasattr(piece, "clone") else piece.copy()
            pieces[(jy, jx)] = piece
        return pieces

    def fold(self, jy: int, jx: int, pieces: Sequence[tuple[tuple[slice, slice], Any]]):
        """Overlap-add of output chunk ``(jy, jx)``: ``(K + 1, h, w)`` ndarray or tensor."""
        shape = (self.classes + 1, self.plan.output_chunks()[0][jy],
                 self.plan.output_chunks()[1][jx])
        if pieces and hasattr(pieces[0][1], "clone"):
            from ..kernels.blend_torch import fold_pieces_torch

            return fold_pieces_torch(shape, pieces)
        return blend.fold_pieces(shape, pieces)

    def __getstate__(self):
        state = dict(self.__dict__)
        for derived in ("_sources", "_extents", "_owned"):
            state.pop(derived, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._derive()


def _accumulate_task(runner: TileRunner, iy: int, ix: int, *_gate: Any) -> dict:
    # ``_gate``: a finished chunk's key, only a dependency (see blend_graph's ``lag``)
    return runner.accumulate(iy, ix)


def _logits_task(runner: TileRunner, _context, jy: int, jx: int, dsts, *pieces) -> np.ndarray:
    acc = runner.fold(jy, jx, list(zip(dsts, pieces)))
    if hasattr(acc, "clone"):
        from ..kernels.blend_torch import outputs_torch

        return outputs_torch(acc, ("logits",), np.float32, runner.fill_value)["logits"]
    return blend.normalize_accumulator(acc, np.float32, runner.fill_value)


def blend_graph(runner: TileRunner, finish, *, context: Any = None, lag: int | None = None,
                token: str | None = None, skip=None) -> tuple[dict, str, list]:
    """The task graph of accumulation, pieces and fold, with ``finish`` applied per chunk.

    Parameters
    ----------
    runner : TileRunner
        Put in the graph once, under a single key.
    finish : callable
        ``finish(runner, context, jy, jx, dsts, *pieces)`` -> the chunk's result (the fold
        task).
    context : object, optional
        Passed to ``finish``; one graph key, like the runner.
    lag : int, optional
        Rolling window: block ``p`` (row-major) starts only once chunk ``p - lag`` has been
        finished and block ``p - lag`` cut into its pieces, so at most about ``lag`` blocks
        are alive; None lets them all be ready (best for computing sub-regions lazily).
    token : str, optional
    skip : collection of (int, int), optional
        Output chunks to leave out (finished ones, when resuming): no fold task for them, and
        no block that feeds only them.

    Returns
    -------
    dsk : dict
        Legacy dask graph: the runner key, one accumulate task per block that owns tiles, one
        piece task per (block, destination chunk) and one fold task per output chunk.
    fold_name : str
        Fold keys are ``(fold_name, 0, jy, jx)``.
    fold_keys : list
        In row-major order.
    """
    plan = runner.plan
    token = token or uuid.uuid4().hex
    runner_name = f"chunkseg-runner-{token}"
    acc_name, piece_name = f"chunkseg-accumulate-{token}", f"chunkseg-piece-{token}"
    fold_name = f"chunkseg-fold-{token}"
    src_y, src_x = fold_sources(plan)
    owned = plan.owned_tiles()
    nr, nc = plan.chunk_grid
    context_name = f"chunkseg-context-{token}"
    dsk: dict = {runner_name: runner, context_name: context}
    fold_keys = []
    fold_of: dict = {}
    pieces_of: dict = {}
    skip = set(skip or ())
    for jy in range(nr):
        for jx in range(nc):
            if (jy, jx) in skip:
                continue
            dsts, keys = [], []
            for iy, _, dy in src_y[jy]:
                for ix, _, dx in src_x[jx]:
                    dsts.append((dy, dx))
                    key = (piece_name, iy, ix, jy, jx)
                    dsk[key] = (operator.getitem, (acc_name, iy, ix), (jy, jx))
                    keys.append(key)
                    pieces_of.setdefault((iy, ix), []).append(key)
            fkey = (fold_name, 0, jy, jx)
            dsk[fkey] = (finish, runner_name, context_name, jy, jx, dsts, *keys)
            fold_keys.append(fkey)
            fold_of[(jy, jx)] = fkey
    for iy in range(nr):
        for ix in range(nc):
            if owned[0][iy][0] == owned[0][iy][1] or owned[1][ix][0] == owned[1][ix][1]:
                continue  # owns no tile: no block
            if (iy, ix) not in pieces_of:
                continue  # every chunk it feeds is skipped (finished)
            task = (_accumulate_task, runner_name, iy, ix)
            p = iy * nc + ix
            if lag is not None and p - lag >= 0:
                # chunk p - lag written, and every piece of block p - lag cut (else the block,
                # kept alive by its pieces' dict, waits for the next row's chunks)
                q = divmod(p - lag, nc)
                gate = [fold_of[q]] if q in fold_of else []
                task += (*gate, *pieces_of.get(q, []))
            dsk[(acc_name, iy, ix)] = task
    return dsk, fold_name, fold_keys


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


def make_runner(image: da.Array, model, plan: TilePlan, window: np.ndarray, *,
                batch_size: int = 8, classes: int | None = None, mask: Any = None,
                kernel: str = "auto", torch_threads: int | None = None,
                direct=None, tta: str | None = None) -> TileRunner:
    """The :class:`TileRunner` of an image, model and plan.

    Parameters
    ----------
    image : (H, W, C_in) dask array
    model : callable
        From :func:`chunkseg.models.as_model`.
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
    reader = BlockReader(image, direct)
    if classes is None:
        classes = _probe_classes(reader, model, plan)
    run_tiles = predicate = None
    if callable(mask):
        predicate = mask
    elif mask is not None:
        run_tiles = tile_mask(plan, mask)
    runner = TileRunner(reader, model, window, plan, batch_size, classes, kernel=kernel,
                        run_tiles=run_tiles, predicate=predicate, torch_threads=torch_threads,
                        fill_nan=mask is not None, tta=check_tta(tta, plan.tile))
    runner.torch_model()  # a wrong kernel for the model fails here, not in a task
    return runner


def blend_logits(
    image: da.Array,
    model,
    plan: TilePlan,
    window: np.ndarray,
    *,
    batch_size: int = 8,
    classes: int | None = None,
    mask: Any = None,
    kernel: str = "auto",
) -> da.Array:
    """Blended logits of a ``(y, x, c)`` dask image: the whole pipeline, lazily.

    Parameters
    ----------
    image : (H, W, C_in) dask array
    model : callable
        float32 ``(N, C_in, T_y, T_x)`` -> logits ``(N, K, T_y, T_x)``.
    plan : TilePlan
    window : (T_y, T_x) ndarray of float32
    batch_size : int, default 8
    classes : int, optional
        ``K``; probed on the first tile when None.
    mask : array_like or callable, optional
        Foreground mask (see :func:`predict`). Pixels no tile ran on get NaN logits.
    kernel : {"auto", "torch", "numpy"}, default "auto"

    Returns
    -------
    (K, H, W) dask array of float32
        Chunks ``((K,), *plan.output_chunks())``.
    """
    runner = make_runner(image, model, plan, window, batch_size=batch_size, classes=classes,
                         mask=mask, kernel=kernel)
    return _logits_array(runner, image.name)


def _logits_array(runner: TileRunner, name: str) -> da.Array:
    plan = runner.plan
    dsk, fold_name, _ = blend_graph(runner, _logits_task,
                                    token=tokenize(name, plan, uuid.uuid4().hex))
    graph = HighLevelGraph.from_collections(fold_name, dsk, dependencies=[])
    return da.Array(graph, fold_name, chunks=((runner.classes,),) + plan.output_chunks(),
                    dtype=np.float32, meta=np.empty((0, 0, 0), dtype=np.float32))


def _normalize_outputs(outputs: str | Sequence[str]) -> tuple[str, ...]:
    items = [o.strip() for o in outputs.split(",")] if isinstance(outputs, str) else list(outputs)
    bad = [o for o in items if o not in OUTPUTS]
    if bad or not items:
        raise InvalidValueError(
            f"`outputs` must be a non-empty subset of {OUTPUTS}. Got {outputs!r}."
        )
    return tuple(dict.fromkeys(items))


def _validate_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float16):
        raise InvalidValueError(f"`dtype` must be float32 or float16. Got {dtype!r}.")
    return dt


def predict(
    image: Any,
    model: Any,
    *,
    tile: int | tuple[int, int] | None = None,
    overlap: int | tuple[int, int] | None = None,
    window: str | np.ndarray = DEFAULT_WINDOW,
    chunks: int | tuple[int, int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
    dtype: str | np.dtype = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    normalization: Normalization | None = None,
    storage_options: dict | None = None,
    array_name: str | None = None,
    mask: Any = None,
    kernel: str = DEFAULT_KERNEL,
    classes: Sequence[str] | None = None,
    tta: str | None = None,
) -> xr.Dataset:
    """Segment an image of any size with a tiled model and seamless blending, lazily.

    A global grid of tiles (``tile``, ``overlap``, stride ``tile - overlap``) is laid over the
    reflect-padded image. Each computation chunk runs the model on the tiles it owns, weights
    each tile's logits by the blending ``window`` and accumulates them with the weights; an
    overlap-add reduction adds the blocks' overhang into the following chunks and the sum is divided
    by the summed weights. The result is the same for any chunking.

    Parameters
    ----------
    image : array_like, str or path
        ``(y, x)`` or ``(y, x, c)``: numpy, dask or xarray array (dims ``y``, ``x``[, ``c``]),
        a Zarr array/group, a Zarr store path or fsspec URL, or a small PNG/JPEG/TIFF file (see
        :func:`chunkseg.io.open_image`).
    model : callable, torch.nn.Module, ModelSpec or str
        Maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits ``(N, K, T_y, T_x)``; see
        :func:`chunkseg.models.as_model`.
    tile : int or (int, int), optional
        Tile size, pixels. Default: the model's (a bioimage.io package's valid size), else 256.
    overlap : int or (int, int), optional
        Overlap between tiles, pixels, ``0 <= overlap < tile``. Default: the model's (twice a
        bioimage.io package's halo), else 64.
    window : str or (T_y, T_x) array, default "gaussian"
        Blending window: ``"uniform"``, ``"linear"``, ``"gaussian"``, ``"cosine"`` or weights.
    chunks : int or (int, int), optional
        Computation and output chunk, pixels, any size (at least the tile is best: 1024, 2048
        or the input's chunks); default 1536 px, 2048 px with a CUDA ``device``
        (:data:`GPU_CHUNK`; see :func:`chunkseg.plan.plan_tiles`).
    batch_size : int, default 8
        Tiles per model call.
    outputs : str or sequence of str, default ("logits", "labels")
        Any of ``"logits"``, ``"probabilities"``, ``"labels"`` (or a comma-separated string).
    dtype : {"float32", "float16"}, default "float32"
        dtype of ``logits`` and ``probabilities``.
    device : str, default "cpu"
        Device for torch and ONNX models (``"cuda"``, ``"cuda:1"``...). With a torch model the
        whole per-chunk pipeline runs there (see ``kernel``).
    normalization : Normalization, optional
        Input normalisation ``(x * scale - mean) / std`` applied to each batch.
    storage_options : dict, optional
        fsspec options for a URL ``image``.
    array_name : str, optional
        Array to read inside a Zarr group ``image`` (default: ``image``, the NGFF full
        resolution, or the only array).
    mask : (M_y, M_x) array_like or callable, optional
        Skip background so it never reaches the model. An array is a low-resolution foreground
        map covering the image (true or > 0 = foreground, read whole on the client): a tile
        runs only if its extent touches foreground (:func:`chunkseg.plan.tile_mask`). A
        callable ``mask(block) -> bool`` is asked once per chunk, in the task, with the
        chunk's padded input block ``(C_in, B_y, B_x)``; False skips all of the chunk's tiles.
        Fill values where no tile ran: ``logits`` and ``probabilities`` NaN, ``labels`` 0.
    kernel : {"auto", "torch", "numpy"}, default "auto"
        Per-chunk kernel. ``"torch"`` (the default for torch models under ``"auto"``) keeps each
        chunk on the model's device from the raw input block to the outputs
        (:mod:`chunkseg.kernels.blend_torch`); ``"numpy"`` (the reference, and the kernel for ONNX
        models and plain callables) runs the model on numpy batches and blends on the CPU.
    classes : sequence of str, optional
        One name per class (``K`` of them), the ``class`` coordinate. Default: the model's
        (the shipped U-Net's ``("cell", "membrane")``, a bioimage.io package's output channel
        names), else ``"0"``, ``"1"``...
    tta : {None, "flips", "d4"}, default None
        Test-time augmentation (:mod:`chunkseg.kernels.tta`): each tile's logits are the mean of the
        model's logits on its 4 mirrored (``"flips"``) or 8 rotated/mirrored (``"d4"``, square
        tiles only) copies, mapped back, before the window weights them. The model runs 4 or 8
        times per tile; the output stays independent of the chunking.

    Returns
    -------
    xarray.Dataset
        Dask-backed, nothing computed yet. ``logits`` and ``probabilities``: dims
        ``("class", "y", "x")``, ``dtype``; ``labels``: dims ``("y", "x")``, the smallest unsigned
        integer holding ``K``. Chunks equal the computation chunks. Coordinates: ``class`` (the
        class names, str), and ``y``/``x`` where the input has them (pixel centres in its
        units, with ``attrs["units"]``: an xarray input's own coordinates, an OME-NGFF input's
        ``scale``/``translation``, a TIFF's resolution tags), plus an xarray input's scalar
        coordinates (rioxarray's ``spatial_ref``). ``attrs`` record the plan, window, model,
        class names and chunkseg version. The coordinates' attrs and ``attrs`` are JSON values
        without credentials (:func:`chunkseg._redact.redact_attrs`: credential-named attrs
        become ``"***"``, URLs lose their user name, password and query).

    Raises
    ------
    ValueError, TypeError
        For bad arguments (wrong image dimensionality, ``overlap >= tile``, unknown window,
        outputs or kernel...).
    chunkseg.errors.ModelOutputError
        If the model's output on the first tile has the wrong shape or is not finite (checked
        here, before anything is computed), or later on any other tile.

    Notes
    -----
    Memory per task is about ``plan.memory_per_task()`` plus the model's activations; nothing
    image-sized is ever held. The blending (sum of windowed logits over the sum of windows) is
    that of MONAI's ``sliding_window_inference``; MONAI differs in tile placement (its tiles
    start at 0, and it pads only images smaller than a tile) and clamps its gaussian weights
    below at 1e-3 (see ``benchmarks/vs_monai.py``).
    """
    cores = os.cpu_count() or 1
    setup = _setup(image, model, tile=tile, overlap=overlap, window=window, chunks=chunks,
                   batch_size=batch_size, outputs=outputs, dtype=dtype, device=device,
                   normalization=normalization, storage_options=storage_options,
                   array_name=array_name, mask=mask, kernel=kernel, classes=classes,
                   tta=tta, torch_threads=max(1, cores // _threads(None)))
    runner, outputs_, dtype_ = setup.runner, setup.outputs, setup.dtype
    classes = runner.classes
    logits = _logits_array(runner, setup.image.name)
    data_vars = {}
    if "logits" in outputs_:
        # float16: clamped to +-65504 (a Float16OverflowWarning, once), never infinite
        data_vars["logits"] = (("class", "y", "x"), logits.map_blocks(
            blend.LogitsCast(dtype_), dtype=dtype_, meta=np.empty((0, 0, 0), dtype_)))
    if "probabilities" in outputs_:
        probs = logits.map_blocks(blend.probabilities_from_logits, dtype_, dtype=dtype_,
                                  meta=np.empty((0, 0, 0), dtype_))
        data_vars["probabilities"] = (("class", "y", "x"), probs)
    if "labels" in outputs_:
        ldt = blend.labels_dtype(classes)
        labels = logits.map_blocks(blend.labels_from_logits, drop_axis=0, dtype=ldt,
                                   meta=np.empty((0, 0), ldt))
        data_vars["labels"] = (("y", "x"), labels)
    coords = {"class": ("class", np.asarray(setup.class_names, dtype=object)),
              **setup.coords}
    return xr.Dataset(data_vars, coords=coords, attrs=setup.attrs)


def _class_names(classes, k: int, defaults: Sequence[str] | None) -> tuple[str, ...]:
    """The ``K`` class names: ``classes``, else the model's, else ``"0"``, ``"1"``..."""
    if classes is None:
        if defaults is not None and len(defaults) == k:
            return tuple(str(n) for n in defaults)
        return tuple(str(i) for i in range(k))
    if isinstance(classes, str) or not isinstance(classes, Sequence):
        raise InvalidTypeError(
            f"`classes` must be a sequence of str, one name per class. Got {classes!r}; use e.g. "
            f"classes={[f'class{i}' for i in range(k)]!r} (CLI: --classes a,b).")
    names = tuple(classes)
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise InvalidTypeError(
            f"`classes` must hold non-empty str names. Got {classes!r}; name every class.")
    if len(names) != k or len(set(names)) != k:
        raise InvalidValueError(
            f"`classes` must hold {k} distinct names, one per class of the model's output (it "
            f"has {k} classes). Got {len(names)} names {list(names)!r}; give {k} distinct names.")
    return names


@dataclass(frozen=True, slots=True)
class RunSetup:
    """A run's validated settings, what :func:`_setup` returns to :func:`predict` and
    :func:`predict_to_zarr` (and :func:`chunkseg.outputs._manifest._fingerprint` reads).

    Attributes
    ----------
    image : dask.array.Array
        The input as read, ``(y, x, c)``.
    runner : TileRunner
        Runs the model over the plan's tiles and blends them (its ``plan``, ``classes``).
    outputs : tuple of str
        The requested variables, a subset of :data:`OUTPUTS`, in order, without repeats.
    dtype : numpy.dtype
        dtype of ``logits`` and ``probabilities`` (float32 or float16).
    attrs : dict
        The output's attrs (plan, window, model, class names, chunkseg version...), JSON
        values without credentials. A dict: :func:`predict_to_zarr` adds its own keys.
    class_names : tuple of str
        One name per class, the ``class`` coordinate.
    coords : dict of str -> xarray.Variable
        The input's ``y``/``x`` and scalar coordinates, attrs without credentials.
    input_attrs : dict
        The opened input's attrs (its source, pixel size...), for the input's identity.
    """

    image: da.Array
    runner: TileRunner
    outputs: tuple[str, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    class_names: tuple[str, ...]
    coords: dict[str, xr.Variable]
    input_attrs: dict[str, Any]


def _setup(image: Any, model: Any, *, tile: int | tuple[int, int] | None,
           overlap: int | tuple[int, int] | None, window: str | np.ndarray,
           chunks: int | tuple[int, int] | None, batch_size: int, outputs: str | Sequence[str],
           dtype: str | np.dtype, device: str, normalization: Normalization | None,
           storage_options: dict | None, array_name: str | None, mask: Any, kernel: str,
           classes: Sequence[str] | None, tta: str | None,
           torch_threads: int | None) -> RunSetup:
    """Validate :func:`predict`'s arguments and build the runner and the output attrs."""
    outputs_ = _normalize_outputs(outputs)
    dtype_ = _validate_dtype(dtype)
    batch_size = positive_int(batch_size, "batch_size", "Tiles per model call: e.g. 8.")
    arr = open_image(image, storage_options=storage_options, array_name=array_name)
    if chunks is None and str(device).startswith("cuda"):
        chunks = GPU_CHUNK
    defaults = model_defaults(model)  # a bioimage.io package's tile, overlap, class names
    tile = defaults.get("tile", DEFAULT_TILE) if tile is None else tile
    overlap = defaults.get("overlap", DEFAULT_OVERLAP) if overlap is None else overlap
    plan = plan_tiles(arr.shape, tile, overlap, chunks)
    weights = get_window(window, plan.tile, plan.overlap)
    tta = check_tta(tta, plan.tile)
    predictor = as_model(model, device=device, normalization=normalization)
    runner = make_runner(arr.data, predictor, plan, weights, batch_size=int(batch_size),
                         mask=mask, kernel=kernel, torch_threads=torch_threads,
                         direct=arr.encoding.get("chunkseg_reader"), tta=tta)
    class_names = _class_names(classes, runner.classes, defaults.get("class_names"))
    # the input's coordinate attrs are copied into the output: without credentials
    secrets = secrets_of(storage_options)
    coords = {name: c.variable.copy(deep=False) for name, c in arr.coords.items()
              if name in ("y", "x") or (c.ndim == 0 and name not in ("c", "class"))}
    for var in coords.values():
        var.attrs = redact_attrs(var.attrs, secrets)
    classes = runner.classes
    attrs = {
        MARKER: __version__,
        "tile": list(plan.tile),
        "overlap": list(plan.overlap),
        "stride": list(plan.stride),
        "chunks": list(plan.chunks),
        "window": window_name(window),
        "tta": tta or "none",
        "padding": "reflect",
        "blend": "overlap-add of window-weighted logits, divided by the summed window",
        "classes": int(classes),
        "batch_size": int(batch_size),
        "model": describe_model(predictor),
        "kernel": "torch" if runner.torch_model() is not None else "numpy",
        "mask": "none" if mask is None else ("predicate" if callable(mask) else "array"),
        "source": str(arr.attrs.get("source", "array")),
        "class_names": list(class_names),
    }
    attrs = redact_attrs(attrs, secrets)
    return RunSetup(image=arr.data, runner=runner, outputs=outputs_, dtype=dtype_, attrs=attrs,
                    class_names=class_names, coords=coords, input_attrs=dict(arr.attrs))


class ChunkWriter:
    """Writes one output chunk's variables into their Zarr arrays: one task, whole chunks.

    Parameters
    ----------
    targets : dict of str -> zarr.Array
        ``logits``/``probabilities`` ``(K, H, W)``, ``labels`` ``(H, W)``, chunked as the plan.
    plan : TilePlan
    dtype : numpy dtype
        Of ``logits`` and ``probabilities``; float16 logits are clamped to +-65504 (a
        :class:`~chunkseg.errors.Float16OverflowWarning` once per run, from the first chunk
        that had any: :class:`chunkseg.kernels.blend.LogitsCast`).
    done : zarr.Array, optional
        The completion manifest, ``(n_y, n_x)`` uint8, one Zarr chunk per element: set to 1
        once all of a chunk's variables are written.
    location : str, optional
        The output store, for messages (:func:`chunkseg.outputs._target.describe_location`: no
        credentials).

    Raises
    ------
    chunkseg.errors.OutputWriteError
        When a write fails with an ``OSError`` (disk full, no permission, the object store
        refused): names the chunk, the variable, the store and the fix; the chunk stays
        unmarked.
    """

    def __init__(self, targets: dict, plan: TilePlan, dtype: np.dtype, done=None,
                 location: str | None = None):
        self.targets = targets
        self.plan = plan
        self.dtype = np.dtype(dtype)
        self.done = done
        self._cast = blend.LogitsCast(self.dtype)  # warns once per run (per worker process)
        self.location = location
        where = location or "the output store"
        # one writer for every write: an OSError becomes an OutputWriteError naming the chunk
        self._writers = {name: ArrayWriter(array, where, name) for name, array in targets.items()}
        if done is not None:
            self._writers[MANIFEST] = ArrayWriter(done, where, f"{MANIFEST}/done")

    def __call__(self, runner: TileRunner, jy: int, jx: int, acc) -> int:
        names = tuple(self.targets)
        what = f"output chunk ({jy}, {jx}) (y, x of the chunk grid)"
        if hasattr(acc, "clone"):
            from ..kernels.blend_torch import outputs_torch

            clamped: list = []
            outs = outputs_torch(acc, names, self.dtype, runner.fill_value, clamped=clamped)
            self._cast.clamped(sum(clamped), what)
        else:
            logits = blend.normalize_accumulator(acc, np.float32, runner.fill_value)
            outs = {}
            if "logits" in names:
                outs["logits"] = self._cast(logits, what)
            if "probabilities" in names:
                outs["probabilities"] = blend.probabilities_from_logits(logits, self.dtype)
            if "labels" in names:
                outs["labels"] = blend.labels_from_logits(logits)
        (c_y, c_x) = self.plan.chunks
        h, w = outs[names[0]].shape[-2:]
        region = (slice(jy * c_y, jy * c_y + h), slice(jx * c_x, jx * c_x + w))
        for name, data in outs.items():
            self._writers[name].write((slice(None),) * (data.ndim - 2) + region, data, what)
        if self.done is not None:  # after every variable of the chunk is written
            self._writers[MANIFEST].write((slice(jy, jy + 1), slice(jx, jx + 1)),
                                          np.ones((1, 1), np.uint8), what)
        return 1


def _write_task(runner: TileRunner, writer: ChunkWriter, jy: int, jx: int, dsts, *pieces) -> int:
    return writer(runner, jy, jx, runner.fold(jy, jx, list(zip(dsts, pieces))))


def _count(done: list) -> int:
    return int(sum(done))


def _threads(client) -> int:
    if client is not None:
        return max(1, int(sum(client.nthreads().values())))
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def _gpu_resources(client, device: str) -> dict | None:
    """What each block and chunk task asks of a worker when the model runs on CUDA.

    ``{"GPU": 1 / GPU_READ_AHEAD}`` when a worker of the cluster declares a ``GPU`` resource
    (``dask worker --resources GPU=1``), else None: the tasks go only to GPU workers, and a
    worker with one GPU runs up to ``GPU_READ_AHEAD`` of them at once, so that its threads read
    and write while its driving thread keeps the GPU busy.
    """
    if client is None or not str(device).startswith("cuda"):
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    if any("GPU" in (w.get("resources") or {}) for w in workers):
        return {"GPU": 1 / GPU_READ_AHEAD}
    return None


def predict_to_zarr(
    image: Any,
    model: Any,
    store: Any,
    *,
    tile: int | tuple[int, int] | None = None,
    overlap: int | tuple[int, int] | None = None,
    window: str | np.ndarray = DEFAULT_WINDOW,
    chunks: int | tuple[int, int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
    dtype: str | np.dtype = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    normalization: Normalization | None = None,
    array_name: str | None = None,
    mask: Any = None,
    kernel: str = DEFAULT_KERNEL,
    classes: Sequence[str] | None = None,
    tta: str | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
    compression_level: int = 1,
    resume: bool = False,
    shards: int | tuple[int, int] | None = None,
    ome: bool = False,
    levels: int | None = None,
) -> xr.Dataset:
    """Run :func:`predict` and write its outputs to a Zarr v3 group, each chunk written once.

    Parameters
    ----------
    image : array_like, str or path
        ``(y, x)`` or ``(y, x, c)``: numpy, dask or xarray array, a Zarr array/group, a Zarr
        store path or fsspec URL, or a small PNG/JPEG/TIFF file (as :func:`predict`).
    model : callable, torch.nn.Module, ModelSpec or str
        Maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits ``(N, K, T_y, T_x)``; see
        :func:`chunkseg.models.as_model`.
    store : str, os.PathLike or zarr store
        Output group: a local path, an fsspec URL (``s3://bucket/out.zarr``) or a zarr store.
    tile : int or (int, int), optional
        Tile size, pixels. Default: the model's (a bioimage.io package's valid size), else 256
        (:data:`DEFAULT_TILE`).
    overlap : int or (int, int), optional
        Overlap between tiles, pixels, ``0 <= overlap < tile``. Default: the model's (twice a
        bioimage.io package's halo), else 64 (:data:`DEFAULT_OVERLAP`).
    window : str or (T_y, T_x) array, default "gaussian"
        Blending window: ``"uniform"``, ``"linear"``, ``"gaussian"``, ``"cosine"`` or weights.
    chunks : int or (int, int), optional
        Computation and output chunk, pixels (with ``shards``, the inner Zarr chunk of each
        shard); default 1536 px, 2048 px with a CUDA ``device`` (:data:`GPU_CHUNK`).
    batch_size : int, default 8
        Tiles per model call, a positive int (``True`` is refused).
    outputs : str or sequence of str, default ("logits", "labels")
        Variables to write: any of ``"logits"``, ``"probabilities"``, ``"labels"`` (or a
        comma-separated string).
    dtype : {"float32", "float16"}, default "float32"
        dtype of ``logits`` and ``probabilities``.
    device : str, default "cpu"
        Device for torch and ONNX models (``"cuda"``, ``"cuda:1"``...). With a torch model the
        whole per-chunk pipeline runs there (see ``kernel``).
    normalization : Normalization, optional
        Input normalisation ``(x * scale - mean) / std`` applied to each batch.
    array_name : str, optional
        Array to read inside a Zarr group ``image`` (default: ``image``, the NGFF full
        resolution, or the only array).
    mask : (M_y, M_x) array_like or callable, optional
        Skip background so it never reaches the model: a low-resolution foreground map, or a
        predicate ``mask(block) -> bool`` asked once per chunk (as :func:`predict`). Fill
        values where no tile ran: ``logits`` and ``probabilities`` NaN, ``labels`` 0.
    kernel : {"auto", "torch", "numpy"}, default "auto"
        Per-chunk kernel: ``"torch"`` (the default for torch models under ``"auto"``) keeps each
        chunk on the model's device from the raw input block to the written outputs;
        ``"numpy"`` (the reference, and the kernel for ONNX models and plain callables) blends
        on the CPU.
    classes : sequence of str, optional
        One name per class (``K`` of them), the ``class`` coordinate. Default: the model's,
        else ``"0"``, ``"1"``...
    tta : {None, "flips", "d4"}, default None
        Test-time augmentation (:mod:`chunkseg.kernels.tta`): each tile's logits are the mean of the
        model's logits on its 4 mirrored (``"flips"``) or 8 rotated/mirrored (``"d4"``, square
        tiles only) copies, mapped back, before the window weights them. The model runs 4 or 8
        times per tile; the output stays independent of the chunking.
    overwrite : bool, default False
        Replace a previous chunkseg output at ``store``. Without it, a store that already holds
        data is refused before anything is computed or written; even with it, a folder that is
        not a Zarr store, a Zarr store chunkseg did not write, or one holding other files is
        refused, never deleted (see ``chunkseg.outputs._target.check_output_target``).
    storage_options : dict, optional
        fsspec options for URL inputs and outputs.
    scheduler : str or distributed.Client, optional
        See :func:`chunkseg.engine.scheduling.open_client`; default: dask's threaded scheduler.
    workers : int, optional
        Start a LocalCluster of this many worker processes.
    progress : bool, default False
        Show a progress bar.
    compression_level : int, default 1
        Compression level of every array: zstd for ``labels`` and ``probabilities``, Blosc
        lz4 with byte shuffle for ``logits``. Level 1 wrote 12 % faster than level 3 for the
        same output size within 3 % (``python benchmarks/tuning.py``, 8192^2, labels + float16
        probabilities). Float32 logits hardly compress (zstd: 0.88 of their size, Blosc lz4 with
        shuffle: 0.85) and Blosc wrote them twice as fast (21 against 45 ms for a 1536^2 chunk
        of 2 classes on this 2-core machine); float16 probabilities compress to 0.13 with zstd
        against 0.25 with Blosc lz4, in the same time.
    resume : bool, default False
        Finish an interrupted run at ``store``: its settings must be the same (checked against
        the ``fingerprint`` attribute: input, model, tile, overlap, window, chunks, outputs,
        dtype, classes, mask, kernel); the chunks marked finished in its manifest are neither
        recomputed nor rewritten, the others are computed with the blocks they need. The
        result is bit-identical to an uninterrupted run.
    shards : int or (int, int), optional
        Write every array with Zarr v3 sharding: one stored object per shard of ``shards``
        pixels ``(y, x)`` (the class axis is never split), holding the inner Zarr chunks of
        ``chunks`` pixels; a 40000^2 run then writes a few hundred objects instead of thousands
        (``python benchmarks/shards.py``). The shard is the computation chunk too (one task
        computes and writes each shard, whole, once; the manifest has one element per shard),
        so it must be a multiple of ``chunks`` along each axis (``chunks`` defaults to 1536 px,
        2048 px with a CUDA ``device``); otherwise an
        :class:`~chunkseg.errors.InvalidValueError` is raised before anything is written.
        Default: no sharding, one object per chunk. Readers (``xarray.open_zarr``, zarr-python
        >= 3) read sharded arrays like any other.
    ome : bool, default False
        Write the OME-Zarr 0.5 layout (:mod:`chunkseg._ome`): the group is also an NGFF image
        of the probabilities (else the logits) with a pyramid, ``axes`` ``class, y, x`` (with
        the input's units) and ``scale``/``translation`` from the input's pixel size, and the
        class labels are an NGFF label image ``labels/classes`` (a colour and the name of
        each class), so OME-Zarr viewers (napari with napari-ome-zarr, ome-zarr-py, vizarr)
        open it. ``xarray.open_zarr(store)`` still opens the full-resolution image variables,
        ``xarray.open_zarr(store, group="1")`` level 1; :func:`open_output` adds the labels.
        Needs ome-zarr-py (``pip install 'chunkseg[ome]'``).
    levels : int, optional
        With ``ome``: pyramid levels, full resolution included. Default: halve until the larger
        side is at most 512 px. Levels are computed out of core after every chunk is written,
        each from the one before it as stored (mean of 2 x 2 for probabilities and logits,
        mode for labels; :mod:`chunkseg.outputs._pyramid`), one task per chunk.

    Returns
    -------
    xarray.Dataset
        The written group, opened with ``xarray.open_zarr`` (dask-backed).

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If ``store`` holds data and ``overwrite`` is False; with ``overwrite``, if it holds
        anything but a Zarr store chunkseg wrote (``attrs["chunkseg_version"]``).
    chunkseg.errors.OutputOverlapError
        If ``store`` is, contains or lies inside a path/URL ``image``.
    ValueError, TypeError, chunkseg.errors.ModelOutputError
        As :func:`predict`, all before anything is written.

    Notes
    -----
    One task per output chunk folds it, computes every requested variable (on the model's
    device with the torch kernel) and writes each variable's chunk, whole, once. Blocks are
    accumulated in row-major order through a rolling window of ``threads + 2`` blocks
    (``min(threads, 4) + 2`` on a GPU, :data:`GPU_READ_AHEAD`), so
    memory holds a few blocks plus one row of overhanging pieces (less than a tile high):
    it grows with the image's width by ``4 (K + 1) T W`` bytes at most, not with its area.
    On a ``dask.distributed`` cluster whose workers declare ``resources={"GPU": 1}`` and a
    CUDA ``device``, the block and chunk tasks ask for a quarter of a GPU each (they run only
    on GPU workers, up to four at once per GPU); run one worker process per GPU.
    Completion: the group's ``attrs["complete"]`` is False until every chunk is written, and
    the array ``chunkseg/done`` (a subgroup xarray does not list) marks each finished chunk;
    :func:`open_output` warns on an incomplete output, ``chunkseg info`` prints its progress.
    Arrays: ``logits``/``probabilities`` ``(class, y, x)`` chunked ``(K, C_y, C_x)``,
    ``labels`` ``(y, x)`` chunked ``(C_y, C_x)``, zstd-compressed, ``dimension_names`` set;
    with ``shards``, sharded ``(K, S_y, S_x)`` / ``(S_y, S_x)`` around those chunks, and the
    group's attrs record ``shards`` and ``zarr_chunks`` (``chunks`` is then the shard).
    """
    import zarr

    if not isinstance(ome, bool):
        raise InvalidTypeError(f"`ome` must be True or False. Got {ome!r}.")
    if levels is not None and (not ome or not isinstance(levels, (int, np.integer))
                               or isinstance(levels, bool) or levels < 1):
        raise InvalidValueError(
            f"`levels` must be a positive int (pyramid levels, full resolution included) and "
            f"needs `ome=True`. Got levels={levels!r} with ome={ome!r}; pass ome=True (CLI: "
            "--ome) and levels >= 1, or drop `levels`.")
    _check_compression_level(compression_level, _normalize_outputs(outputs))
    if ome:
        _ome._ome()  # ome-zarr-py is needed: say so before anything is written
    inner = None  # the inner Zarr chunks of a sharded output
    if shards is not None:
        chunks, inner = _shard_layout(shards, chunks, device)
    so = _so(store, storage_options)
    with writing(store, source=image, overwrite=overwrite, resume=resume, storage_options=so,
                 what="chunkseg predict") as target:
        # connect to the cluster before anything is written: a wrong address leaves no output;
        # the warnings of the run (the model's probe, the stores', the chunk tasks') are redacted
        with redacting_warnings(secrets_of(storage_options)), \
                open_client(scheduler, workers) as client:
            threads = _threads(client)
            cores = os.cpu_count() or 1
            local = client is None or workers is not None
            setup = _setup(image, model, tile=tile, overlap=overlap, window=window, chunks=chunks,
                           batch_size=batch_size, outputs=outputs, dtype=dtype, device=device,
                           normalization=normalization,
                           storage_options=_so(image, storage_options), array_name=array_name,
                           mask=mask, kernel=kernel, classes=classes, tta=tta,
                           torch_threads=max(1, cores // threads) if local else None)
            runner, ds_attrs = setup.runner, setup.attrs
            plan, dtype_ = runner.plan, setup.dtype
            if inner is not None:  # the computation chunks (ds_attrs["chunks"]) are the shards
                ds_attrs.update(shards=list(plan.chunks), zarr_chunks=list(inner))
            level_shapes = _pyramid.level_shapes(plan.image_shape, levels) if ome else []
            if ome:
                ds_attrs.update(layout=_ome.LAYOUT, levels=len(level_shapes))
            fingerprint = _fingerprint(ds_attrs, plan, outputs=setup.outputs, dtype=setup.dtype,
                                       image=setup.image, input_attrs=setup.input_attrs)
            if target.resume:
                group, targets, done, finished = _reopen(target.store, so, fingerprint,
                                                         setup.outputs, ome)
            else:
                group = zarr.open_group(target.store, mode="w", storage_options=so,
                                        attributes={**ds_attrs, "fingerprint": fingerprint,
                                                    "complete": False})
                targets = {}
                k = runner.classes
                if ome and "labels" in setup.outputs:
                    require_group(group, "labels/classes")
                for name in setup.outputs:
                    if name == "labels":
                        shape, chunks, dt, dims = plan.image_shape, plan.chunks, \
                            blend.labels_dtype(k), ("y", "x")
                    else:
                        shape, chunks, dt, dims = (k,) + plan.image_shape, (k,) + plan.chunks, \
                            dtype_, ("class", "y", "x")
                    # each write task owns whole Zarr chunks, or whole shards when sharded
                    check_aligned(name, plan.output_chunks(), chunks[-2:])
                    shard_shape = None
                    if inner is not None:
                        shard_shape, chunks = chunks, chunks[:-2] + inner
                    targets[name] = create_array(
                        group, name=_ome.var_path(name) if ome else name, shape=shape,
                        chunks=chunks, dtype=dt, compressor=_compressor(name, compression_level),
                        dimension_names=dims, attributes=_var_attrs(name, k, setup.coords),
                        write_empty_chunks=True, shards=shard_shape)
                _write_coords(group, setup.coords, setup.class_names)
                if ome:
                    _create_levels(group, targets, level_shapes, plan, setup, compression_level)
                # one element (and one Zarr chunk) per output chunk, set by the task that wrote it:
                # concurrent tasks never write the same object
                done = create_array(
                    require_group(group, MANIFEST), name="done", shape=plan.chunk_grid, chunks=(1, 1),
                    dtype="uint8", compressor=_compressor("done", compression_level),
                    dimension_names=("chunk_y", "chunk_x"),
                    attributes={"meaning": "1 where every variable of that output chunk is written"})
                finished = set()
            writer = ChunkWriter(targets, plan, dtype_, done=done,
                                 location=describe_location(store))
            token = tokenize(setup.image.name, plan, uuid.uuid4().hex)
            gpu = str(device).startswith("cuda") and runner.torch_model() is not None
            # on a GPU a few blocks read ahead keep it busy; more only compete with it for the GIL
            lag = (min(threads, GPU_READ_AHEAD) if gpu else threads) + 2
            dsk, _, fold_keys = blend_graph(runner, _write_task, context=writer, lag=lag,
                                            token=token, skip=finished)
            resources = _gpu_resources(client, device)
            done_key = f"chunkseg-done-{token}"
            dsk[done_key] = (_count, list(fold_keys))
            graph = _graph(done_key, dsk, resources)
            try:
                # issue 20 item 9 (hook, engine/placement.py): runner and writer on every worker
                with _restore_torch_threads(), on_every_worker(client, dsk):
                    written = compute(Delayed(done_key, graph), scheduler=scheduler if client is None
                                      else client, progress=progress,
                                      secrets=secrets_of(storage_options))[0]
            except (asyncio.CancelledError, concurrent.futures.CancelledError) as err:
                # e.g. distributed's FutureCancelledError when the scheduler is lost
                done_now = output_progress(target.store, storage_options=so)[0]
                reason = redact_text(" ".join(str(err).split()), secrets_of(storage_options))
                raise RunInterruptedError(
                    f"the run was interrupted before it finished ({reason}). {done_now} of "
                    f"{plan.n_chunks} chunks are written and marked in {describe_location(store)!r}; "
                    "finish it with resume=True (CLI: --resume)."
                ) from None
            if written + len(finished) != plan.n_chunks:
                raise RuntimeError(f"wrote {written + len(finished)} of {plan.n_chunks} chunks.")
            if ome:  # every chunk is written: the pyramid, level by level, each from the one before
                _write_levels(group, setup.outputs, len(level_shapes), store,
                              scheduler if client is None else client, progress)
            group.attrs["complete"] = True  # last: the output is whole
        consolidate(group)
    return _open(store, so, consolidated=True)


@contextlib.contextmanager
def _restore_torch_threads():
    """Torch's intra-op thread count as it was, after tasks set one per dask thread."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _graph(key: str, dsk: dict, resources: dict | None) -> HighLevelGraph:
    """One-layer graph; with ``resources``, the block and chunk tasks ask for them."""
    from dask.highlevelgraph import MaterializedLayer

    if not resources:
        return HighLevelGraph.from_collections(key, dsk, dependencies=[])
    heavy = {k: v for k, v in dsk.items() if isinstance(k, tuple)
             and str(k[0]).startswith(("chunkseg-accumulate", "chunkseg-fold"))}
    light = {k: v for k, v in dsk.items() if k not in heavy}
    layers = {key: MaterializedLayer(light),
              f"{key}-gpu": MaterializedLayer(heavy, annotations={"resources": resources})}
    return HighLevelGraph(layers, {key: {f"{key}-gpu"}, f"{key}-gpu": set()})


def _shard_layout(shards, chunks, device) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(computation chunks, inner Zarr chunks)`` of a sharded output: the shard, and
    ``chunks`` (default :data:`~chunkseg.plan.DEFAULT_CHUNK_TARGET`, :data:`GPU_CHUNK` on CUDA),
    after checking that the shard is a positive multiple of the chunk."""
    shard = normalize_pair(shards, "shards")
    if chunks is None:
        chunks = GPU_CHUNK if str(device).startswith("cuda") else DEFAULT_CHUNK_TARGET
    inner = normalize_pair(chunks, "chunks")
    if min(inner) < 1 or min(shard) < 1:
        raise InvalidValueError(
            f"`shards` and `chunks` must be positive numbers of pixels. Got shards={shard!r}, "
            f"chunks={inner!r}.")
    if any(s % c for s, c in zip(shard, inner)):
        raise InvalidValueError(
            f"`shards` must be a multiple of `chunks` (the inner Zarr chunk of each shard) along "
            f"each axis. Got shards={shard!r}, chunks={inner!r}. Use shards that are multiples "
            f"of the chunks (e.g. shards={tuple(c * max(1, round(s / c)) for s, c in zip(shard, inner))!r}"
            f"), or chunks that divide the shards.")
    return shard, inner


def _check_compression_level(level: Any, outputs: Sequence[str]) -> None:
    """Refuse a ``compression_level`` a codec of :func:`_compressor` would fail on while
    writing: zstd takes 0..22, Blosc (``logits``) 0..9."""
    top = 9 if "logits" in outputs else 22
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)):
        raise InvalidTypeError(f"`compression_level` must be an int from 0 to {top}. Got "
                               f"{level!r}; the default is 1.")
    if not 0 <= level <= top:
        raise InvalidValueError(
            f"`compression_level` must be from 0 to {top}"
            + (" when logits are written (Blosc, which compresses them, takes 0..9; zstd, for "
               "labels and probabilities, 0..22)" if top == 9 else " (zstd)")
            + f". Got {level!r}; the default, 1, writes fastest for about the same size.")


def _compressor(name: str, level: int):
    """The codec of an output variable (see :func:`predict_to_zarr`'s ``compression_level``)."""
    from zarr.codecs import BloscCodec, ZstdCodec

    if name == "logits":
        return BloscCodec(cname="lz4", clevel=level, shuffle="shuffle")
    return ZstdCodec(level=level)


def _var_attrs(name: str, k: int, coords: dict | None = None) -> dict:
    attrs = {
        "logits": {"long_name": "blended logits", "units": "1"},
        "probabilities": {"long_name": "class probabilities", "units": "1",
                          "activation": "softmax" if k > 1 else "sigmoid"},
        "labels": {"long_name": "argmax class labels", "classes": k},
    }[name]
    scalars = sorted(n for n, v in (coords or {}).items() if v.ndim == 0)
    if scalars:  # CF: the scalar coordinates (e.g. rioxarray's spatial_ref) of the variable
        attrs["coordinates"] = " ".join(scalars)
    return attrs


def _pixel_grid(coords: dict) -> tuple[list, list, dict]:
    """NGFF ``scale``, ``translation`` and units of ``y``, ``x`` from the output's coordinates:
    their spacing and first value where they are evenly spaced and increasing, else pixels."""
    from .._ome import ngff_unit

    scale, translation, units = [1.0, 1.0], [0.0, 0.0], {}
    for i, dim in enumerate(("y", "x")):
        c = coords.get(dim)
        if c is None or c.size < 1:
            continue
        values = np.asarray(c.values, dtype=float)
        step = float(values[1] - values[0]) if values.size > 1 else 1.0
        if step > 0 and np.allclose(np.diff(values), step, rtol=1e-6, atol=0):
            scale[i], translation[i] = step, float(values[0])
            units[dim] = ngff_unit(c.attrs.get("units"))
    return scale, translation, units


def _write_coords(group, coords: dict, class_names: Sequence[str]) -> None:
    """Write the ``class`` coordinate (names) and the ``y``/``x`` and scalar coordinates as
    Zarr arrays of ``group``, which xarray reads as coordinates (1-D arrays named as their
    dimension; scalars through the variables' CF ``coordinates`` attribute)."""
    from zarr.codecs import ZstdCodec

    arr = create_array(group, name="class", shape=(len(class_names),),
                       chunks=(max(1, len(class_names)),), dtype=str, fill_value="",
                       compressor=ZstdCodec(level=1), dimension_names=("class",),
                       attributes={"long_name": "class name"})
    arr[...] = np.asarray(class_names, dtype=str)
    for name, var in coords.items():
        values = np.asarray(var.values)
        if var.ndim == 1:
            a = create_array(group, name=name, shape=values.shape, chunks=values.shape,
                             dtype=values.dtype, compressor=ZstdCodec(level=1),
                             dimension_names=(name,), attributes=dict(var.attrs))
        else:
            a = create_array(group, name=name, shape=(), chunks=(), dtype=values.dtype,
                             compressor=ZstdCodec(level=1), dimension_names=(),
                             attributes=_json_attrs(var.attrs))
        a[...] = values


def _json_attrs(attrs: dict) -> dict:
    """The JSON-serialisable part of ``attrs`` (numpy scalars and arrays become lists)."""
    out = {}
    for key, value in attrs.items():
        value = value.tolist() if isinstance(value, (np.ndarray, np.generic)) else value
        try:
            json.dumps(value)
        except TypeError:
            continue
        out[str(key)] = value
    return out


def _create_levels(group, targets: dict, shapes: list, plan: TilePlan, setup: RunSetup,
                   compression_level: int) -> None:
    """Create the pyramid arrays (levels 1...) of the image variable and the labels, their
    coordinates and the NGFF metadata of the OME layout (written with ome-zarr-py)."""
    image_var = _ome.image_variable(setup.outputs)
    scale, translation, units = _pixel_grid(setup.coords)
    k = setup.runner.classes
    for i, shape in enumerate(shapes[1:], start=1):
        chunks = _pyramid.level_chunks(plan.chunks, shape)
        sub = require_group(group, str(i)) if image_var is not None else None
        for name, arr0 in targets.items():
            if name == "labels":
                create_array(group, name=_ome.var_path("labels", i), shape=shape, chunks=chunks,
                             dtype=arr0.dtype, compressor=_compressor(name, compression_level),
                             dimension_names=("y", "x"), attributes=_var_attrs(name, k),
                             write_empty_chunks=True)
            elif name == image_var:
                create_array(sub, name=name, shape=(k,) + shape, chunks=(k,) + chunks,
                             dtype=arr0.dtype, compressor=_compressor(name, compression_level),
                             dimension_names=("class", "y", "x"),
                             attributes=_var_attrs(name, k), write_empty_chunks=True)
        if sub is not None:  # the level's own coordinates: pixel centres of its 2^i squares
            f = 2 ** i
            coords = {d: xr.Variable(d, translation[j] + (f - 1) / 2 * scale[j]
                                     + f * scale[j] * np.arange(shape[j]),
                                     setup.coords[d].attrs)
                      for j, d in enumerate(("y", "x")) if d in setup.coords}
            _write_coords(sub, coords, setup.class_names)
    if image_var is not None:
        _ome.write_image_metadata(group, image_var, len(shapes), setup.class_names, scale,
                                  translation, units)
    if "labels" in targets:
        _ome.write_labels_metadata(group, len(shapes), setup.class_names, scale,
                                   translation, units)


def _write_levels(group, outputs, n_levels: int, store, scheduler, progress: bool) -> None:
    """Compute and write pyramid levels 1... from the level before each, as written."""
    image_var = _ome.image_variable(outputs)
    pyramids = [([group[_ome.var_path(name, i)] for i in range(n_levels)], kind)
                for name, kind in ((image_var, "mean"), ("labels", "mode"))
                if name is not None and name in outputs]
    _pyramid.write_levels(pyramids, describe_location(store), scheduler=scheduler,
                          progress=progress)
