"""Progress on stderr: one labelled bar per stage of a command (loading the model, predicting
the chunks, each pyramid level, labelling, measuring regions, figures, seams, evaluation).

The one place of chunkseg's progress display; :func:`chunkseg.scheduling.compute` drives it
for every Dask computation, with :class:`TaskProgress` (a ``dask.callbacks.Callback``) on
dask's local schedulers and :func:`watch_futures` (``distributed.as_completed``) on a cluster;
:func:`stage` is the bar of a step that is not a Dask computation (loading a model, drawing
figures). Everything is written to ``sys.stderr``, never stdout (which carries the results a
command prints):

- stderr a terminal: a `tqdm <https://tqdm.github.io>`_ bar per stage, ``chunkseg: LABEL:
  40%|####      | 4/10 [00:02<00:03, ...]``, refreshed in place and left on screen when the
  stage ends.
- otherwise (a log file, CI): no carriage returns; one line when the stage starts, one a
  minute while it runs (:data:`LOG_INTERVAL`) and one when it ends, e.g. ``chunkseg:
  predicting 484 chunks: 120/484 (25%) 0:01:00``.

This module imports nothing of chunkseg (it is below :mod:`chunkseg.scheduling`).
"""

from __future__ import annotations

import contextlib
import datetime
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from dask.callbacks import Callback
from tqdm import tqdm

__all__ = ["Stage", "stage", "TaskProgress", "watch_futures", "LOG_INTERVAL", "PREFIX"]

#: Seconds between two lines of a stage when stderr is not a terminal.
LOG_INTERVAL = 60.0
#: Seconds between two redraws of a terminal bar that gets no update (its elapsed time).
REDRAW_INTERVAL = 1.0
#: What every line starts with.
PREFIX = "chunkseg: "


def _is_terminal(file: Any) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def _clock(seconds: float) -> str:
    """``0:01:05`` for 65.3 s."""
    return str(datetime.timedelta(seconds=int(seconds)))


class Stage:
    """One labelled progress bar on stderr (or nothing, when not ``enabled``).

    Parameters
    ----------
    label : str
        What the stage does, e.g. ``"predicting 484 chunks"``, ``"pyramid level 2"``.
    total : int, optional
        Units of work (tasks, chunks, figures); None for a step of unknown length (its
        elapsed time is shown). :meth:`set_total` sets it later.
    enabled : bool, default True
        False: a stage that shows nothing (the ``progress=False`` of chunkseg's functions).
    file : text stream, optional
        Where to write; default ``sys.stderr`` at the time the stage starts.

    Notes
    -----
    With ``file`` a terminal the bar is ``tqdm.tqdm`` (redrawn every :data:`REDRAW_INTERVAL`
    s even without progress); otherwise plain lines: ``chunkseg: LABEL: started``, then every
    :data:`LOG_INTERVAL` s ``chunkseg: LABEL: N/TOTAL (P%) H:MM:SS`` (``... running
    H:MM:SS`` without a total), and ``..., done`` (``..., stopped`` after an error) at the end.
    Both redraws come from one daemon thread per stage, stopped by :meth:`close`.
    """

    def __init__(self, label: str, total: int | None = None, *, enabled: bool = True,
                 file: TextIO | None = None) -> None:
        self.label = str(label)
        self.total = None if total is None else int(total)
        self.n = 0
        self.enabled = bool(enabled)
        self._closed = False
        self._bar: Any = None
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not self.enabled:
            return
        self._file = sys.stderr if file is None else file
        self._t0 = time.monotonic()
        self.terminal = _is_terminal(self._file)
        if self.terminal:
            # without a total: the label and the time it has run
            self._bar = tqdm(total=self.total, desc=PREFIX + self.label, file=self._file,
                             leave=True, dynamic_ncols=True,
                             bar_format="{desc}: {elapsed}" if self.total is None else None)
        else:
            self._line("started")
        self._ticker = threading.Thread(target=self._tick, daemon=True,
                                        name=f"chunkseg progress: {self.label}")
        self._ticker.start()

    # -- counting -----------------------------------------------------------------------------

    def set_total(self, total: int) -> None:
        """Set the units of work (once known, e.g. when the task graph is ready)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.bar_format = None  # tqdm's default bar, now that it has a total
            self._bar.total = self.total
            self._bar.refresh()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        self.n += int(n)
        if self._bar is not None:
            self._bar.update(int(n))

    def close(self, failed: bool = False) -> None:
        """End the stage: the terminal bar is left as it is, or the last line is written."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._bar is not None:
            self._bar.close()
        else:
            self._line(f"{self._state()}, {'stopped' if failed else 'done'}")

    # -- display ------------------------------------------------------------------------------

    def _state(self) -> str:
        elapsed = _clock(time.monotonic() - self._t0)
        if self.total is None:
            return f"{self.n} done, {elapsed}" if self.n else elapsed
        pct = 100 * self.n // self.total if self.total else 100
        return f"{self.n}/{self.total} ({pct}%) {elapsed}"

    def _line(self, text: str) -> None:
        print(f"{PREFIX}{self.label}: {text}", file=self._file, flush=True)

    def _tick(self) -> None:
        interval = REDRAW_INTERVAL if self.terminal else LOG_INTERVAL
        while not self._stop.wait(interval):
            if self._bar is not None:
                self._bar.refresh()
            else:
                self._line(self._state())


