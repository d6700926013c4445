"""The exceptions chunkseg raises.

Each subclasses the built-in exception that callers already catch (the pattern of zarr-python's
``zarr.errors``), so ``except ValueError`` still works.
"""

from __future__ import annotations

__all__ = [
    "ChunksegError",
    "InvalidValueError",
    "InvalidTypeError",
    "NotFoundError",
    "MissingDependencyError",
    "InputReadError",
    "OutputWriteError",
    "ModelOutputError",
    "ModelRunError",
    "OutputExistsError",
    "NotAnOutputError",
    "OutputLockedError",
    "OutputOverlapError",
    "ChunkAlignmentError",
    "IncompleteOutputWarning",
    "LargeObjectWarning",
    "Float16OverflowWarning",
    "RunInterruptedError",
    "SchedulerError",
]


class ChunksegError(Exception):
    """Base class of every exception raised by chunkseg itself."""


class InvalidValueError(ChunksegError, ValueError):
    """An argument has a value its rule does not allow (``overlap >= tile``, an unknown window
    name...). The message names the parameter, the rule, the value got and the fix."""


class InvalidTypeError(ChunksegError, TypeError):
    """An argument has a type chunkseg does not take (a float ``tile``, a complex image...)."""


class NotFoundError(ChunksegError, FileNotFoundError):
    """An input image, a model file or an output to resume does not exist."""


class MissingDependencyError(ChunksegError, ImportError):
    """An optional dependency that this input or model needs is not installed."""


class InputReadError(ChunksegError, OSError):
    """Reading the input failed (a truncated or corrupt chunk, an unreadable file); the message
    names the store and the pixels being read."""


class OutputWriteError(ChunksegError, OSError):
    """Writing an output chunk failed (disk full, no permission, the object store refused);
    the chunks written before are marked, and ``resume=True`` finishes the run."""


class ModelOutputError(ChunksegError, ValueError):
    """The model returned an array of the wrong shape, dtype or with non-finite values."""


class ModelRunError(ChunksegError, RuntimeError):
    """The model raised an exception on a batch of tiles; the message names the chunk, the
    model's exception type and message (chained as ``__cause__``), and, mid-run, that
    ``resume=True`` finishes the run once the model is fixed."""


class OutputExistsError(ChunksegError, FileExistsError):
    """The output store already holds data and ``overwrite`` was not requested."""


class NotAnOutputError(NotFoundError, ValueError):
    """A location read as a chunkseg output holds none: nothing is there, or a Zarr node that
    chunkseg did not write (no ``chunkseg_version`` attribute), or one whose metadata was
    changed. Both a ``FileNotFoundError`` and a ``ValueError``, as callers caught before."""


class OutputLockedError(ChunksegError, FileExistsError):
    """Another run holds the output's lease (it is being written, overwritten or resumed); the
    message names the holder (host, pid, start time) and how to break a lease whose run is gone."""


class OutputOverlapError(ChunksegError, ValueError):
    """The output location is, contains or lies inside the input being read."""


class ChunkAlignmentError(ChunksegError, ValueError):
    """A write task would not own whole Zarr chunks (the write would be a read-modify-write)."""


class SchedulerError(ChunksegError, OSError):
    """The dask.distributed scheduler named by ``scheduler`` could not be reached; nothing was
    written."""


class RunInterruptedError(ChunksegError, RuntimeError):
    """A run stopped before it finished (its cluster's scheduler was lost, say); the chunks
    written so far are marked, and ``resume=True`` finishes it."""


class IncompleteOutputWarning(UserWarning):
    """An output is being read before the run that writes it has finished."""


class LargeObjectWarning(UserWarning):
    """Some kept objects touch an inner edge of their tile: larger than the overlap's context,
    they may be split or duplicated."""


class Float16OverflowWarning(UserWarning):
    """Float16 logits beyond the float16 range (+-65504) were clamped to it instead of
    becoming infinite; warned once per run, with the count of the first chunk that had any."""
