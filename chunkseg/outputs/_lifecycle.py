"""The life of one Zarr output: checked, leased, built, and swapped in only when complete.

:func:`writing` is what every Zarr writer (:func:`chunkseg.predict_to_zarr`,
:func:`chunkseg.ingest`, :func:`chunkseg.predict_instances`, :func:`chunkseg.label`, the
demo) wraps its writes in:

1. the target check (:func:`chunkseg.outputs._target.check_output_target`: never the input
   under any name, never data chunkseg did not write, at any depth);
2. an exclusive lease on the output (:mod:`chunkseg.outputs._lease`): one writer at a time;
3. replace only on success: with ``overwrite`` on a local store that holds an earlier output,
   the new output is built beside it, in the staging folder ``.<name>.chunkseg-new``, and
   renamed into place only after the writer finished; a run that fails midway leaves the
   earlier output as it was (and its staging folder, which ``resume`` finishes). On an object
   store there is no rename: the earlier output is deleted first (zarr's ``mode="w"``), as
   docs/safety.md says.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._redact import is_url
from ..errors import OutputExistsError, OutputWriteError
from ._lease import acquire
from ._ownership import foreign_zarr_entries
from ._target import _chunkseg_root, check_output_target, describe_location

__all__ = ["Target", "leased", "replacing", "staging_path", "swap_folder", "writing"]

STAGING = ".{name}.chunkseg-new"
RETIRED = ".{name}.chunkseg-old"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a writer writes, and what it means.

    Attributes
    ----------
    store : str, os.PathLike or zarr store
        Where to create and write the output now: the output itself, or its staging folder.
    final : str, os.PathLike or zarr store
        The output as the user named it.
    resume : bool
        Whether an interrupted run's output (at ``store``) is to be finished; False when
        ``resume`` was asked but nothing was there yet (the run starts from scratch).
    staged : bool
        Whether ``store`` is the staging folder, renamed over ``final`` on success.
    """

    store: Any
    final: Any
    resume: bool
    staged: bool


def _local(store: Any) -> str | None:
    if isinstance(store, str | os.PathLike):
        path = os.fspath(store)
        if isinstance(path, str) and not is_url(path):
            return os.path.abspath(os.path.expanduser(path))
    return None


def staging_path(store: Any) -> str | None:
    """The staging folder of a local output (``.<name>.chunkseg-new`` beside it), or None."""
    path = _local(store)
    if path is None:
        return None
    head, name = os.path.split(path.rstrip(os.sep))
    return os.path.join(head, STAGING.format(name=name))


def _ours(path: str) -> bool:
    """A Zarr store chunkseg wrote, holding nothing else (safe to delete)."""
    return _chunkseg_root(path, None) is True and not foreign_zarr_entries(path)


def _clear(path: str, what: str, ours: Callable[[str], bool] | None = None) -> None:
    """Delete a leftover staging or retired folder, only if it is chunkseg's alone."""
    if not os.path.lexists(path):
        return
    if not (ours or _ours)(path):
        raise OutputExistsError(
            f"{what} {describe_location(path)!r} holds data chunkseg did not write; chunkseg "
            "does not delete it. Move it away and run again.")
    shutil.rmtree(path)


@contextlib.contextmanager
def writing(store: Any, *, source: Any = None, overwrite: bool = False, resume: bool = False,
            storage_options: Mapping[str, Any] | None = None,
            what: str = "run") -> Iterator[Target]:
    """Check, lease and stage an output; swap it in when the ``with`` body succeeds.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        The output: a local path, an fsspec URL or a zarr store object (a store object is
        checked, neither leased nor staged).
    source : object, optional
        The input (or a sequence of inputs is not taken: pass the one being read); the output
        must not overlap it under any name.
    overwrite : bool, default False
        Replace an earlier chunkseg output (built beside it and swapped in on success, on a
        local filesystem).
    resume : bool, default False
        Finish an interrupted run: its staging folder if one is there (an interrupted
        ``overwrite``), else the output itself; an absent or empty output starts the run.
    storage_options : mapping, optional
        fsspec options for a URL ``store``.
    what : str, default "run"
        What holds the lease, for the message a second writer gets ("chunkseg predict").

    Yields
    ------
    Target
        Where to write. The caller creates its output at ``target.store`` (``mode="w"``
        unless ``target.resume``).

    Raises
    ------
    chunkseg.errors.OutputOverlapError, chunkseg.errors.OutputExistsError
        From the target check, before anything is written.
    chunkseg.errors.OutputLockedError
        If another run holds the output's lease.
    """
    earlier = check_output_target(store, source=source, overwrite=overwrite or resume,
                                  storage_options=storage_options)
    local = _local(store)
    held = (acquire(store, storage_options=storage_options, command=what)
            if isinstance(store, str | os.PathLike) else contextlib.nullcontext())
    with held:
        staging = staging_path(store)
        if resume and staging is not None and os.path.isdir(staging):
            target = Target(staging, store, True, True)
        elif resume:
            target = Target(store, store, earlier, False)
        elif overwrite and local is not None and earlier:
            _clear(staging, "The staging folder")
            target = Target(staging, store, False, True)
        else:
            target = Target(store, store, False, False)
        yield target
        if target.staged:
            _swap(staging, local)


