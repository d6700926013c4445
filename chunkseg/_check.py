"""Argument checks shared by several entry points (one copy of each rule)."""

from __future__ import annotations

import numpy as np

from .errors import InvalidTypeError, InvalidValueError

__all__ = ["positive_int"]


def positive_int(value, name: str, fix: str = "") -> int:
    """``value`` as an ``int`` when it is an integer of at least 1.

    Parameters
    ----------
    value : object
        The argument to check.
    name : str
        Its name, for the message (e.g. ``"batch_size"``).
    fix : str, optional
        A sentence appended to the message (e.g. the CLI option or the default).

    Returns
    -------
    int

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``value`` is not an integer (``True``/``False`` are not).
    chunkseg.errors.InvalidValueError
        If it is below 1.
    """
    tail = f" {fix}" if fix else ""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidTypeError(f"`{name}` must be a positive int. Got {value!r}.{tail}")
    if value < 1:
        raise InvalidValueError(f"`{name}` must be a positive int. Got {value!r}.{tail}")
    return int(value)
