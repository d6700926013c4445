"""Ownership at every depth: what chunkseg created, recorded when it created it.

``overwrite=True`` replaces only what chunkseg wrote. For a Zarr store, every node chunkseg
creates (the root group, each subgroup, each array) carries the attribute :data:`MARKER` in its
own ``zarr.json``, set as it is created (:func:`stamp`, :func:`require_group`; the array
creator :func:`chunkseg.outputs._arrays.create_array` stamps every array), and the only other
objects of such a store are the chunk (or shard) keys of those arrays. For a folder of files (a
bioimage.io package), the file :data:`RECORD` lists, relative to the folder, every file
chunkseg wrote there. :func:`foreign_zarr_entries` and :func:`foreign_folder_entries` walk the
whole tree and return what is not so accounted for: a user's file in a subfolder, a user's
Zarr array added to an output, a stray file in a chunk folder. A replacement that finds any is
refused and names them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._version import MARKER, __version__

__all__ = ["MARKER", "RECORD", "foreign_folder_entries", "foreign_zarr_entries",
           "read_record", "require_group", "stamp", "write_record"]


RECORD = ".chunkseg-owned.json"
"""File of a folder output listing the files chunkseg wrote there."""


def stamp(attributes: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``attributes`` with the ownership marker added (a new dict)."""
    return {**dict(attributes or {}), MARKER: __version__}


def require_group(parent: Any, name: str, attributes: Mapping[str, Any] | None = None):
    """The subgroup ``name`` of ``parent``, created and stamped as chunkseg's if absent.

    Parameters
    ----------
    parent : zarr.Group
    name : str
        One path component or a ``/``-separated path; each missing group on the way is
        created and stamped.
    attributes : mapping, optional
        Attributes of a newly created (last) group.

    Returns
    -------
    zarr.Group
    """
    group = parent
    parts = [p for p in name.split("/") if p]
    for i, part in enumerate(parts):
        if part in group:
            group = group[part]
        else:
            last = i == len(parts) - 1
            group = group.create_group(part, attributes=stamp(attributes if last else None))
    return group


_PARTIAL = re.compile(r"(.+)\.[0-9a-f]{32}\.partial")
"""zarr's ``LocalStore`` writes a chunk to ``KEY.<uuid hex>.partial`` and renames it to ``KEY``;
a run stopped between the two leaves the ``.partial`` file beside the array's chunks."""


def _chunk_pattern(meta: Mapping[str, Any]) -> re.Pattern[str]:
    """The chunk keys of a Zarr v3 array, relative to the array (default or v2 encoding)."""
    ndim = len(meta.get("shape", ()))
    encoding = meta.get("chunk_key_encoding") or {"name": "default"}
    config = encoding.get("configuration") or {}
    if encoding.get("name") == "v2":
        sep = re.escape(config.get("separator", "."))
        return re.compile(r"\d+" + (sep + r"\d+") * (ndim - 1) if ndim else "0")
    sep = re.escape(config.get("separator", "/"))
    return re.compile("c" + (sep + r"\d+") * ndim)


def foreign_zarr_entries(location: str, storage_options: Mapping[str, Any] | None = None
                         ) -> list[str]:
    """Every object of a Zarr store that chunkseg did not create, at any depth.

    Parameters
    ----------
    location : str
        A local path or fsspec URL of the store's root.
    storage_options : mapping, optional
        fsspec options for a URL.

    Returns
    -------
    list of str
        Paths relative to the root, sorted: files that are neither the ``zarr.json`` of a
        node stamped with :data:`MARKER` nor a chunk key of a stamped array (nor zarr's
        ``.partial`` file of one, left by an interrupted write); a node's
        ``zarr.json`` without the stamp (a user's array or group) is named by its folder.

    Notes
    -----
    Lists every object of the store once and reads each ``zarr.json`` (small JSON documents),
    no chunk.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    root = root.rstrip("/")
    if not fs.isdir(root):
        return [root.rsplit("/", 1)[-1]] if fs.exists(root) else []
    files = sorted(p[len(root) + 1:] for p in fs.find(root, withdirs=False))
    arrays: dict[str, re.Pattern[str]] = {}
    foreign: list[str] = []
    for rel in files:
        if rel == "zarr.json" or rel.endswith("/zarr.json"):
            node = rel[: -len("zarr.json")].rstrip("/")
            try:
                meta = json.loads(fs.cat_file(f"{root}/{rel}"))
            except (OSError, ValueError):
                foreign.append(rel)
                continue
            if not isinstance(meta, dict) or MARKER not in (meta.get("attributes") or {}):
                foreign.append(node or rel)
            elif meta.get("node_type") == "array":
                arrays[node] = _chunk_pattern(meta)
    for rel in files:
        if rel == "zarr.json" or rel.endswith("/zarr.json"):
            continue
        parts = rel.split("/")
        ok = False
        for cut in range(len(parts) - 1, -1, -1):
            node = "/".join(parts[:cut])
            if node in arrays:
                key = "/".join(parts[cut:])
                partial = _PARTIAL.fullmatch(key)  # a chunk write interrupted in zarr's store
                ok = bool(arrays[node].fullmatch(partial[1] if partial else key))
                break
        if not ok:
            foreign.append(rel)
    return sorted(set(foreign))


def write_record(folder: str | os.PathLike, files: Iterable[str | os.PathLike],
                 what: str) -> Path:
    """Record the files chunkseg wrote in a folder output (replaced atomically).

    Parameters
    ----------
    folder : str or os.PathLike
        The output folder (it exists).
    files : iterable of str or os.PathLike
        The files written, absolute or relative to ``folder``.
    what : str
        What the folder is ("a bioimage.io package"), kept in the record.

    Returns
    -------
    pathlib.Path
        The record file, :data:`RECORD` inside ``folder``.
    """
    folder = Path(folder)
    names = sorted({Path(os.path.relpath(Path(folder, f), folder)).as_posix() for f in files}
                   - {RECORD})
    record = folder / RECORD
    tmp = folder / (RECORD + ".tmp")
    tmp.write_text(json.dumps({MARKER: __version__, "what": what, "files": names}, indent=1))
    os.replace(tmp, record)
    return record


def read_record(folder: str | os.PathLike) -> set[str] | None:
    """The files a folder's record lists, or None without a readable record."""
    try:
        data = json.loads((Path(folder) / RECORD).read_text())
        return {str(f) for f in data["files"]}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def foreign_folder_entries(folder: str | os.PathLike, owned: Iterable[str]) -> list[str]:
    """Files (at any depth) and symbolic links of ``folder`` not in ``owned``.

    Parameters
    ----------
    folder : str or os.PathLike
    owned : iterable of str
        Paths relative to ``folder`` (``/``-separated) that chunkseg wrote.

    Returns
    -------
    list of str
        Relative paths, sorted; the record file itself is never foreign. A link is foreign
        even when its name is owned (it is not followed).
    """
    root = Path(folder)
    owned = set(owned) | {RECORD}
    foreign = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in list(dirnames):
            if (base / name).is_symlink():
                foreign.append((base / name).relative_to(root).as_posix())
                dirnames.remove(name)
        for name in filenames:
            rel = (base / name).relative_to(root).as_posix()
            if rel not in owned or (base / name).is_symlink():
                foreign.append(rel)
    return sorted(foreign)
