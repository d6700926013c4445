"""Where the Dask graph runs: the local threaded scheduler, a LocalCluster, or any
``dask.distributed`` cluster, with a progress bar on stderr (:mod:`chunkseg.progress`)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import dask
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ._check import positive_int
from ._redact import redact_text, redacting_warnings
from .errors import InvalidValueError, SchedulerError
from .progress import TaskProgress, stage, watch_futures

__all__ = ["compute", "dask_threads", "local_cluster", "open_client", "LOCAL_SCHEDULERS",
           "WORKER_ENVIRON_UNSET"]

#: Scheduler names handled by dask's single-machine schedulers.
LOCAL_SCHEDULERS = ("threads", "threading", "processes", "multiprocessing", "synchronous",
                    "sync", "single-threaded")


#: Variables of ``distributed.nanny.pre-spawn-environ`` that :func:`local_cluster` leaves unset
#: in its worker processes. dask's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` there (to hand
#: freed memory back to the system sooner); setting any of glibc's malloc thresholds turns off
#: glibc's adaptive mmap threshold, so every buffer over 128 KiB (each torch activation) is a
#: fresh ``mmap`` whose pages fault in again at every use. Measured with the shipped U-Net on
#: this project's 2-core machine (2048^2, 1024 px chunks, ``benchmarks/scaling.py``): a
#: LocalCluster with the variable set runs 1.27-1.41 x the threaded scheduler's time, without
#: it 0.98-1.08 x. ``OMP_NUM_THREADS`` and the other variables stay as dask sets them.
WORKER_ENVIRON_UNSET = ("MALLOC_TRIM_THRESHOLD_",)


def dask_threads(client: Any) -> int:
    """Threads the tasks run on: the cluster's, else dask's ``num_workers`` or the CPUs."""
    if client is not None:
        return max(1, int(sum(client.nthreads().values())))
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


@contextlib.contextmanager
def open_client(scheduler: Any = None, workers: int | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client`` for ``scheduler``/``workers``, or None for a local scheduler.

    Parameters
    ----------
    scheduler : None, str or distributed.Client
        None or a name from :data:`LOCAL_SCHEDULERS`: no client (dask's local schedulers).
        An address (``"tcp://host:8786"``, ``"tls://..."``): connect to that scheduler; the
        client is closed on exit, the cluster is left running. A ``Client``: used as it is.
    workers : int, optional
        Start a ``LocalCluster`` of this many single-threaded worker processes (closed on exit).
        Not allowed together with a scheduler address or client.

    Raises
    ------
    ValueError
        If both an address/client and ``workers`` are given, ``workers < 1``, or the scheduler
        string is neither a known name nor an address.
    """
    if workers is not None and scheduler is not None and scheduler not in LOCAL_SCHEDULERS:
        raise InvalidValueError(
            "`workers` starts a new LocalCluster and cannot be combined with `scheduler` "
            f"{scheduler!r}. Pass one of them."
        )
    if workers is not None:
        if int(workers) < 1:
            raise InvalidValueError(f"`workers` must be >= 1. Got {workers!r}.")
        with local_cluster(int(workers)) as client:
            yield client
        return
    if scheduler is None or (isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS):
        yield None
        return
    if isinstance(scheduler, str):
        if "://" not in scheduler:
            raise InvalidValueError(
                f"`scheduler` must be one of {LOCAL_SCHEDULERS}, an address such as "
                f"'tcp://127.0.0.1:8786', or a distributed.Client. Got {scheduler!r}."
            )
        from distributed import Client

        try:
            client = Client(scheduler)
        except OSError as err:  # nobody listens there, or it timed out
            raise SchedulerError(
                f"`scheduler` must be the address of a running dask scheduler. Got "
                f"{redact_text(scheduler)!r}, which could not be reached "
                f"({redact_text(' '.join(str(err).split()))}). Start one (`dask scheduler`), "
                "check the address, or drop --scheduler to run here; nothing was written."
            ) from None
        with client:
            yield client
        return
    yield scheduler  # a distributed.Client


