"""Per-chunk completion marks of a pass that writes chunk by chunk: what a resumed run trusts.

A pass that writes one chunk of an array per task marks the chunk (one ``uint8`` element of a
``(rows, cols)`` array with ``(1, 1)`` chunks, so every mark is its own stored chunk, written
once) after its data is written; an interrupted run leaves the marks of exactly the chunks it
finished, and its resumption writes the others. A prediction's completion manifest is one
(``chunkseg/done``, :func:`chunkseg.outputs._variables.create_variables`); the marks of
:func:`chunkseg.label`'s passes live in the run's record group (``chunkseg/label-NAME``,
deleted when the run finishes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from zarr.codecs import ZstdCodec

from ..errors import InvalidValueError
from ._arrays import ArrayWriter, create_array

__all__ = ["ChunkMarks"]


class ChunkMarks:
    """One mark per chunk of a grid, set once the chunk's data is written.

    Parameters
    ----------
    array : zarr.Array
        ``(rows, cols)`` uint8, chunks ``(1, 1)``: 1 for a finished chunk, 0 (the fill value)
        otherwise.
    location : str
        The store, for messages.
    values : ndarray, optional
        The marks as read (by :meth:`open`) or created (by :meth:`create`); :meth:`finished`
        answers from them, so opening and asking read the marks once.
    """

    def __init__(self, array: Any, location: str, values: np.ndarray | None = None):
        self.array = array
        self.values = values
        self.writer = ArrayWriter(array, location, str(array.path))

    @classmethod
    def create(cls, group: Any, name: str, grid: tuple[int, ...], location: str,
               compressor: Any = None,
               meaning: str = "1 where the chunk is written",
               lead: tuple[str, ...] = ()) -> ChunkMarks:
        """New marks, all 0, as array ``name`` of ``group`` (which must not hold it);
        ``compressor`` defaults to zstd level 1, ``meaning`` is its ``meaning`` attribute.
        ``grid`` is ``(rows, cols)``, or ``(*planes, rows, cols)`` for a stack of planes whose
        leading dims are ``lead`` (one mark per plane and chunk)."""
        array = create_array(group, name=name, shape=grid, chunks=(1,) * len(grid),
                             dtype="uint8", compressor=compressor or ZstdCodec(level=1),
                             dimension_names=(*lead, "chunk_y", "chunk_x"),
                             attributes={"meaning": meaning})
        return cls(array, location, np.zeros(grid, np.uint8))

    @classmethod
    def open(cls, group: Any, name: str, grid: tuple[int, ...] | None,
             location: str) -> ChunkMarks:
        """The marks ``name`` of ``group``, checked: the grid's shape (any with None), values
        0 and 1 only.

        Raises
        ------
        chunkseg.errors.InvalidValueError
            If they cannot be read or trusted (another shape, other values).
        """
        array = group.get(name)
        try:  # a codec's RuntimeError on bad bytes
            marks = None if array is None else np.asarray(array[...])
        except (OSError, ValueError, RuntimeError) as err:
            marks, reason = None, f"{type(err).__name__}: {err}"
        else:
            reason = ("missing" if array is None else
                      f"shape {marks.shape}, expected {grid}, or values other than 0 and 1")
        expected = tuple(array.shape) if grid is None and array is not None else grid
        if (marks is None or marks.shape != tuple(expected)
                or not np.isin(marks, (0, 1)).all()):
            where = f"{group.path}/{name}".lstrip("/")
            raise InvalidValueError(
                f"`resume=True` needs a readable manifest of finished chunks; {location!r}'s "
                f"{where!r} cannot be trusted ({reason}), so which chunks are finished is not "
                "known. Start again with `overwrite=True` (CLI: --overwrite).")
        return cls(array, location, marks)

    def finished(self) -> set[tuple[int, ...]]:
        """The ``(iy, ix)`` chunks marked done (``(*plane, iy, ix)`` for a stack) when the
        marks were opened or created (:attr:`values`; read from the store without them)."""
        values = np.asarray(self.array[...]) if self.values is None else self.values
        return {tuple(int(v) for v in ij) for ij in np.argwhere(values == 1)}

    def mark(self, *index: int, what: str | None = None) -> None:
        """Mark chunk ``(iy, ix)`` (``(*plane, iy, ix)`` for a stack) done, after its data is
        written; ``what`` names the chunk in a failed write's message (default: "the mark of
        chunk (iy, ix)")."""
        self.writer.write(tuple(slice(i, i + 1) for i in index),
                          np.ones((1,) * len(index), np.uint8),
                          what or f"the mark of chunk {tuple(index)}")
