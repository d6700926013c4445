"""The exceptions chunkseg raises.

Each subclasses the built-in exception that callers already catch (the pattern of zarr-python's
``zarr.errors``), so ``except ValueError`` still works.
"""

from __future__ import annotations

__all__ = [
    "ChunksegError",
    "ModelOutputError",
    "OutputExistsError",
    "OutputOverlapError",
    "ChunkAlignmentError",
    "IncompleteOutputWarning",
    "RunInterruptedError",
]


class ChunksegError(Exception):
    """Base class of every exception raised by chunkseg itself."""


class ModelOutputError(ChunksegError, ValueError):
    """The model returned an array of the wrong shape, dtype or with non-finite values."""


class OutputExistsError(ChunksegError, FileExistsError):
    """The output store already holds data and ``overwrite`` was not requested."""


class OutputOverlapError(ChunksegError, ValueError):
    """The output location is, contains or lies inside the input being read."""


class ChunkAlignmentError(ChunksegError, ValueError):
    """A write task would not own whole Zarr chunks (the write would be a read-modify-write)."""


class RunInterruptedError(ChunksegError, RuntimeError):
    """A run stopped before it finished (its cluster's scheduler was lost, say); the chunks
    written so far are marked, and ``resume=True`` finishes it."""


class IncompleteOutputWarning(UserWarning):
    """An output is being read before the run that writes it has finished."""
