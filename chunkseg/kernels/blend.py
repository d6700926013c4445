"""Per-chunk numpy kernels: tiles through the model, weighted accumulation, fold, normalisation.

Every function here is a pure ``numpy`` function of its arguments; :mod:`chunkseg.engine` wraps
them in the Dask graph. Arrays are channels-first: an input block is ``(C_in, y, x)``, an
accumulator ``(K + 1, y, x)`` holding ``sum(w * logits)`` in planes ``0..K-1`` and ``sum(w)`` in
plane ``K``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from ..errors import ChunksegError, Float16OverflowWarning, ModelOutputError, ModelRunError

__all__ = [
    "mapped_zeros",
    "tile_starts",
    "iter_batches",
    "run_model",
    "run_tiles",
    "check_model_output",
    "accumulate_block",
    "fold_pieces",
    "normalize_accumulator",
    "probabilities_from_logits",
    "labels_from_logits",
    "labels_dtype",
    "FLOAT16_MAX",
    "LogitsCast",
]

Model = Callable[[np.ndarray], np.ndarray]

_MAPPED_MIN_BYTES = 1 << 20


def mapped_zeros(shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Zeros in an anonymous memory mapping of their own (for buffers of 1 MiB or more).

    glibc serves buffers under its dynamic mmap threshold (up to 32 MiB) from per-thread heaps,
    which fragment when such buffers come and go by the thousand: the process's RSS then grows
    with the number of chunks processed. A mapping of its own is returned to the system as soon
    as the array is freed. Used for the accumulators and the folded and normalised chunks;
    smaller buffers come from ``numpy.zeros``.

    Parameters
    ----------
    shape : tuple of int
    dtype : dtype, default float32

    Returns
    -------
    ndarray of ``dtype``, zero-filled, writeable
    """
    import mmap

    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if nbytes < _MAPPED_MIN_BYTES:
        return np.zeros(shape, dtype)
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)