@contextlib.contextmanager
def local_cluster(n_workers: int, threads_per_worker: int = 1) -> Iterator[Any]:
    """Start a ``distributed.LocalCluster`` of worker processes; yield its ``Client``.

    The cluster that ``workers=N`` (``--workers N``) starts. Its workers are spawned without
    the variables of :data:`WORKER_ENVIRON_UNSET` (neither dask's setting nor one in this
    process's environment is passed on: glibc's own malloc behaviour), so a model computes as
    fast in a worker as under the threaded scheduler; the variables this process had are
    restored on exit, when the cluster and client are closed. The dashboard listens on a free
    local port.

    Parameters
    ----------
    n_workers : int
        Worker processes, >= 1.
    threads_per_worker : int, default 1
        Threads of each worker, >= 1.

    Yields
    ------
    distributed.Client

    Raises
    ------
    TypeError
        If either count is not an int.
    ValueError
        If either count is below 1.

    Notes
    -----
    For a cluster started elsewhere, the same is
    ``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=None`` in the
    environment of ``dask worker`` (or ``dask.config.set`` before the nanny starts); see
    docs/cluster.md.
    """
    n_workers = positive_int(n_workers, "n_workers")
    threads_per_worker = positive_int(threads_per_worker, "threads_per_worker")
    from distributed import Client, LocalCluster

    unset = {f"distributed.nanny.pre-spawn-environ.{name}": None for name in WORKER_ENVIRON_UNSET}
    # A nanny copies its variables into this process's os.environ before it spawns (so an
    # earlier cluster leaves them here) and a worker inherits os.environ: both are cleared
    # while the cluster lives (a nanny restarting a worker reads them again), then restored.
    saved = {name: os.environ.pop(name) for name in WORKER_ENVIRON_UNSET if name in os.environ}
    try:
        with dask.config.set(unset), LocalCluster(
                n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
            yield client
    finally:
        os.environ.update(saved)


def compute(*collections: Any, scheduler: Any = None, workers: int | None = None,
            progress: bool = False, label: str = "computing",
            count: Iterable[Any] | None = None, secrets: Iterable[str] = ()) -> tuple:
    """Compute dask collections on the chosen scheduler, optionally with a progress bar.

    Every warning raised in this process while they compute (chunkseg's, zarr's, fsspec's...)
    is re-emitted with its message redacted (:func:`chunkseg._redact.redacting_warnings`): no
    URL credentials, query or ``secrets`` in it.

    Parameters
    ----------
    *collections : dask collections
    scheduler, workers
        See :func:`open_client`. Default: dask's threaded scheduler.
    progress : bool, default False
        Show one bar labelled ``label`` on stderr (:mod:`chunkseg.progress`: a tqdm bar on a
        terminal, else a line at the start, one a minute and one at the end). On dask's local
        schedulers it counts the graph's tasks as they finish
        (:class:`chunkseg.progress.TaskProgress`, a ``dask.callbacks.Callback``); on a
        ``distributed`` cluster the collections' results (one per collection) as they arrive
        (``distributed.as_completed``). With ``count``, both count those tasks only.
    label : str, default "computing"
        What the computation does, as the bar shows it: ``"predicting 484 chunks"``,
        ``"pyramid level 2"``, ``"measuring regions"``.
    count : iterable of keys, optional
        Count only these tasks of the graph (e.g. one per chunk, not the reads they need).
        They must be keys of the collections' graph that dask's optimisation keeps (the keys
        of a graph built as a dict, as :func:`chunkseg.engine.graph.blend_graph` does).
    secrets : iterable of str, optional
        Strings to hide in those warnings, e.g. ``chunkseg._redact.secrets_of(storage_options)``.

    Returns
    -------
    tuple
        The computed results, as ``dask.compute``.
    """
    count = None if count is None else list(count)
    with redacting_warnings(secrets), open_client(scheduler, workers) as client, \
            stage(label, progress) as bar:
        if client is None:
            ctx: Any = TaskProgress(bar, count) if progress else contextlib.nullcontext()
            if scheduler is None and "distributed" not in sys.modules:
                # no distributed Client can exist: dask's config, else threads, without dask
                # importing distributed to look for one (0.4 s on this machine)
                scheduler = dask.config.get("scheduler", None) or "threads"
            with ctx:
                # scheduler=None leaves the choice to dask's config (threads by default)
                return dask.compute(*collections, scheduler=scheduler)
        watched: list = []
        if progress and count is not None:  # futures of those keys, in the same submission
            graph = HighLevelGraph.merge(*(c.__dask_graph__() for c in collections))
            # a Delayed of a HighLevelGraph names the layer that holds its key
            layer_of = {key: name for name, layer in graph.layers.items() for key in layer}
            watched = [Delayed(key, graph, layer=layer_of[key]) for key in count]
        futures = client.compute([*collections, *watched])
        results = futures[:len(collections)]
        if progress:
            watch_futures(futures[len(collections):] if watched else list(results), bar)
        del futures
        return tuple(client.gather(results))