@contextlib.contextmanager
def stage(label: str, progress: bool = True, total: int | None = None) -> Iterator[Stage]:
    """A :class:`Stage` for the block: closed at its end (``stopped`` after an exception).

    Parameters
    ----------
    label : str
        What the stage does (``"loading the model"``, ``"drawing 5 figures"``).
    progress : bool, default True
        False: the stage shows nothing (callers pass their ``progress`` argument).
    total : int, optional
        Units of work; None for a step of unknown length.

    Yields
    ------
    Stage
        Call :meth:`Stage.update` as units finish.

    Examples
    --------
    >>> with stage("loading the model", progress=False):
    ...     pass
    """
    bar = Stage(label, total, enabled=progress)
    try:
        yield bar
    except BaseException:
        bar.close(failed=True)
        raise
    bar.close()


class TaskProgress(Callback):
    """A ``dask.callbacks.Callback`` counting finished tasks into a :class:`Stage`.

    For dask's local schedulers (threads, processes, synchronous), used as a context manager
    around ``dask.compute``. The total is set when the scheduler starts (``_start_state``):
    every task of the graph as it runs (after dask's optimisation), or the tasks of ``count``
    among them; each finished one (``_posttask``) adds one.

    Parameters
    ----------
    bar : Stage
    count : iterable of keys, optional
        Count only these tasks (e.g. the chunk tasks of a prediction, not its block reads).
        Default: every task.
    """

    def __init__(self, bar: Stage, count: Iterable[Any] | None = None) -> None:
        super().__init__()
        self.bar = bar
        self.count = None if count is None else frozenset(count)

    def _start_state(self, dsk, state) -> None:
        if self.count is None:
            total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        else:
            total = sum(1 for k in dsk if k in self.count)
        self.bar.set_total(total)

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        if self.count is None or key in self.count:
            self.bar.update(1)


def watch_futures(futures: list, bar: Stage) -> None:
    """Count ``futures`` into ``bar`` as they finish (``distributed.as_completed``).

    The total is ``len(futures)``. Each future is released here as soon as it is counted (the
    list is emptied), so a counted result is not held in a worker's memory for the bar. The
    first errored or cancelled future ends the watch and releases the others (the cluster
    stops computing what only they wanted); the caller's ``gather`` then raises its error.
    """
    from distributed import as_completed

    bar.set_total(len(futures))
    pending = as_completed(futures)
    futures.clear()
    for future in pending:
        if future.status in ("error", "cancelled"):
            pending.clear()
            return
        bar.update(1)
