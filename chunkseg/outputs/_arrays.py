"""One Zarr writer for every writer: array creation, the alignment check, chunk writes.

:func:`chunkseg.predict_to_zarr`, :func:`chunkseg.ingest` and the demo mosaic create their
arrays with :func:`create_array`, check with :func:`check_aligned` that every write task owns
whole Zarr chunks (the rule of xarray's ``backends/chunks.py``: a task that shared a chunk would
read-modify-write it, and two tasks could lose each other's pixels), and write through
:class:`ArrayWriter`, which turns a failed write (disk full, no permission, an object store
refusing) into one :class:`chunkseg.errors.OutputWriteError` naming the array, the pixels and
the store.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._redact import redact_text
from ..errors import ChunkAlignmentError, OutputWriteError
from ._ownership import stamp

__all__ = ["ArrayWriter", "check_aligned", "create_array"]


def check_aligned(name: str, blocks: Sequence[Sequence[int]], zarr_chunks: Sequence[int]) -> None:
    """Refuse a parallel write in which a task would not own whole Zarr chunks.

    Parameters
    ----------
    name : str
        The array, for the message.
    blocks : sequence of sequence of int
        Per axis, the lengths of the write tasks' blocks (a dask array's ``chunks``, or a
        plan's ``output_chunks()``), pixels.
    zarr_chunks : sequence of int
        The Zarr chunk shape along the same axes; for a sharded array, the shard shape (the
        unit of a write).

    Raises
    ------
    chunkseg.errors.ChunkAlignmentError
        If a block along some axis starts off a multiple of the Zarr chunk there. Then two
        tasks would write parts of one Zarr chunk (each a read-modify-write of the other's).
    """
    if len(blocks) != len(zarr_chunks):
        raise ValueError(f"{len(blocks)} axes of blocks for {len(zarr_chunks)} of chunks")
    for axis, (lengths, size) in enumerate(zip(blocks, zarr_chunks)):
        starts = np.cumsum((0,) + tuple(lengths[:-1]))
        if np.any(starts % size):
            raise ChunkAlignmentError(
                f"`{name}`: every write task must own whole Zarr chunks, so its blocks must start "
                f"on multiples of the Zarr chunk {size} along axis {axis}. Got blocks "
                f"{tuple(lengths)}. Use blocks that are multiples of {size} (rechunk, or "
                f"chunks={size}) before writing."
            )


def create_array(
    store: Any,
    *,
    shape: Sequence[int],
    chunks: Sequence[int],
    dtype: Any,
    compressor: Any,
    dimension_names: Sequence[str],
    attributes: Mapping[str, Any] | None = None,
    name: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    write_empty_chunks: bool = False,
    shards: Sequence[int] | None = None,
    fill_value: Any = 0,
):
    """Create a Zarr v3 array, at a store's root or as ``name`` inside a group.

    Call only after :func:`chunkseg.outputs._target.check_output_target` accepted the store.

    Parameters
    ----------
    store : str, os.PathLike, zarr store or zarr.Group
        Where: a path, fsspec URL or store (the array is the root), or a group (the array is
        its member ``name``).
    shape, chunks : sequence of int
        Array and chunk shape (with ``shards``, the inner chunks of each shard).
    dtype : numpy dtype or str
    compressor : zarr codec
        The one bytes-to-bytes codec (zstd, Blosc...).
    dimension_names : sequence of str
        One name per axis (``"y"``, ``"x"``, ``"c"``, ``"class"``), read by xarray.
    attributes : mapping, optional
        Stamped with the ownership marker (:func:`chunkseg.outputs._ownership.stamp`).
    name : str, optional
        Member name; required when ``store`` is a group.
    storage_options : mapping, optional
        fsspec options for a URL ``store``.
    overwrite : bool, default False
        Replace what is there (the caller has checked that it may).
    write_empty_chunks : bool, default False
        Store chunks equal to the fill value 0 too (so that every chunk of an output exists
        once written).
    shards : sequence of int, optional
        Shard shape (Zarr v3 sharding codec: one stored object per shard, holding its inner
        ``chunks``), each a multiple of ``chunks``. Writers must then own whole shards (check
        :func:`check_aligned` against the shard shape). Default: no sharding.
    fill_value : scalar, default 0
        What unwritten chunks read as (``""`` for a str array).

    Returns
    -------
    zarr.Array
    """
    import zarr

    kwargs: dict[str, Any] = dict(
        shape=tuple(shape), chunks=tuple(chunks), dtype=dtype, compressors=compressor,
        fill_value=fill_value, dimension_names=tuple(dimension_names),
        attributes=stamp(attributes), config={"write_empty_chunks": write_empty_chunks})
    if shards is not None:
        kwargs["shards"] = tuple(int(s) for s in shards)
    if isinstance(store, zarr.Group):
        if name is None:
            raise ValueError("`name` is needed to create an array in a group")
        return store.create_array(name, overwrite=overwrite, **kwargs)
    if storage_options is not None:
        kwargs["storage_options"] = dict(storage_options)
    return zarr.create_array(store=store, name=name, zarr_format=3, overwrite=overwrite,
                             **kwargs)


class ArrayWriter:
    """Whole-chunk writes into one Zarr array; a failed write raises
    :class:`~chunkseg.errors.OutputWriteError`.

    Works as ``dask.array.store``'s target (``shape``, ``dtype``, ``ndim`` and ``__setitem__``).

    Parameters
    ----------
    array : zarr.Array
    location : str
        The store, as shown in messages (no credentials:
        :func:`chunkseg.outputs._target.describe_location`).
    name : str, optional
        The array's name in its group, for messages.
    fix : str, optional
        What the user can do after a failed write, for messages (default: resume the run).
    """

    def __init__(self, array, location: str, name: str | None = None, fix: str | None = None):
        self.array = array
        self.location = location
        self.name = name or str(array.basename or "array")
        self.fix = fix or ("The chunks written before are kept and marked; free space (or fix "
                           "the store) and finish the run with resume=True (CLI: --resume).")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return self.array.ndim

    def __setitem__(self, region: tuple[slice, ...], data: Any) -> None:
        self.write(region, data)

    def write(self, region: tuple[slice, ...], data: Any, what: str = "") -> None:
        """``array[region] = data``; ``what`` (e.g. "output chunk (0, 1)") goes in messages.

        Raises
        ------
        chunkseg.errors.OutputWriteError
            If the store raised an OSError (the original error is its cause, its ``errno``
            is kept).
        """
        try:
            self.array[region] = data
        except OSError as err:  # disk full, permission denied, an object store refusing
            where = ", ".join(f"{s.start}:{s.stop}" if isinstance(s, slice) else str(s)
                              for s in (region if isinstance(region, tuple) else (region,)))
            error = OutputWriteError(
                f"writing {what + ' of ' if what else ''}{self.name!r} [{where}] to "
                f"{self.location!r} failed: {redact_text(str(err))}. {self.fix}")
            error.errno = err.errno  # ENOSPC, EACCES... as the store said
            raise error from err
