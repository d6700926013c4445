"""Where a cluster runs the block tasks: the graph's shared keys on every worker first.

Every block task depends on the runner (one graph key, :func:`chunkseg.engine.core.blend_graph`)
and every chunk task on the writer. Computed as ordinary tasks, both live on one worker, and
the scheduler sends each task to a worker holding its dependencies: all the blocks queue on
that worker while the others wait for work stealing (2048^2 in four blocks on two
single-threaded workers: three blocks on one worker, 1.25 to 1.5 times the threaded time with
a model that sleeps). Scattered to every worker beforehand under their graph keys, they count
as held everywhere, and the scheduler spreads the blocks by the workers' occupancy (the sleeping
model: 0.98 to 1.06 times the threaded time; the shipped U-Net: 1.28 to 1.33 instead of 1.66 to
1.70, the rest being slower blocks in the worker processes, on a busy machine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["SHARED_PREFIXES", "on_every_worker"]

#: Graph keys every block or chunk task depends on (runner, writer), by name prefix.
SHARED_PREFIXES = ("chunkseg-runner-", "chunkseg-context-")


@contextlib.contextmanager
def on_every_worker(client: Any, dsk: dict) -> Iterator[list]:
    """Hold ``dsk``'s shared keys (:data:`SHARED_PREFIXES`) on every worker of ``client``.

    Parameters
    ----------
    client : distributed.Client or None
        None (dask's local schedulers): nothing is done.
    dsk : dict
        The graph; its shared keys keep their values (the scheduler finds them already in
        memory and does not run them again).

    Yields
    ------
    list of distributed.Future
        The scattered keys, released on exit.
    """
    if client is None:
        yield []
        return
    shared = {k: v for k, v in dsk.items()
              if isinstance(k, str) and k.startswith(SHARED_PREFIXES)}
    futures = client.scatter(shared, broadcast=True, hash=False) if shared else {}
    try:
        yield list(futures.values())
    finally:
        for f in futures.values():
            f.release()
