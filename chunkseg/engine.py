"""The Dask graph: pad, halo, per-chunk accumulation, overlap-add fold, normalisation, writes.

The numpy kernels live in :mod:`chunkseg.blend` and the geometry in :mod:`chunkseg.plan`; this
module only wires them into a graph::

    image (y, x, c) --reflect pad--> padded (c, y', x'), chunked as the plan
      --overlap(depth=(0, overlap))--> blocks = chunk + halo after
      --accumulate_block--> acc (K+1, ...) per block        [each tile runs exactly once]
      --strip tasks + fold_pieces--> (K+1, y, x) per chunk   [only halo strips move]
      --normalize--> logits (class, y, x) --> probabilities, labels (y, x)
"""

from __future__ import annotations

import operator
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from . import blend
from .errors import ChunkAlignmentError, OutputExistsError
from .io import _redact, open_image, store_has_data
from .models import Normalization, as_model, describe_model
from .plan import TilePlan, fold_sources, plan_tiles, tile_mask
from .scheduling import compute, open_client
from .windows import get_window, window_name

__all__ = [
    "OUTPUTS",
    "pad_image",
    "accumulate",
    "fold",
    "accumulate_fold",
    "blend_logits",
    "predict",
    "predict_to_zarr",
]

OUTPUTS = ("logits", "probabilities", "labels")
"""Names of the variables :func:`predict` can return."""


def pad_image(image: da.Array, plan: TilePlan) -> da.Array:
    """Reflect-pad a ``(y, x, c)`` image and lay it out channels-first in the plan's chunks.

    Parameters
    ----------
    image : (H, W, C_in) dask array
    plan : TilePlan

    Returns
    -------
    (C_in, P_y, P_x) dask array
        Same dtype; chunks ``((C_in,), *plan.padded_chunks())``. Padding is
        ``numpy.pad(mode="reflect")``, applied lazily by indexing the border rows and columns.
    """
    x = image
    for axis, (before, after) in enumerate(plan.pad_width):
        n = x.shape[axis]
        idx = np.pad(np.arange(n), (before, after), mode="reflect")
        parts = []
        if before:
            parts.append(da.take(x, idx[:before], axis=axis))
        parts.append(x)
        if after:
            parts.append(da.take(x, idx[before + n :], axis=axis))
        x = da.concatenate(parts, axis=axis) if len(parts) > 1 else x
    x = x.transpose(2, 0, 1)
    return x.rechunk(((x.shape[0],),) + plan.padded_chunks())