def tile_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Offsets of the tiles a block owns along one axis.

    A block of ``length = m * stride + overlap`` pixels owns ``m`` tiles at ``0, stride, ...``.

    Parameters
    ----------
    length, tile, overlap : int
        Block length, tile size and overlap, pixels.

    Returns
    -------
    (m,) ndarray of int64

    Raises
    ------
    ValueError
        If ``length`` is not ``m * stride + overlap`` for some ``m >= 1``.
    """
    stride = tile - overlap
    m, rest = divmod(length - overlap, stride)
    if rest or m < 1:
        raise ValueError(
            f"block length {length} is not a whole number of strides ({stride}) plus the "
            f"overlap ({overlap}); the block does not match the tile plan."
        )
    return np.arange(m, dtype=np.int64) * stride


def iter_batches(
    shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int], batch_size: int,
    run: np.ndarray | None = None,
) -> Iterator[list[tuple[int, int]]]:
    """Yield the owned tiles' ``(y0, x0)`` offsets of a block, ``batch_size`` at a time (row-major).

    ``run``, a boolean ``(m_y, m_x)`` array over the block's owned tiles, keeps only the tiles
    where it is True.
    """
    positions = _owned_tiles(shape, tile, overlap, run)
    for i in range(0, len(positions), batch_size):
        yield positions[i : i + batch_size]


def _owned_tiles(shape: tuple[int, int], tile: tuple[int, int], overlap: tuple[int, int],
                 run: np.ndarray | None) -> list[tuple[int, int]]:
    """The owned tiles' ``(y0, x0)`` offsets of a block, row-major (``run``: as
    :func:`iter_batches`)."""
    ys = tile_starts(shape[0], tile[0], overlap[0])
    xs = tile_starts(shape[1], tile[1], overlap[1])
    if run is not None and run.shape != (len(ys), len(xs)):
        raise ValueError(f"`run` must have shape {(len(ys), len(xs))}. Got {run.shape}.")
    return [(int(y), int(x)) for i, y in enumerate(ys) for j, x in enumerate(xs)
            if run is None or run[i, j]]


def run_model(model: Model, batch):
    """``model(batch)``, an exception it raises becoming a :class:`ModelRunError`.

    The one place where batches of tiles go through the model (:func:`run_tiles`,
    the torch kernel and the engine's first-tile probe call it), so that a model failing
    mid-run is reported with its chunk (:class:`chunkseg.engine.TileRunner` adds it) instead
    of a bare traceback.

    Parameters
    ----------
    model : callable
    batch : (N, C_in, T_y, T_x) ndarray or tensor

    Returns
    -------
    object
        What the model returned.

    Raises
    ------
    ModelRunError
        When the model raises an ``Exception``; the model's exception is its ``__cause__``.
        chunkseg's own errors (from chunkseg's model adapters) and ``MemoryError`` pass
        unchanged, and so do ``KeyboardInterrupt`` and ``SystemExit``.
    """
    try:
        return model(batch)
    except (ChunksegError, MemoryError):
        raise
    except Exception as err:
        message = " ".join(str(err).split())
        raise ModelRunError(
            f"`model` raised {type(err).__name__} on a batch of shape {tuple(batch.shape)}"
            + (f": {message}" if message else "") + ("" if message.endswith(".") else ".")
        ) from err


def run_tiles(
    model: Model,
    read: Callable[[int, int], np.ndarray],
    origins: Sequence[tuple[int, int]],
    batch_size: int,
    classes: int | None = None,
) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """Run the model on tiles, ``batch_size`` at a time: stack them, call it, check its output.

    The one loop of numpy tiles through a model (:func:`accumulate_block`, the seam report's
    crop-only stitching and the figures' per-tile predictions use it).

    Parameters
    ----------
    model : callable
        Maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits ``(N, K, T_y, T_x)``.
    read : callable
        ``read(y0, x0)`` returns the ``(C_in, T_y, T_x)`` tile at origin ``(y0, x0)``, any
        numeric dtype (every tile of the same shape).
    origins : sequence of (int, int)
        The tiles' origins, in the order they are run; batch ``b`` holds
        ``origins[b * batch_size : (b + 1) * batch_size]``.
    batch_size : int
        Tiles per model call, at least 1.
    classes : int, optional
        Expected ``K``, checked on every batch (:func:`check_model_output`); when None, the
        first batch's ``K`` is expected of the later ones.

    Yields
    ------
    list of (int, int), (n, K, T_y, T_x) ndarray of float32
        Each batch's origins and the model's logits for them (``n <= batch_size``), in order.
        Nothing is yielded for empty ``origins``.

    Raises
    ------
    ModelRunError
        If the model raises (:func:`run_model`).
    ModelOutputError
        From :func:`check_model_output`.

    Notes
    -----
    Memory: one float32 batch of tiles and its logits.
    """
    for i in range(0, len(origins), batch_size):
        part = [(int(y), int(x)) for y, x in origins[i : i + batch_size]]
        batch = np.stack([read(y, x) for y, x in part]).astype(np.float32, copy=False)
        logits = check_model_output(run_model(model, batch), batch.shape, classes)
        classes = logits.shape[1]  # later batches must return as many classes
        yield part, logits


def check_model_output(
    out: object, batch_shape: tuple[int, ...], classes: int | None = None
) -> np.ndarray:
    """Validate a model's output for a batch and return it as float32.

    Parameters
    ----------
    out : array_like
        What the model returned for a batch of shape ``batch_shape``.
    batch_shape : (N, C_in, T_y, T_x)
        Shape of the batch the model was given.
    classes : int, optional
        Expected number of classes ``K``; any ``K >= 1`` when None.

    Returns
    -------
    (N, K, T_y, T_x) ndarray of float32

    Raises
    ------
    ModelOutputError
        If the output is not real-valued numbers, not 4-D, its ``N`` or spatial size differ
        from the batch's, ``K`` differs from ``classes``, or it holds NaN or infinity.
    """
    arr = np.asarray(out)
    n, _, ty, tx = batch_shape
    if arr.dtype.kind not in "biuf":
        raise ModelOutputError(
            f"`model` returned {type(out).__name__} of dtype {arr.dtype} for a batch of shape "
            f"{tuple(batch_shape)}; logits must be real numbers (float32 best). Return a float "
            "array (N, K, tile_y, tile_x)."
        )
    fix = (
        "A model must map a float32 batch (N, C_in, tile_y, tile_x) to logits "
        "(N, K, tile_y, tile_x), same N and spatial size."
    )
    if arr.ndim != 4 or arr.shape[0] != n or arr.shape[2:] != (ty, tx):
        raise ModelOutputError(
            f"`model` returned an array of shape {arr.shape} for a batch of shape "
            f"{tuple(batch_shape)}. {fix}"
        )
    if classes is not None and arr.shape[1] != classes:
        raise ModelOutputError(
            f"`model` returned {arr.shape[1]} classes, but {classes} were expected (from the "
            f"first tile, or the names in `classes` or the model's own). {fix}"
        )
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ModelOutputError(
            f"`model` returned {bad} non-finite values (NaN or inf) for a batch of shape "
            f"{tuple(batch_shape)}. Check the model's weights and input normalisation."
        )
    return arr


def accumulate_block(
    block: np.ndarray,
    model: Model,
    window: np.ndarray,
    overlap: tuple[int, int],
    *,
    batch_size: int = 8,
    classes: int | None = None,
    run: np.ndarray | None = None,
) -> np.ndarray:
    """Run the model on every tile a block owns and accumulate weighted logits and weights.

    Parameters
    ----------
    block : (C_in, B_y, B_x) ndarray
        The pixels of the tiles a chunk owns (reflect-padded at the image edges), any numeric dtype;
        ``B = m * stride + overlap`` per axis.
    model : callable
        Maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits ``(N, K, T_y, T_x)``.
    window : (T_y, T_x) ndarray of float32
        Blending weights, strictly positive.
    overlap : (int, int)
        Tile overlap, pixels.
    batch_size : int, default 8
        Tiles per model call.
    classes : int, optional
        Expected ``K``, checked on every batch. Required when ``run`` may skip every tile.
    run : (m_y, m_x) ndarray of bool, optional
        Which of the block's owned tiles to run (foreground mask); all when None. Skipped tiles
        never reach the model and add nothing.

    Returns
    -------
    (K + 1, B_y, B_x) ndarray of float32
        Planes ``0..K-1``: ``sum over tiles of window * logits``; plane ``K``: ``sum of window``.

    Raises
    ------
    ModelOutputError
        From :func:`check_model_output`.
    ModelRunError
        From :func:`run_model`: the model raised.

    Notes
    -----
    Memory: the accumulator, ``4 (K + 1) B_y B_x`` bytes, plus one float32 batch of tiles and
    its logits. The block is not copied as a whole.
    """
    ty, tx = window.shape
    acc: np.ndarray | None = None
    if classes is not None:
        acc = mapped_zeros((classes + 1,) + block.shape[1:], np.float32)
    origins = _owned_tiles(block.shape[1:], (ty, tx), overlap, run)
    for positions, logits in run_tiles(model, lambda y, x: block[:, y : y + ty, x : x + tx],
                                       origins, batch_size, classes):
        if acc is None:
            classes = logits.shape[1]
            acc = mapped_zeros((classes + 1,) + block.shape[1:], np.float32)
        for (y, x), tile_logits in zip(positions, logits):
            acc[:-1, y : y + ty, x : x + tx] += tile_logits * window
            acc[-1, y : y + ty, x : x + tx] += window
    if acc is None:
        raise ValueError("`classes` must be given when `run` skips every tile of a block.")
    return acc


def fold_pieces(
    shape: tuple[int, ...], pieces: Sequence[tuple[tuple[slice, slice], np.ndarray]]
) -> np.ndarray:
    """Overlap-add: sum accumulator pieces into one output chunk.

    Parameters
    ----------
    shape : (K + 1, H_c, W_c)
        Output chunk shape.
    pieces : sequence of ((slice, slice), ndarray)
        ``(dst, piece)``: ``piece`` of shape ``(K + 1, h, w)`` adds onto ``out[:, dst[0], dst[1]]``.
        A piece that covers the whole chunk, if any, is copied first instead of added to zeros.

    Returns
    -------
    (K + 1, H_c, W_c) ndarray of float32
    """
    full = [i for i, (_, p) in enumerate(pieces) if p.shape == tuple(shape)]
    out = mapped_zeros(tuple(shape), np.float32)
    if full:
        out[...] = pieces[full[0]][1]
        rest = [p for i, p in enumerate(pieces) if i != full[0]]
    else:
        rest = list(pieces)
    for (dy, dx), piece in rest:
        out[:, dy, dx] += piece
    return out


def normalize_accumulator(acc: np.ndarray, dtype: np.dtype | str = np.float32,
                          fill_value: float = 0.0) -> np.ndarray:
    """Blended logits: weighted sum divided by weight sum.

    Parameters
    ----------
    acc : (K + 1, y, x) ndarray of float32
    dtype : dtype, default float32
        Output dtype (float16 halves the storage).
    fill_value : float, default 0.0
        Value where the weight sum is 0, i.e. no tile ran (only with a foreground mask).

    Returns
    -------
    (K, y, x) ndarray of ``dtype``
    """
    weights = acc[-1:]
    out = mapped_zeros(acc[:-1].shape, np.float32)
    if fill_value != 0:
        out[...] = fill_value
    np.divide(acc[:-1], weights, out=out, where=weights > 0)
    return out.astype(dtype, copy=False)


FLOAT16_MAX = float(np.finfo(np.float16).max)
"""The largest finite float16, 65504: float16 logits are clamped to +-this."""


class LogitsCast:
    """Cast float32 logits to the output dtype; for float16, clamp them to +-65504 first.

    A float16 logit beyond +-65504 would otherwise become infinite (with only numpy's
    overflow warning). The first time values are clamped, a
    :class:`~chunkseg.errors.Float16OverflowWarning` counts them; later chunks of the same run
    (the same object) clamp silently. NaN (pixels no tile ran on) stays NaN.

    Parameters
    ----------
    dtype : {float32, float16}
    """

    def __init__(self, dtype: np.dtype | str = np.float32):
        self.dtype = np.dtype(dtype)
        self.warned = False

    def __call__(self, logits: np.ndarray, where: str = "", block_id=None) -> np.ndarray:
        """``logits`` (float32) in :attr:`dtype`, clamped to its range for float16.

        Parameters
        ----------
        logits : ndarray of float32
        where : str, optional
            The chunk, for the warning.
        block_id : tuple of int, optional
            The chunk's index in a dask array (as ``dask.array.map_blocks`` passes it).

        Returns
        -------
        ndarray of :attr:`dtype`
        """
        if self.dtype != np.float16:
            return logits.astype(self.dtype, copy=False)
        n = int(np.count_nonzero(logits > FLOAT16_MAX) + np.count_nonzero(logits < -FLOAT16_MAX))
        out = np.empty(logits.shape, np.float16)
        np.clip(logits, -FLOAT16_MAX, FLOAT16_MAX, out=out)
        if block_id is not None and not where:
            where = f"output chunk {tuple(block_id[-2:])} (y, x of the chunk grid)"
        self.clamped(n, where)
        return out

    def clamped(self, n: int, where: str = "") -> None:
        """Warn that ``n`` logits were clamped (in ``where``), the first time only."""
        if n and not self.warned:
            self.warned = True
            warnings.warn(Float16OverflowWarning(
                f"{n} logits{' of ' + where if where else ''} lie beyond the float16 range "
                f"(+-{FLOAT16_MAX:g}) and were clamped to it (warned once per run; other "
                "chunks may have more). Write dtype='float32' (CLI: --dtype float32) to keep "
                "them, or check the model's output scale."), stacklevel=2)


def probabilities_from_logits(
    logits: np.ndarray, dtype: np.dtype | str = np.float32
) -> np.ndarray:
    """Class probabilities from blended logits on axis 0.

    Softmax over the class axis for ``K >= 2`` (computed with the maximum subtracted);
    the logistic sigmoid for ``K == 1``.

    Parameters
    ----------
    logits : (K, y, x) ndarray
    dtype : dtype, default float32

    Returns
    -------
    (K, y, x) ndarray of ``dtype``, summing to 1 over axis 0 when ``K >= 2``
    """
    z = logits.astype(np.float32, copy=False)
    if z.shape[0] == 1:
        p = 1.0 / (1.0 + np.exp(-z))
    else:
        e = np.exp(z - z.max(axis=0, keepdims=True))
        p = e / e.sum(axis=0, keepdims=True)
    return p.astype(dtype, copy=False)


def labels_dtype(classes: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds labels ``0..max(classes, 2) - 1``."""
    return np.min_scalar_type(max(int(classes), 2) - 1)


def labels_from_logits(logits: np.ndarray) -> np.ndarray:
    """Argmax labels from blended logits on axis 0.

    ``K >= 2``: the index of the largest logit, ties to the lower class (as ``numpy.argmax``),
    computed plane by plane (faster than ``numpy.argmax`` over a leading axis; ``K == 2`` is one
    comparison, ``logits[1] > logits[0]``).
    ``K == 1``: ``logit > 0`` (probability above one half) as 0/1.

    Parameters
    ----------
    logits : (K, y, x) ndarray

    Returns
    -------
    (y, x) ndarray of ``labels_dtype(K)``
    """
    k = logits.shape[0]
    dtype = labels_dtype(k)
    if k == 1:
        return (logits[0] > 0).astype(dtype)
    if k == 2:  # one comparison; the bool result's bytes are the 0/1 uint8 labels
        return np.greater(logits[1], logits[0]).view(dtype)
    best = logits[0].copy()
    labels = np.zeros(logits.shape[1:], dtype=dtype)
    for c in range(1, k):
        better = logits[c] > best
        np.copyto(labels, dtype.type(c), where=better)
        np.maximum(best, logits[c], out=best)
    return labels
