"""Location identity: one value per place, however the place is named.

Every overlap decision (is the output the input, inside it, around it?) compares identities,
never strings (the rule of fsspec's ``url_to_fs`` with the filesystem's ``_strip_protocol``, of
:func:`os.path.samefile` and of zarr's ``StorePath``):

- a local path and a ``file://`` URL resolve to the real path (``~`` expanded, symbolic links
  resolved), and, where the path or one of its folders exists, to the ``(st_dev, st_ino)`` of
  each existing folder on the way, so a bind mount or a hard link of the input is the input;
- an object-store URL resolves to its filesystem class's canonical protocol (``s3a://`` is
  ``s3://``: s3fs serves both), its path with repeated and trailing slashes folded, and no user
  name, password, query or fragment; a protocol fsspec does not know (``s3n``) is mapped to the
  one it aliases where that is known (:data:`PROTOCOL_ALIASES`), else kept in lower case.

Anything else (a zarr store object, an in-memory array) has no identity and overlaps nothing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .._redact import is_url

__all__ = ["Location", "PROTOCOL_ALIASES", "overlaps", "resolve"]

PROTOCOL_ALIASES: dict[str, str] = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "az": "abfs",
                                    "https": "http", "local": "file"}
"""Protocols that name the same storage service as another, mapped to that one (used when
fsspec cannot load the filesystem class to ask it; its first protocol wins otherwise)."""


@dataclass(frozen=True, slots=True)
class Location:
    """The identity of a place where data is read or written.

    Attributes
    ----------
    protocol : str
        ``"file"`` for the local filesystem, else the canonical fsspec protocol (``"s3"``).
    path : str
        The real path (local), or the bucket and key with single slashes and no trailing one.
    inodes : tuple of (int, int, str)
        Local only: ``(st_dev, st_ino, rest)`` of the path's nearest existing folder or file and
        of each existing folder above it, nearest first, where ``rest`` is what of the path
        lies below that folder (``""`` for the path itself). Empty for URLs.
    """

    protocol: str
    path: str
    inodes: tuple[tuple[int, int, str], ...] = ()

    @property
    def local(self) -> bool:
        """Whether the location is on the local filesystem."""
        return self.protocol == "file"


def _canonical_protocol(protocol: str) -> str:
    protocol = protocol.lower()
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(protocol)
        names = cls.protocol if isinstance(cls.protocol, tuple | list) else (cls.protocol,)
        return PROTOCOL_ALIASES.get(names[0], names[0])
    except (ImportError, ValueError):
        return PROTOCOL_ALIASES.get(protocol, protocol)


def _local_inodes(path: str) -> tuple[tuple[int, int, str], ...]:
    found = []
    head, rest = path, ""
    while True:
        try:
            st = os.stat(head)
        except OSError:
            pass
        else:
            found.append((st.st_dev, st.st_ino, rest))
        parent = os.path.dirname(head)
        if parent == head:
            return tuple(found)
        name = os.path.basename(head)
        rest = name if not rest else f"{name}/{rest}"
        head = parent


def resolve(location: Any) -> Location | None:
    """The identity of a path or URL; None for anything else.

    Parameters
    ----------
    location : str, os.PathLike or object
        A local path, a ``file://`` URL, an fsspec URL (``s3://bucket/key``), or anything else
        (a zarr store object, an array), which has no identity.

    Returns
    -------
    Location or None
        None also for a chained URL (``zip::s3://...``), whose parts are not compared.

    Notes
    -----
    Local paths are stat-ed (no file is opened); URLs are parsed only, with no network access.
    """
    if not isinstance(location, str | os.PathLike):
        return None
    text = os.fspath(location)
    if not isinstance(text, str):
        return None
    if is_url(text):
        if "::" in text:
            return None
        split = urlsplit(text)
        protocol = _canonical_protocol(split.scheme)
        if protocol != "file":
            path = re.sub("/+", "/", f"{split.netloc.rpartition('@')[2]}/{split.path}")
            return Location(protocol, path.strip("/"))
        text = split.path
    real = os.path.realpath(os.path.expanduser(text))
    return Location("file", real, _local_inodes(real))


def _inside(inner: Location, outer: Location) -> bool:
    """Whether ``inner`` is ``outer`` or lies inside it."""
    if inner.protocol != outer.protocol:
        return False
    if not inner.local:
        return inner.path == outer.path or inner.path.startswith(outer.path + "/") \
            or not outer.path
    if os.path.commonpath([inner.path, outer.path]) == outer.path:
        return True
    # another name for the same folder (a bind mount, a hard link): outer's own inode is
    # inner's or one of the folders above inner
    if not outer.inodes or outer.inodes[0][2]:
        return False  # outer does not exist: only its path can be compared
    dev, ino, _ = outer.inodes[0]
    return any((d, i) == (dev, ino) for d, i, _ in inner.inodes)


def overlaps(a: Any, b: Any) -> bool:
    """Whether two locations are the same, or one lies inside the other.

    Parameters
    ----------
    a, b : str, os.PathLike, Location or object
        Paths or URLs (resolved with :func:`resolve`), or identities already resolved.
        Anything without an identity overlaps nothing.

    Returns
    -------
    bool
    """
    la = a if isinstance(a, Location) else resolve(a)
    lb = b if isinstance(b, Location) else resolve(b)
    if la is None or lb is None:
        return False
    return _inside(la, lb) or _inside(lb, la)
