"""The task graph: one accumulate task per block, one piece task per (block, destination
chunk) and one fold task per output chunk (forward-only overlap-add), and the GPU resources
its heavy tasks ask of a cluster.
"""

from __future__ import annotations

import operator
import uuid
from typing import Any

import dask
import numpy as np
from dask.highlevelgraph import HighLevelGraph

from ..kernels import blend
from .runner import TileRunner
from .settings import GPU_READ_AHEAD

__all__ = ["blend_graph"]


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
                token: str | None = None, skip=None,
                before: Any = None) -> tuple[dict, str, list]:
    """The task graph of accumulation, pieces and fold, with ``finish`` applied per chunk.

    Parameters
    ----------
    runner : TileRunner
        Or any runner with its ``schedule`` (:class:`chunkseg.plan.BlockSchedule`, which the
        graph follows), ``accumulate`` and ``fold``; put in the graph once, under a single key.
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
    before : sequence of keys, optional
        With ``lag``, for the planes of a stack, the fold keys of the plane written before this
        one, in row-major order (None for a chunk it skipped): its last ``lag`` chunks gate
        this plane's first ``lag`` blocks, so the rolling window runs on across planes
        instead of starting every plane at once.

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
    schedule = runner.schedule
    token = token or uuid.uuid4().hex
    runner_name = f"chunkseg-runner-{token}"
    acc_name, piece_name = f"chunkseg-accumulate-{token}", f"chunkseg-piece-{token}"
    fold_name = f"chunkseg-fold-{token}"
    nr, nc = schedule.chunk_grid
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
            for (iy, ix), _, dst in schedule.sources(jy, jx):
                dsts.append(dst)
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
            if not schedule.owns_tiles(iy, ix):
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
            elif lag is not None and before and len(before) + p - lag >= 0:
                gate = before[len(before) + p - lag]
                task += (gate,) if gate is not None else ()
            dsk[(acc_name, iy, ix)] = task
    return dsk, fold_name, fold_keys


def _write_task(runner: TileRunner, outputs, jy: int, jx: int, dsts, *pieces) -> int:
    # ``outputs``: chunkseg.engine.to_zarr.ChunkOutputs, which computes and writes the chunk
    return outputs(runner, jy, jx, runner.fold(jy, jx, list(zip(dsts, pieces))))


def _count(done: list) -> int:
    return int(sum(done))


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


HEAVY_TASKS = ("chunkseg-accumulate", "chunkseg-fold")
"""Key prefixes of the block and chunk tasks, those that ask for a share of a GPU."""


class _ShareOfGpu:
    """The ``resources`` annotation of a key: ``resources`` for a block or chunk task, None
    (no restriction: distributed's scheduler skips it) for the others."""

    def __init__(self, resources: dict):
        self.resources = resources

    def __call__(self, key) -> dict | None:
        if isinstance(key, tuple) and str(key[0]).startswith(HEAVY_TASKS):
            return self.resources
        return None


def _graph(key: str, dsk: dict, resources: dict | None) -> HighLevelGraph:
    """The one-layer graph of ``dsk``, computing ``key``; with ``resources``, the block and
    chunk tasks ask for them.

    The layer is made under :func:`dask.annotate` (dask's public way to annotate tasks) with a
    per-key annotation: one layer, so that dask's optimisation (culling) sees the true
    dependencies and keeps every task and its annotation (a hand-built layer per kind of task
    would depend on the others both ways: dask issue 7036).
    """
    if not resources:
        return HighLevelGraph.from_collections(key, dsk, dependencies=[])
    with dask.annotate(resources=_ShareOfGpu(resources)):
        return HighLevelGraph.from_collections(key, dsk, dependencies=[])
