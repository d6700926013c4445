"""Idle cores for the blocks in flight: a CPU model's batches split over threads.

Each dask thread runs one block at a time with ``torch_threads`` intra-op threads (one per
dask thread by default). When fewer blocks are in flight in this process than it has task
threads (an image of one chunk, the last blocks of a run), cores would idle: instead, each
batch of tiles is cut along its first axis into as many parts as there are idle shares, the
parts run side by side (one in the calling thread, the others in a small pool), each with the
same ``torch_threads`` as the task, and are concatenated in order.

The result is bit-identical to one call on the whole batch when a tile's logits do not
depend on the batch size, as the engine's chunk invariance already assumes (a block's last
batch is smaller): the thread count of every model call is unchanged (a convolution's result
depends on it: changing the intra-op threads instead would change the shipped U-Net's logits
by about 1e-6 between 1 and 2 threads). A part holds at least 2 tiles: oneDNN may pick
another convolution for a batch of one (a small U-Net on 64 px tiles does, the shipped one on
256 px tiles does not).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["SplitBatches", "blocks_in_flight", "in_flight", "task_slots"]

_LOCK = threading.Lock()
_ACTIVE = 0  # blocks being accumulated in this process
_POOL: ThreadPoolExecutor | None = None


@contextlib.contextmanager
def in_flight() -> Iterator[None]:
    """Count the calling task as a block in flight in this process while the block runs."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE += 1
    try:
        yield
    finally:
        with _LOCK:
            _ACTIVE -= 1


def blocks_in_flight() -> int:
    """Blocks being accumulated in this process now (at least 1 inside a task)."""
    return max(1, _ACTIVE)


def task_slots() -> int:
    """Task threads of this process: a ``dask.distributed`` worker's ``nthreads`` inside one of
    its tasks, else dask's ``num_workers`` (the threaded scheduler's threads), else the CPUs."""
    if "distributed" in sys.modules:
        from distributed import get_worker

        try:
            return max(1, int(get_worker().state.nthreads))
        except ValueError:  # not in a worker's task
            pass
    import dask

    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


def _pool() -> ThreadPoolExecutor:
    """One pool per process, a thread per CPU (a batch never has more parts than CPUs)."""
    global _POOL
    with _LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="chunkseg-split")
        return _POOL


def _forward(module: Any, part: Any, threads: int) -> Any:
    """``module(part)`` in a pool thread, with the task's torch threads and no autograd."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    with torch.inference_mode():
        return module(part)


class SplitBatches:
    """A CPU torch module whose batches are split over the idle cores (see the module's notes).

    Parameters
    ----------
    module : callable
        ``(N, C_in, T_y, T_x)`` float32 tensor -> ``(N, K, T_y, T_x)`` tensor, on the CPU.
    threads : int
        Torch intra-op threads of each call (the task's ``torch_threads``), >= 1.
    cores : int, optional
        Cores this process's tasks share: default ``threads * task_slots()``, at most the CPUs.

    Notes
    -----
    A batch is cut into ``min(N // 2, cores // (threads * blocks_in_flight()))`` parts (a
    batch of one or two and a busy process: one part, the plain call), decided per call, so a
    block gets the cores the others leave when they finish.
    """

    def __init__(self, module: Any, threads: int, cores: int | None = None):
        self.module = module
        self.threads = max(1, int(threads))
        if cores is None:
            cores = min(self.threads * task_slots(), os.cpu_count() or 1)
        self.cores = max(1, int(cores))

    def parts(self, n: int) -> int:
        """How many parts a batch of ``n`` tiles is cut into now."""
        return max(1, min(n // 2, self.cores // (self.threads * blocks_in_flight())))

    def __call__(self, batch: Any) -> Any:
        parts = self.parts(len(batch))
        if parts < 2:
            return self.module(batch)
        import torch

        pieces = batch.tensor_split(parts)
        pool = _pool()
        futures = [pool.submit(_forward, self.module, p, self.threads) for p in pieces[1:]]
        try:
            first = self.module(pieces[0])
        finally:  # the others finish before anything is returned or raised
            outs = [f.exception() or f.result() for f in futures]
        errors = [o for o in outs if isinstance(o, BaseException)]
        if errors:
            raise errors[0]
        return torch.cat([first] + outs)

    def __repr__(self) -> str:
        return f"SplitBatches({self.module!r}, threads={self.threads}, cores={self.cores})"