def _swap(staging: str, final: str, ours: Callable[[str], bool] | None = None) -> None:
    """Rename ``staging`` over ``final``; the earlier output is deleted only after.

    ``ours`` tells whether a leftover retired folder (a crash between the two renames of an
    earlier swap) is chunkseg's to delete; default: a Zarr store chunkseg wrote, alone."""
    head, name = os.path.split(final.rstrip(os.sep))
    retired = os.path.join(head, RETIRED.format(name=name))
    _clear(retired, "The earlier output's folder", ours)
    if os.path.lexists(final):
        os.rename(final, retired)
    os.rename(staging, final)
    if os.path.lexists(retired):
        shutil.rmtree(retired)


def leased(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a writer that adds to an existing output (its ``store`` and
    ``storage_options`` arguments) so that it holds the output's lease while it runs.

    Parameters
    ----------
    what : str
        The command, recorded in the lease for the message a second writer gets.
    """
    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            store = bound.arguments.get("store")
            if not isinstance(store, str | os.PathLike):
                return func(*args, **kwargs)
            options = bound.arguments.get("storage_options")
            with acquire(store, storage_options=options if is_url(os.fspath(store)) else None,
                         command=what):
                return func(*args, **kwargs)
        return run
    return wrap


@contextlib.contextmanager
def replacing(path: str | os.PathLike) -> Iterator[Path]:
    """Write a single file beside its target and rename it into place on success.

    Parameters
    ----------
    path : str or os.PathLike
        The file to (re)write; its folder is created if absent. Check it first
        (:func:`chunkseg.outputs._target.check_output_files`).

    Yields
    ------
    pathlib.Path
        The file to write: ``.<name>.chunkseg-new<suffix>`` beside ``path`` (the suffix kept,
        for writers that choose the format by it). Renamed over ``path`` (``os.replace``,
        atomic on one filesystem) when the ``with`` body succeeds; deleted when it fails, so
        an earlier file at ``path`` is left as it was.

    Raises
    ------
    chunkseg.errors.OutputWriteError
        If the folder cannot be written (no permission, a file where a folder should be).
    """
    final = Path(path)
    part = final.with_name(f".{final.stem}.chunkseg-new{final.suffix}")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        yield part
        os.replace(part, final)
    except (PermissionError, IsADirectoryError, NotADirectoryError, FileNotFoundError,
            FileExistsError) as err:
        # the machine's answer, named: a folder that cannot be written
        raise OutputWriteError(
            f"writing {describe_location(final)!r} failed ({type(err).__name__}: "
            f"{err.strerror or err}); an earlier file there is unchanged. Choose a folder you "
            "can write to.") from err
    finally:
        with contextlib.suppress(OSError):  # nothing there, or no folder to hold it
            part.unlink()


def swap_folder(staging: str | os.PathLike, final: str | os.PathLike,
                ours: Callable[[str], bool]) -> None:
    """Rename a folder output built in ``staging`` (see :func:`staging_path`) over ``final``.

    Parameters
    ----------
    staging, final : str or os.PathLike
        The complete new output, and the earlier one (checked as chunkseg's by the writer
        before it started: :func:`chunkseg.outputs._target.check_output_folder`).
    ours : callable
        ``ours(path) -> bool``: whether a leftover retired folder of a crashed earlier swap is
        chunkseg's to delete (else the swap is refused and nothing is deleted).
    """
    _swap(os.fspath(staging), os.path.abspath(os.fspath(final)), ours)
