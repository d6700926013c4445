"""Where the Dask graph runs: the local threaded scheduler, a LocalCluster, or any
``dask.distributed`` cluster, with a progress bar."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import dask

from ._redact import redact_text, redacting_warnings
from .errors import InvalidValueError, SchedulerError

__all__ = ["compute", "dask_threads", "open_client", "LOCAL_SCHEDULERS"]

#: Scheduler names handled by dask's single-machine schedulers.
LOCAL_SCHEDULERS = ("threads", "threading", "processes", "multiprocessing", "synchronous",
                    "sync", "single-threaded")


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
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                          dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
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


def compute(*collections: Any, scheduler: Any = None, workers: int | None = None,
            progress: bool = False, secrets: Iterable[str] = ()) -> tuple:
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
        Show a progress bar (``dask.diagnostics.ProgressBar`` locally,
        ``distributed.progress`` on a cluster).
    secrets : iterable of str, optional
        Strings to hide in those warnings, e.g. ``chunkseg._redact.secrets_of(storage_options)``.

    Returns
    -------
    tuple
        The computed results, as ``dask.compute``.
    """
    with redacting_warnings(secrets), open_client(scheduler, workers) as client:
        if client is None:
            ctx: Any = contextlib.nullcontext()
            if progress:
                from dask.diagnostics import ProgressBar

                ctx = ProgressBar()
            if scheduler is None and "distributed" not in sys.modules:
                # no distributed Client can exist: dask's config, else threads, without dask
                # importing distributed to look for one (0.4 s on this machine)
                scheduler = dask.config.get("scheduler", None) or "threads"
            with ctx:
                # scheduler=None leaves the choice to dask's config (threads by default)
                return dask.compute(*collections, scheduler=scheduler)
        futures = client.compute(list(collections))
        if progress:
            from distributed import progress as dist_progress

            dist_progress(futures)
        return tuple(client.gather(futures))

