"""One check for every output target: never the input, never data chunkseg did not write.

Used by every writer before anything is computed or written: Zarr stores
(:func:`check_output_target`: :func:`chunkseg.predict_to_zarr`, :func:`chunkseg.ingest`, the
demo), folders of files (:func:`check_output_folder`: a training run, a bioimage.io package)
and single files (:func:`check_output_files`: figures, reports). Zarr outputs chunkseg writes
carry ``attrs["chunkseg_version"]`` at their root, folders a marker file; with
``overwrite=True`` only such an output is replaced, and only when it holds nothing but what
chunkseg writes there.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

from .._redact import redact_location as _redact
from ..errors import OutputExistsError, OutputOverlapError
from ..io import store_has_data
from ._identity import overlaps
from ._ownership import (
    MARKER,
    RECORD,
    foreign_folder_entries,
    foreign_zarr_entries,
    read_record,
)

__all__ = ["MARKER", "check_output_files", "check_output_folder", "check_output_target",
           "describe_location", "folder_is_replaceable"]


def describe_location(store: Any) -> str:
    """A path or URL without credentials, or the type of a store object, for messages."""
    if isinstance(store, str | os.PathLike):
        return _redact(os.fspath(store))
    return type(store).__name__


def _chunkseg_root(target: Any, options: Mapping[str, Any] | None) -> bool | None:
    """True if a Zarr node written by chunkseg is at ``target``, False if another Zarr node,
    None if no Zarr node."""
    import zarr

    kwargs: dict[str, Any] = {"mode": "r"}
    if options is not None:
        kwargs["storage_options"] = dict(options)
    try:
        node = zarr.open(store=target, **kwargs)
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError):
        return None
    return MARKER in node.attrs


def check_output_target(
    store: Any,
    *,
    source: Any = None,
    overwrite: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> bool:
    """Refuse an output target that would lose the user's data; before anything is written.

    Parameters
    ----------
    store : str, os.PathLike or zarr store
        The output: a local path, an fsspec URL or a zarr store object.
    source : object, optional
        The input; when it is a path or URL, ``store`` must not be it, contain it or lie
        inside it.
    overwrite : bool, default False
        Allow replacing a store that chunkseg wrote (``attrs["chunkseg_version"]`` at its root)
        and that holds nothing but Zarr nodes.
    storage_options : mapping, optional
        fsspec options for a URL ``store``.

    Returns
    -------
    bool
        Whether ``store`` holds data (an earlier output, accepted for replacement), so that
        callers need not look again.

    Raises
    ------
    chunkseg.errors.OutputOverlapError
        If ``store`` is, contains or lies inside a path/URL ``source``.
    chunkseg.errors.OutputExistsError
        If ``store`` holds data and ``overwrite`` is False; or, with ``overwrite``, if what it
        holds is not a Zarr store, is a Zarr store chunkseg did not write, or holds other files
        beside its Zarr nodes.
    """
    where = describe_location(store)
    if overlaps(source, store):
        raise OutputOverlapError(
            f"`store` must not overlap the `source` being read (be it, contain it or lie inside "
            f"it). Got store {where!r} for source {_redact(os.fspath(source))!r}. Write to "
            "another path."
        )
    if not store_has_data(store, storage_options=storage_options):
        return False
    if not overwrite:
        raise OutputExistsError(
            f"`store` must be empty or absent unless `overwrite=True`. Got {where!r}, which "
            "already holds data. Choose a new path, or pass `overwrite=True` (CLI: "
            "`--overwrite`) to replace a previous chunkseg output."
        )
    written = _chunkseg_root(store, storage_options)
    if written is None:
        raise OutputExistsError(
            f"`store` {where!r} holds data that is not a Zarr array or group. chunkseg does not "
            "delete it even with overwrite=True; remove it yourself or choose another path."
        )
    if not written:
        raise OutputExistsError(
            f"`store` {where!r} is a Zarr store that chunkseg did not write (no "
            f"'{MARKER}' attribute). chunkseg replaces only its own outputs, even with "
            "overwrite=True; remove it yourself or choose another path."
        )
    if isinstance(store, str | os.PathLike):
        foreign = foreign_zarr_entries(os.fspath(store), storage_options)
        if foreign:
            more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
            raise OutputExistsError(
                f"`store` {where!r} holds entries chunkseg did not write (files, or Zarr nodes "
                f"without its '{MARKER}' attribute), at any depth: {foreign[:5]}{more}. chunkseg "
                "does not delete them even with overwrite=True; move them or choose another "
                "path."
            )
    return True


def check_output_folder(folder: str | os.PathLike, *, markers: Collection[str],
                        what: str, overwrite: bool = False,
                        owned: Collection[str] | None = None,
                        hint: str = "pass overwrite=True (CLI: --overwrite) to replace it"
                        ) -> list[Path]:
    """Refuse a non-empty output folder unless it is chunkseg's and ``overwrite`` is set.

    Parameters
    ----------
    folder : str or os.PathLike
        A local folder that will receive files (absent or empty is fine).
    markers : collection of str
        File names of which one marks the folder as written by chunkseg (``train.json`` for a
        training run, ``rdf.yaml`` for a bioimage.io package).
    what : str
        What such a folder is, for messages (``"a chunkseg training run"``).
    overwrite : bool, default False
        Allow replacing a marked folder.
    owned : collection of str, optional
        The file names chunkseg writes at the folder's top level; any other entry (a folder,
        a link, another file) is refused, never deleted. None: the folder's ownership record
        (:data:`chunkseg.outputs._ownership.RECORD`, written by
        :func:`~chunkseg.outputs._ownership.write_record`) lists the files chunkseg wrote, at
        any depth; a folder without a readable record, or with any file it does not list, is
        refused.
    hint : str
        How to replace an earlier output, for the message without ``overwrite``.

    Returns
    -------
    list of pathlib.Path
        The files the caller removes before writing (empty for an absent or empty folder);
        folders emptied by that removal are the caller's to remove.

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If ``folder`` is a file; or holds entries and ``overwrite`` is False; or, with
        ``overwrite``, holds no marker, or entries outside ``owned``.
    """
    path = Path(folder)
    where = describe_location(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"`out` must be a folder path. Got {where!r}, which is a file; "
                                "choose another path.")
    entries = sorted(path.iterdir()) if path.is_dir() else []
    if not entries:
        return []
    marked = any((path / m).is_file() for m in markers)
    if not overwrite:
        why = f"it holds {what}; {hint}" if marked else (
            f"it is not {what} (no {' or '.join(markers)}); choose another folder")
        raise OutputExistsError(f"`out` folder {where!r} must be empty. Got {len(entries)} "
                                f"entries: {why}.")
    if not marked:
        raise OutputExistsError(
            f"`out` folder {where!r} is not {what} (no {' or '.join(markers)}); chunkseg "
            "replaces only its own outputs, even with overwrite=True. Choose another folder.")
    if owned is not None:
        foreign = [e.name for e in entries
                   if e.name not in owned or e.is_symlink() or not e.is_file()]
        files = [e for e in entries if e.name != RECORD]
    else:
        record = read_record(path)
        foreign = (foreign_folder_entries(path, record) if record is not None
                   else [f"{RECORD} (missing: chunkseg cannot tell its files from others)"])
        files = [path / f for f in sorted(record or ()) if (path / f).is_file()]
    if foreign:
        raise OutputExistsError(
            f"`out` folder {where!r} holds entries chunkseg did not write there ({foreign[:5]}); "
            "every depth was checked and nothing was deleted. Move them or choose another "
            "folder.")
    return files + ([path / RECORD] if (path / RECORD).is_file() else [])


def folder_is_replaceable(folder: str | os.PathLike, *, markers: Collection[str], what: str,
                          owned: Collection[str] | None = None) -> bool:
    """Whether :func:`check_output_folder` with ``overwrite=True`` accepts ``folder`` (it
    holds only what chunkseg wrote there: safe to delete), instead of raising.

    Parameters
    ----------
    folder, markers, what, owned
        As :func:`check_output_folder`.

    Returns
    -------
    bool
        True for an absent or empty folder too.
    """
    try:
        check_output_folder(folder, markers=markers, what=what, overwrite=True, owned=owned)
    except OutputExistsError:
        return False
    return True


def check_output_files(paths: Iterable[str | os.PathLike], *, overwrite: bool = False,
                       sources: Iterable[Any] = ()) -> None:
    """Refuse to replace existing files unless ``overwrite``; never a folder or an input.

    Parameters
    ----------
    paths : iterable of str or os.PathLike
        The files a writer is about to create.
    overwrite : bool, default False
        Allow replacing existing files (only files: a folder at one of the paths is refused).
    sources : iterable, optional
        The inputs being read; a path that is one of them (or inside one) is refused even with
        ``overwrite``.

    Raises
    ------
    chunkseg.errors.OutputOverlapError
        If a path overlaps a path/URL in ``sources``.
    chunkseg.errors.OutputExistsError
        If a path is a folder, or an existing file without ``overwrite``.
    """
    sources = [s for s in sources if s is not None]
    for p in paths:
        path = Path(p)
        for source in sources:
            if overlaps(source, path):
                raise OutputOverlapError(
                    f"`out` must not be an input being read. Got {describe_location(path)!r} "
                    f"for input {describe_location(source)!r}; write to another path.")
        if path.is_dir():
            raise OutputExistsError(f"`out` {describe_location(path)!r} must be a file path. Got "
                                    "a folder; choose another path.")
        if path.exists() and not overwrite:
            raise OutputExistsError(
                f"`out` must not hold an earlier {path.name} unless overwrite is set. Got "
                f"{describe_location(path)!r}, which exists; pass overwrite=True (CLI: "
                "--overwrite) or choose another path.")
