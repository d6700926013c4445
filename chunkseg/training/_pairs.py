"""Reading training pairs: the ``pairs``/``mask`` arguments split per pair, and each
``(image, labels, mask)`` opened lazily with :func:`chunkseg.io.open_image` and checked."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..engine.core import BlockReader
from ..errors import InvalidTypeError, InvalidValueError
from ..io import open_image
from ..io._locations import _is_url


def split_pairs(pairs: Any) -> list[tuple[Any, Any]]:
    """``pairs`` as a list of ``(image, labels)``; one pair alone is accepted."""
    if isinstance(pairs, Sequence) and not isinstance(pairs, str | bytes):
        items = list(pairs)
        # an image or a label image is never a list or tuple, so (image, labels) is one pair
        if len(items) == 2 and not any(isinstance(x, list | tuple) for x in items):
            return [(items[0], items[1])]
        out = []
        for k, pair in enumerate(items):
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                what = type(pair).__name__
                if isinstance(pair, list | tuple):
                    what += f" of length {len(pair)}"
                raise InvalidTypeError(
                    f"`pairs[{k}]` must be an (image, labels) tuple. Got {what}. Pass a list of "
                    "(image, labels) tuples, or one tuple."
                )
            out.append((pair[0], pair[1]))
        if not out:
            raise InvalidValueError(
                "`pairs` must hold at least one (image, labels) pair. Got an empty sequence."
            )
        return out
    raise InvalidTypeError(
        f"`pairs` must be an (image, labels) tuple or a sequence of them. Got "
        f"{type(pairs).__name__}."
    )


def split_masks(mask: Any, n: int) -> list[Any]:
    """``mask`` as one mask (or None) per pair of ``n``."""
    if mask is None:
        return [None] * n
    if isinstance(mask, list | tuple):
        if len(mask) != n:
            raise InvalidValueError(
                f"`mask` must hold one mask (or None) per pair. Got {len(mask)} masks for "
                f"{n} pairs."
            )
        return list(mask)
    if n != 1:
        raise InvalidValueError(
            f"`mask` must be a list with one mask (or None) per pair when there are several "
            f"pairs. Got one {type(mask).__name__} for {n} pairs; pass `[mask_0, mask_1, ...]`."
        )
    return [mask]


def _open(source: Any, storage_options: Mapping[str, Any] | None):
    """:func:`open_image`, with ``storage_options`` only for URL sources."""
    options = None
    if storage_options is not None and isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        options = storage_options if isinstance(path, str) and _is_url(path) else None
    return open_image(source, storage_options=options)


def _reader(opened) -> BlockReader:
    return BlockReader(opened.data, opened.encoding.get("chunkseg_reader"))


class OpenedPair:
    """One pair opened in this process: the lazy arrays and their region readers."""

    def __init__(self, image, labels, mask):
        self.image, self.labels, self.mask = image, labels, mask
        self.read_image = _reader(image)
        self.read_labels = _reader(labels)
        self.read_mask = None if mask is None else _reader(mask)


def open_pair(source: tuple[Any, Any, Any], p: int, storage_options: Mapping[str, Any] | None,
              integer_labels: bool) -> OpenedPair:
    """Open pair ``p``'s ``(image, labels, mask)`` lazily and check their shapes.

    Parameters
    ----------
    source : (image, labels, mask or None)
        Anything :func:`chunkseg.io.open_image` accepts.
    p : int
        The pair's index (named in the error messages).
    storage_options : mapping, optional
        fsspec options for URL sources.
    integer_labels : bool
        Require an integer or boolean label dtype (labels that are class indices).

    Raises
    ------
    TypeError
        Non-integer labels with ``integer_labels``.
    ValueError
        Labels not 2-D or of another y/x shape than the image; a mask not 2-D or larger than
        the image.
    """
    image_src, labels_src, mask_src = source
    image = _open(image_src, storage_options)
    labels = _open(labels_src, storage_options)
    h, w = image.shape[:2]
    if labels.shape[2] != 1:
        raise InvalidValueError(
            f"`pairs[{p}]` labels must be 2-D (y, x) or (y, x, 1). Got shape "
            f"{labels.shape} (y, x, c). Pass one channel, e.g. `labels[..., 0]`."
        )
    if labels.shape[:2] != (h, w):
        raise InvalidValueError(
            f"`pairs[{p}]` labels must have the image's y/x shape {(h, w)}. Got "
            f"{labels.shape[:2]}. Pair each image with its own label image."
        )
    kind = np.dtype(labels.dtype).kind
    if integer_labels and kind not in "biu":
        raise InvalidTypeError(
            f"`pairs[{p}]` labels must have an integer or boolean dtype when `label_map` is "
            f"None (they are class indices). Got {labels.dtype}. Pass label_map= "
            "(e.g. {0.0: 0, 1.0: 1}) or convert the labels."
        )
    mask = None
    if mask_src is not None:
        mask = _open(mask_src, storage_options)
        if mask.shape[2] != 1:
            raise InvalidValueError(
                f"`mask` of pair {p} must be 2-D (y, x). Got shape {mask.shape} (y, x, c)."
            )
        if mask.shape[0] > h or mask.shape[1] > w:
            raise InvalidValueError(
                f"`mask` of pair {p} must be at most its image's size {(h, w)} (full "
                f"resolution or a thumbnail). Got {mask.shape[:2]}."
            )
    return OpenedPair(image, labels, mask)