class TileRunner:
    """The per-block work: model, window and settings, shipped once per worker as one object.

    ``run_tiles`` (a boolean grid over all tiles) and ``predicate`` (a function of the block)
    skip background tiles and chunks; see :func:`predict`'s ``mask``.
    """

    def __init__(self, model, window: np.ndarray, overlap: tuple[int, int], batch_size: int,
                 classes: int, *, tiles_per_chunk: tuple[int, int] = (1, 1),
                 run_tiles: np.ndarray | None = None, predicate=None):
        self.model = model
        self.window = window
        self.overlap = overlap
        self.batch_size = batch_size
        self.classes = classes
        self.tiles_per_chunk = tiles_per_chunk
        self.run_tiles = run_tiles
        self.predicate = predicate

    def _run(self, block: np.ndarray, block_id: tuple[int, ...]) -> np.ndarray | None:
        if self.predicate is not None and not self.predicate(block):
            return np.zeros((0, 0), dtype=bool)
        if self.run_tiles is None:
            return None
        stride = tuple(t - o for t, o in zip(self.window.shape, self.overlap))
        m = [(block.shape[1 + a] - self.overlap[a]) // stride[a] for a in range(2)]
        y0, x0 = (block_id[1 + a] * self.tiles_per_chunk[a] for a in range(2))
        return self.run_tiles[y0 : y0 + m[0], x0 : x0 + m[1]]

    def __call__(self, block: np.ndarray, block_id: tuple[int, ...] = (0, 0, 0)) -> np.ndarray:
        run = self._run(block, block_id)
        if run is not None and not run.any():  # background: the model never sees it
            return np.zeros((self.classes + 1,) + block.shape[1:], dtype=np.float32)
        return blend.accumulate_block(block, self.model, self.window, self.overlap,
                                      batch_size=self.batch_size, classes=self.classes, run=run)


def _run_block(block: np.ndarray, runner: TileRunner, block_id=None, *_gate) -> np.ndarray:
    # ``_gate``: the rolling window's token (see accumulate_fold), only a dependency
    return runner(block, block_id)


def _halo_blocks(padded: da.Array, plan: TilePlan) -> da.Array:
    """Each chunk of the padded image with its halo of ``overlap`` pixels after it."""
    oy, ox = plan.overlap
    return da.overlap.overlap(padded, depth={0: 0, 1: (0, oy), 2: (0, ox)}, boundary="none",
                              allow_rechunk=False)


def _runner_key(runner: TileRunner):
    """The runner as a single graph key, so a cluster ships it once per worker."""
    return dask.delayed(runner, name=f"chunkseg-runner-{uuid.uuid4().hex}")


def accumulate(padded: da.Array, runner: TileRunner, plan: TilePlan) -> da.Array:
    """Give each chunk its halo and run every owned tile through the model.

    Parameters
    ----------
    padded : (C_in, P_y, P_x) dask array
        From :func:`pad_image`.
    runner : TileRunner
        Put in the graph once (a single key), so a cluster ships it once per worker.
    plan : TilePlan

    Returns
    -------
    (K + 1, sum(B_y), sum(B_x)) dask array of float32
        One block per chunk, ``B = chunk + overlap`` (the last block: the rest of the padded
        image): weighted logits and the weight sum (see :func:`chunkseg.blend.accumulate_block`).
    """
    blocks = _halo_blocks(padded, plan)
    k = runner.classes
    runner_key = _runner_key(runner)
    return blocks.map_blocks(
        _run_block,
        runner_key,
        chunks=((k + 1,),) + blocks.chunks[1:],
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        name=f"chunkseg-accumulate-{tokenize(blocks.name, runner_key.key)}",
    )


def _fold_task(shape, dsts, srcs, arrays):
    return blend.fold_pieces(shape, [(d, a[(slice(None),) + s]) for d, s, a in
                                     zip(dsts, srcs, arrays)])


def _fold_tasks(acc_name: str, k1: int, plan: TilePlan, token: str) -> tuple[dict, dict, str]:
    """Strip and fold tasks of the overlap-add; also the strip keys cut from each block."""
    src_y, src_x = fold_sources(plan)
    strip_name, fold_name = f"chunkseg-strip-{token}", f"chunkseg-fold-{token}"
    out_chunks = plan.output_chunks()
    dsk: dict = {}
    strips_of: dict = {}
    for jy, sources_y in enumerate(src_y):
        for jx, sources_x in enumerate(src_x):
            dsts, srcs, arrays = [], [], []
            for iy, sy, dy in sources_y:
                for ix, sx, dx in sources_x:
                    dsts.append((dy, dx))
                    if (iy, ix) == (jy, jx):
                        srcs.append((sy, sx))
                        arrays.append((acc_name, 0, iy, ix))
                    else:
                        key = (strip_name, iy, ix, jy, jx)
                        dsk[key] = (operator.getitem, (acc_name, 0, iy, ix),
                                    (slice(None), sy, sx))
                        strips_of.setdefault((iy, ix), []).append(key)
                        srcs.append((slice(None), slice(None)))
                        arrays.append(key)
            shape = (k1, out_chunks[0][jy], out_chunks[1][jx])
            dsk[(fold_name, 0, jy, jx)] = (_fold_task, shape, dsts, srcs, arrays)
    return dsk, strips_of, fold_name


def _folded_array(graph: HighLevelGraph, fold_name: str, k1: int, plan: TilePlan) -> da.Array:
    return da.Array(graph, fold_name, chunks=((k1,),) + plan.output_chunks(), dtype=np.float32,
                    meta=np.empty((0, 0, 0), dtype=np.float32))


def fold(acc: da.Array, plan: TilePlan) -> da.Array:
    """Overlap-add the accumulator blocks into the output chunks.

    Each output chunk's task takes its own block whole (it runs where that block is) and, from
    each neighbour, only the halo strip that falls in the chunk, cut by a small task of its own,
    so only strips travel between workers.

    Parameters
    ----------
    acc : (K + 1, ...) dask array
        From :func:`accumulate`.
    plan : TilePlan

    Returns
    -------
    (K + 1, H, W) dask array of float32
        Chunks ``((K + 1,), *plan.output_chunks())``.
    """
    dsk, _, fold_name = _fold_tasks(acc.name, acc.shape[0], plan, tokenize(acc.name, plan))
    graph = HighLevelGraph.from_collections(fold_name, dsk, dependencies=[acc])
    return _folded_array(graph, fold_name, acc.shape[0], plan)


def _gate_token(*_: Any) -> None:
    return None


def accumulate_fold(padded: da.Array, runner: TileRunner, plan: TilePlan, *,
                    lag: int | None = None) -> da.Array:
    """:func:`accumulate` then :func:`fold`, with memory bounded by a rolling window of chunks.

    Chunks are accumulated in row-major order, and chunk ``p`` may start only once chunk
    ``p - lag`` has been folded and all its halo strips cut (a tiny token task carries that
    dependency, so no data moves for it). The same gate holds back the input tasks (reads,
    padding, rechunking, halos) that chunk ``p`` is the first to need, so the scheduler does
    not read ahead either. At most about ``lag`` blocks are then alive at once. Without the
    gate, dask's ordering of this 2-D stencil graph keeps about half of all blocks in memory,
    which grows with the image's area.

    Parameters
    ----------
    padded : (C_in, P_y, P_x) dask array
        From :func:`pad_image`.
    runner : TileRunner
    plan : TilePlan
    lag : int, optional
        Window of chunks, at least ``chunks per row + 2`` (the smallest that cannot deadlock:
        a fold needs the next row's blocks); default that minimum.

    Returns
    -------
    (K + 1, H, W) dask array of float32
        As :func:`fold`.

    Notes
    -----
    Peak memory is about ``lag`` accumulators of ``4 (K + 1) (C + O)^2`` bytes: it grows with
    the image's width (one row of chunks), not its area. Some row of chunks must wait for the
    next one in any order of a 2-D overlap-add, so a smaller chunk is the way to less memory.
    """
    blocks = _halo_blocks(padded, plan)
    nr, nc = plan.chunk_grid
    lag = max(nc + 2, lag or 0)
    runner_key = _runner_key(runner)
    token = tokenize(blocks.name, runner_key.key, lag)
    acc_name, gate_name = f"chunkseg-accumulate-{token}", f"chunkseg-gate-{token}"
    k1 = runner.classes + 1
    dsk, strips_of, fold_name = _fold_tasks(acc_name, k1, plan, token)
    for i in range(nr):
        for j in range(nc):
            task = (_run_block, (blocks.name, 0, i, j), runner_key.key, (0, i, j))
            p = i * nc + j - lag
            if p >= 0:
                task += ((gate_name, *divmod(p, nc)),)
            dsk[(acc_name, 0, i, j)] = task
            dsk[(gate_name, i, j)] = (_gate_token, (fold_name, 0, i, j),
                                      list(strips_of.get((i, j), [])))
    dsk.update(_gate_inputs(blocks, plan, lag, gate_name))
    graph = HighLevelGraph.from_collections(fold_name, dsk, dependencies=[runner_key])
    return _folded_array(graph, fold_name, k1, plan)


def _first(value: Any, *_: Any) -> Any:
    return value


def _gate_inputs(blocks: da.Array, plan: TilePlan, lag: int, gate_name: str) -> dict:
    """The input graph of ``blocks``, each task held back by the gate of the first chunk
    (row-major) that needs it, ``lag`` chunks earlier."""
    from dask._task_spec import Task, TaskRef, convert_legacy_graph

    graph = convert_legacy_graph(dict(blocks.__dask_graph__()))
    nr, nc = plan.chunk_grid
    claimed: dict = {}
    for p in range(nr * nc):
        stack = [(blocks.name, 0, *divmod(p, nc))]
        while stack:
            key = stack.pop()
            if key in claimed or key not in graph:
                continue
            claimed[key] = p
            stack.extend(graph[key].dependencies)
    for key, p in claimed.items():
        if p >= lag:
            gate = TaskRef((gate_name, *divmod(p - lag, nc)))
            graph[key] = Task(key, _first, graph[key], gate)
    return graph


def _probe_classes(padded: da.Array, model, plan: TilePlan) -> int:
    """Run the model on the first tile of the image: number of classes, and an early check."""
    ty, tx = plan.tile
    first = np.asarray(padded[:, :ty, :tx].compute(scheduler="threads"))
    batch = first[None].astype(np.float32)
    return blend.check_model_output(model(batch), batch.shape).shape[1]


def blend_logits(
    image: da.Array,
    model,
    plan: TilePlan,
    window: np.ndarray,
    *,
    batch_size: int = 8,
    classes: int | None = None,
    mask: Any = None,
    rolling: bool = False,
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
    rolling : bool, default False
        Use :func:`accumulate_fold`'s rolling window (bounded memory for a full computation)
        instead of :func:`accumulate` and :func:`fold`.

    Returns
    -------
    (K, H, W) dask array of float32
        Chunks ``((K,), *plan.output_chunks())``.
    """
    padded = pad_image(image, plan)
    if classes is None:
        classes = _probe_classes(padded, model, plan)
    run_tiles = predicate = None
    if callable(mask):
        predicate = mask
    elif mask is not None:
        run_tiles = tile_mask(plan, mask)
    runner = TileRunner(model, window, plan.overlap, batch_size, classes,
                        tiles_per_chunk=plan.tiles_per_chunk, run_tiles=run_tiles,
                        predicate=predicate)
    if rolling:
        folded = accumulate_fold(padded, runner, plan)
    else:
        folded = fold(accumulate(padded, runner, plan), plan)
    fill = np.nan if mask is not None else 0.0
    return folded.map_blocks(blend.normalize_accumulator, np.float32, fill,
                             chunks=((classes,),) + folded.chunks[1:], dtype=np.float32,
                             meta=np.empty((0, 0, 0), np.float32))


def _normalize_outputs(outputs: str | Sequence[str]) -> tuple[str, ...]:
    items = [o.strip() for o in outputs.split(",")] if isinstance(outputs, str) else list(outputs)
    bad = [o for o in items if o not in OUTPUTS]
    if bad or not items:
        raise ValueError(
            f"`outputs` must be a non-empty subset of {OUTPUTS}. Got {outputs!r}."
        )
    return tuple(dict.fromkeys(items))


def _validate_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float16):
        raise ValueError(f"`dtype` must be float32 or float16. Got {dtype!r}.")
    return dt


def _version() -> str:
    from . import __version__

    return __version__


def predict(
    image: Any,
    model: Any,
    *,
    tile: int | tuple[int, int] = 256,
    overlap: int | tuple[int, int] = 64,
    window: str | np.ndarray = "gaussian",
    chunks: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    outputs: str | Sequence[str] = ("logits", "labels"),
    dtype: str | np.dtype = "float32",
    device: str = "cpu",
    normalization: Normalization | None = None,
    storage_options: dict | None = None,
    array_name: str | None = None,
    mask: Any = None,
    rolling: bool = False,
) -> xr.Dataset:
    """Segment an image of any size with a tiled model and seamless blending, lazily.

    A global grid of tiles (``tile``, ``overlap``, stride ``tile - overlap``) is laid over the
    reflect-padded image. Each computation chunk runs the model on the tiles it owns, weights
    each tile's logits by the blending ``window`` and accumulates them with the weights; an
    overlap-add reduction folds the halos into the neighbouring chunks and the sum is divided
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
    tile : int or (int, int), default 256
        Tile size, pixels.
    overlap : int or (int, int), default 64
        Overlap between tiles, pixels, ``0 <= overlap < tile``.
    window : str or (T_y, T_x) array, default "gaussian"
        Blending window: ``"uniform"``, ``"linear"``, ``"gaussian"``, ``"cosine"`` or weights.
    chunks : int or (int, int), optional
        Computation and output chunk, a multiple of the stride; default ~1536 px
        (see :func:`chunkseg.plan.plan_tiles`).
    batch_size : int, default 8
        Tiles per model call.
    outputs : str or sequence of str, default ("logits", "labels")
        Any of ``"logits"``, ``"probabilities"``, ``"labels"`` (or a comma-separated string).
    dtype : {"float32", "float16"}, default "float32"
        dtype of ``logits`` and ``probabilities``.
    device : str, default "cpu"
        Device for torch and ONNX models.
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
    rolling : bool, default False
        Bound memory when the whole image is computed: chunks are accumulated in row-major
        order through a rolling window of about one row of chunks
        (:func:`accumulate_fold`). :func:`predict_to_zarr` uses it. Leave it off to compute
        sub-regions lazily: with it, any chunk depends on every chunk before it.

    Returns
    -------
    xarray.Dataset
        Dask-backed, nothing computed yet. ``logits`` and ``probabilities``: dims
        ``("class", "y", "x")``, ``dtype``; ``labels``: dims ``("y", "x")``, the smallest unsigned
        integer holding ``K``. Chunks equal the computation chunks. ``attrs`` record the plan,
        window, model and chunkseg version.

    Raises
    ------
    ValueError, TypeError
        For bad arguments (wrong image dimensionality, ``overlap >= tile``, chunks that are not
        a multiple of the stride, unknown window or outputs...).
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
    outputs_ = _normalize_outputs(outputs)
    dtype_ = _validate_dtype(dtype)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int. Got {batch_size!r}.")
    arr = open_image(image, storage_options=storage_options, array_name=array_name)
    plan = plan_tiles(arr.shape, tile, overlap, chunks)
    weights = get_window(window, plan.tile, plan.overlap)
    predictor = as_model(model, device=device, normalization=normalization)
    logits = blend_logits(arr.data, predictor, plan, weights, batch_size=int(batch_size),
                          mask=mask, rolling=rolling)
    classes = logits.shape[0]
    data_vars = {}
    if "logits" in outputs_:
        data_vars["logits"] = (("class", "y", "x"), logits.astype(dtype_))
    if "probabilities" in outputs_:
        probs = logits.map_blocks(blend.probabilities_from_logits, dtype_, dtype=dtype_,
                                  meta=np.empty((0, 0, 0), dtype_))
        data_vars["probabilities"] = (("class", "y", "x"), probs)
    if "labels" in outputs_:
        ldt = blend.labels_dtype(classes)
        labels = logits.map_blocks(blend.labels_from_logits, drop_axis=0, dtype=ldt,
                                   meta=np.empty((0, 0), ldt))
        data_vars["labels"] = (("y", "x"), labels)
    attrs = {
        "chunkseg_version": _version(),
        "tile": list(plan.tile),
        "overlap": list(plan.overlap),
        "stride": list(plan.stride),
        "chunks": list(plan.chunks),
        "window": window_name(window),
        "padding": "reflect",
        "blend": "overlap-add of window-weighted logits, divided by the summed window",
        "classes": int(classes),
        "batch_size": int(batch_size),
        "model": describe_model(predictor),
        "mask": "none" if mask is None else ("predicate" if callable(mask) else "array"),
        "source": str(arr.attrs.get("source", "array")),
    }
    return xr.Dataset(data_vars, attrs=attrs)


def _check_aligned(name: str, chunks: tuple[tuple[int, ...], ...], zchunks: tuple[int, ...]):
    for axis, (sizes, z) in enumerate(zip(chunks, zchunks)):
        if any(c != z for c in sizes[:-1]) or sizes[-1] > z:
            raise ChunkAlignmentError(
                f"`{name}` dask chunks {sizes} on axis {axis} do not match the Zarr chunk {z}: "
                "a write task would not own whole chunks. Rechunk to the Zarr chunks first."
            )


def _same_local_store(a: Any, b: Any) -> bool:
    if not isinstance(a, (str, os.PathLike)) or not isinstance(b, (str, os.PathLike)):
        return False
    if "://" in str(a) or "://" in str(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def predict_to_zarr(
    image: Any,
    model: Any,
    store: Any,
    *,
    overwrite: bool = False,
    storage_options: dict | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
    compression_level: int = 1,
    **kwargs: Any,
) -> xr.Dataset:
    """Run :func:`predict` and write its outputs to a Zarr v3 group, each chunk written once.

    Parameters
    ----------
    image, model
        As :func:`predict`.
    store : str, os.PathLike or zarr store
        Output group: a local path, an fsspec URL (``s3://bucket/out.zarr``) or a zarr store.
    overwrite : bool, default False
        Replace whatever ``store`` holds. Without it, a store that already holds data is refused
        before anything is computed or written.
    storage_options : dict, optional
        fsspec options for URL inputs and outputs.
    scheduler : None, str or distributed.Client
        See :func:`chunkseg.scheduling.open_client`; default: dask's threaded scheduler.
    workers : int, optional
        Start a LocalCluster of this many worker processes.
    progress : bool, default False
        Show a progress bar.
    compression_level : int, default 1
        zstd level of every array. Level 1 wrote 12 % faster than level 3 for the same output
        size within 3 % (``python benchmarks/tuning.py``, 8192^2, labels + float16
        probabilities).
    **kwargs
        ``tile``, ``overlap``, ``window``, ``chunks``, ``batch_size``, ``outputs``, ``dtype``,
        ``device``, ``normalization``, ``array_name``, ``mask``: as :func:`predict`;
        ``rolling`` defaults to True here (bounded memory).

    Returns
    -------
    xarray.Dataset
        The written group, opened with ``xarray.open_zarr`` (dask-backed).

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If ``store`` holds data and ``overwrite`` is False, or ``store`` is the input itself.
    chunkseg.errors.ChunkAlignmentError
        If a write task would not own whole Zarr chunks (cannot happen with the plan's chunks;
        checked before writing).
    ValueError, TypeError, chunkseg.errors.ModelOutputError
        As :func:`predict`, all before anything is written.

    Notes
    -----
    Arrays: ``logits``/``probabilities`` ``(class, y, x)`` chunked ``(K, C_y, C_x)``, ``labels``
    ``(y, x)`` chunked ``(C_y, C_x)``, zstd-compressed, ``dimension_names`` set. Written with
    ``dask.array.store(lock=False)``: safe because every dask block is exactly one Zarr chunk
    (checked), so there is no read-modify-write (zarr #3514, #3682).
    """
    import zarr
    from zarr.codecs import ZstdCodec

    if _same_local_store(image, store):
        raise OutputExistsError(
            f"`store` {_redact(str(store))!r} is the input image itself; choose another output path."
        )
    if store_has_data(store, storage_options=_so(store, storage_options)) and not overwrite:
        raise OutputExistsError(
            f"`store` {_redact(str(store))!r} already holds data. Choose a new path, or pass "
            "overwrite=True (CLI: --overwrite) to replace it."
        )
    # the options are for whichever of `image` and `store` is a URL (open_image and
    # store_has_data refuse them for an in-memory image or a local path)
    kwargs.setdefault("rolling", True)
    ds = predict(image, model, storage_options=_so(image, storage_options), **kwargs)
    # connect to the cluster before anything is written: a wrong address leaves no output
    with open_client(scheduler, workers) as client:
        group = zarr.open_group(store, mode="w", storage_options=_so(store, storage_options),
                                attributes=ds.attrs)
        sources, targets = [], []
        for name, var in ds.data_vars.items():
            data = var.data
            zchunks = tuple(c[0] for c in data.chunks)
            _check_aligned(name, data.chunks, zchunks)
            target = group.create_array(
                name, shape=data.shape, chunks=zchunks, dtype=data.dtype,
                compressors=ZstdCodec(level=compression_level), fill_value=0,
                dimension_names=var.dims, attributes=_var_attrs(name, ds),
                config={"write_empty_chunks": True},
            )
            sources.append(data)
            targets.append(target)
        stored = da.store(sources, targets, lock=False, compute=False)
        compute(stored, scheduler=scheduler if client is None else client, progress=progress)
    with warnings.catch_warnings():
        # consolidated metadata is not in the v3 spec yet, but zarr-python and xarray read it
        # and xarray warns without it; silence zarr's notice about that.
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(group.store)
    return xr.open_zarr(store, storage_options=_so(store, storage_options), consolidated=True)


def _so(store: Any, storage_options: dict | None) -> dict | None:
    return storage_options if isinstance(store, str) and "://" in store else None


def _var_attrs(name: str, ds: xr.Dataset) -> dict:
    k = ds.attrs["classes"]
    return {
        "logits": {"long_name": "blended logits", "units": "1"},
        "probabilities": {"long_name": "class probabilities", "units": "1",
                          "activation": "softmax" if k > 1 else "sigmoid"},
        "labels": {"long_name": "argmax class labels", "classes": k},
    }[name]
