"""Blending windows: the per-pixel weight a tile's logits get before overlap-add.

Every window is the outer product of two 1-D windows (``y`` and ``x``), is float32, and is
strictly positive, so the summed weight is never zero inside the image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError
from ..plan import normalize_pair

__all__ = ["WINDOWS", "get_window", "window_1d", "window_name"]


def _uniform(size: int, overlap: int) -> np.ndarray:
    return np.ones(size)


def _linear(size: int, overlap: int) -> np.ndarray:
    # Tent over the whole tile, sampled at pixel centres: 1/size at the edges, ~1 in the centre.
    centres = (np.arange(size) + 0.5) / size
    w = 1.0 - np.abs(2.0 * centres - 1.0)
    return w / w.max()


def _gaussian(size: int, overlap: int) -> np.ndarray:
    # MONAI: sigma = 0.125 * roi size, centred on the tile, peak 1.
    sigma = 0.125 * size
    d = np.arange(size) - (size - 1) / 2.0
    w = np.exp(-0.5 * (d / sigma) ** 2)
    return w / w.max()


def _cosine(size: int, overlap: int) -> np.ndarray:
    # Raised-cosine (Hann) ramp over the overlap, 1 in the centre. For stride = size - overlap,
    # neighbouring ramps add up to exactly 1 (sin^2 + cos^2).
    ramp_len = min(overlap, size // 2)
    w = np.ones(size)
    if ramp_len == 0:
        return w
    ramp = np.sin(0.5 * np.pi * (np.arange(ramp_len) + 0.5) / ramp_len) ** 2
    w[:ramp_len] = ramp
    w[size - ramp_len :] = ramp[::-1]
    return w


WINDOWS: dict[str, Callable[[int, int], np.ndarray]] = {
    "uniform": _uniform,
    "linear": _linear,
    "gaussian": _gaussian,
    "cosine": _cosine,
}
"""Named 1-D windows: ``name -> f(size, overlap) -> (size,) float64``."""


def window_1d(name: str, size: int, overlap: int = 0) -> np.ndarray:
    """One axis of a named window.

    Parameters
    ----------
    name : {"uniform", "linear", "gaussian", "cosine"}
        ``uniform``: all ones (plain averaging). ``linear``: a tent over the whole tile, value
        ``1 / size`` at the outermost pixel centres (as seamless_seg's linear trust). ``gaussian``:
        ``exp(-d^2 / (2 sigma^2))`` with ``sigma = 0.125 * size`` about the tile centre (MONAI's
        ``BlendMode.GAUSSIAN``, ``sigma_scale=0.125``, but not clamped below at 1e-3 as MONAI
        does: that clamp hands the tile edges a large share of the blend between tile centres). ``cosine``: a raised-cosine ramp
        ``sin^2(pi/2 * (i + 0.5) / overlap)`` over the first and last ``overlap`` pixels
        (at most half the tile), 1 between; the ramps of two neighbours sum to 1 exactly.
    size : int
        Tile length along the axis, pixels.
    overlap : int, default 0
        Overlap along the axis, pixels (used by ``cosine`` only).

    Returns
    -------
    (size,) ndarray of float64
        Strictly positive weights. ``linear`` and ``gaussian`` are scaled to a maximum of
        exactly 1 (as MONAI's importance map); ``cosine`` peaks at 1 unless the overlap is half
        the tile or more, where it keeps the sum-to-one property instead.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`WINDOWS`.
    """
    try:
        fn = WINDOWS[name]
    except KeyError:
        raise InvalidValueError(
            f"`window` must be one of {sorted(WINDOWS)} or an array of the tile's shape. "
            f"Got {name!r}."
        ) from None
    return fn(int(size), int(overlap))


def get_window(
    window: str | np.ndarray,
    tile: int | tuple[int, int],
    overlap: int | tuple[int, int] = 0,
) -> np.ndarray:
    """The 2-D blending window for one tile.

    Parameters
    ----------
    window : str or (T_y, T_x) array_like
        A name from :data:`WINDOWS` (see :func:`window_1d`), or user-supplied weights of the
        tile's shape, finite and strictly positive.
    tile : int or (int, int)
        Tile size ``(T_y, T_x)``, pixels.
    overlap : int or (int, int), default 0
        Overlap ``(O_y, O_x)``, pixels.

    Returns
    -------
    (T_y, T_x) ndarray of float32
        Outer product of the two 1-D windows (or the user's array as float32).

    Raises
    ------
    ValueError
        If the name is unknown, or a user array has the wrong shape, a non-finite value or a
        value <= 0 (a zero weight would leave pixels undefined after normalisation).
    TypeError
        If ``window`` is neither a string nor array-like.
    """
    ty, tx = normalize_pair(tile, "tile")
    oy, ox = normalize_pair(overlap, "overlap")
    if isinstance(window, str):
        w = np.outer(window_1d(window, ty, oy), window_1d(window, tx, ox))
        return w.astype(np.float32)
    try:
        w = np.asarray(window, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidTypeError(
            f"`window` must be a name from {sorted(WINDOWS)} or an array. Got {type(window)!r}."
        ) from None
    if w.shape != (ty, tx):
        raise InvalidValueError(
            f"`window` array must have the tile's shape {(ty, tx)}. Got shape {w.shape}."
        )
    finite = np.isfinite(w)
    if not finite.all() or np.any(w[finite] <= 0):
        low = float(w[finite].min()) if finite.any() else None
        raise InvalidValueError(
            "`window` array must be finite and strictly positive (a zero weight leaves pixels "
            f"undefined). Got min={low!r}, non-finite values: {int(np.sum(~finite))}."
        )
    return w.astype(np.float32)


def window_name(window: str | np.ndarray) -> str:
    """The name recorded in output attrs: the window's name, or ``"custom"`` for an array."""
    return window if isinstance(window, str) else "custom"
