"""The installed version of chunkseg, read once: what every output, lease and record stamps."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["MARKER", "__version__"]

MARKER = "chunkseg_version"
"""Attribute of every Zarr node (group or array) chunkseg created; its value is the version.
Read by :mod:`chunkseg.outputs` (ownership) and :mod:`chunkseg.io` (an unfinished ingest)."""

try:
    __version__: str = version("chunkseg")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"
