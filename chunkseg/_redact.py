"""One redaction for every message, warning and attribute chunkseg writes.

The lowest layer of the package (standard library only): :mod:`chunkseg.io` and
:mod:`chunkseg.outputs` both describe locations through it, so no credential of a URL
reaches an error message, a log line or an output's ``zarr.json``.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["is_url", "redact_location"]


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``memory://...``, ``zip::s3://...``)."""
    return "://" in path or "::" in path


def redact_location(location: str) -> str:
    """``location`` without user name, password, query or fragment.

    Parameters
    ----------
    location : str
        A local path (returned as it is) or an fsspec URL, possibly chained with ``::``.

    Returns
    -------
    str
        The URL with the user information (``user:password@``), the query (``?token=...``) and
        the fragment removed from every part of the chain.
    """
    if not is_url(location):
        return location
    parts = []
    for part in location.split("::"):
        split = urlsplit(part)
        netloc = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return "::".join(parts)
