"""Test-time augmentation: a model's logits averaged over flipped and rotated copies of a tile.

Each tile of a batch is transformed (flips, or the 8 symmetries of the square), the model runs
on every copy, each copy's logits are transformed back and the copies' logits are averaged,
before the engine weights the tile by its window and blends it. The result depends on the tile
only, never on the chunk it falls in, so :func:`chunkseg.predict` stays chunk-independent; the
model runs ``len(tta_transforms(mode))`` times per tile (4 for ``"flips"``, 8 for ``"d4"``).

The symmetries are those of the dihedral group D4 (rotations by multiples of 90 degrees, each
with or without a mirror), as in the 8-fold test-time augmentation of the U-Net paper's ISBI
entry (Ronneberger et al., MICCAI 2015) and MONAI's ``TestTimeAugmentation`` with flips.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError
from .blend import check_model_output

__all__ = ["TTA_MODES", "TTAModel", "check_tta", "tta_transforms"]

TTA_MODES = ("flips", "d4")
"""The test-time augmentations: ``"flips"`` (identity, mirror in x, mirror in y, both) and
``"d4"`` (the 8 rotations/mirrors of the square; square tiles only)."""

_TRANSFORMS = {
    # (quarter turns k, mirror in x first): forward t(x) = rot90(mirror?(x), k)
    "flips": ((0, False), (0, True), (2, True), (2, False)),
    "d4": tuple((k, m) for m in (False, True) for k in range(4)),
}


def tta_transforms(mode: str) -> tuple[tuple[int, bool], ...]:
    """The transforms of a test-time augmentation, as ``(quarter_turns, mirror_x)`` pairs.

    Parameters
    ----------
    mode : {"flips", "d4"}

    Returns
    -------
    tuple of (int, bool)
        ``(k, m)``: mirror in x (the last axis) when ``m``, then rotate by ``k`` quarter turns
        in the ``(y, x)`` plane. ``(0, False)`` (the identity) is always first. ``"flips"``
        gives 4 (``(2, True)`` is the mirror in y), ``"d4"`` 8.

    Raises
    ------
    ValueError
        For another ``mode``.
    """
    if mode not in _TRANSFORMS:
        raise InvalidValueError(f"`tta` must be one of {TTA_MODES} or None. Got {mode!r}.")
    return _TRANSFORMS[mode]


def check_tta(tta: Any, tile: tuple[int, int]) -> str | None:
    """Validate :func:`chunkseg.predict`'s ``tta`` against the tile.

    Parameters
    ----------
    tta : None, "none", "flips" or "d4"
    tile : (int, int)
        Tile size ``(T_y, T_x)``, pixels.

    Returns
    -------
    str or None
        The mode, None for no augmentation (``None`` or ``"none"``).

    Raises
    ------
    TypeError
        If ``tta`` is not a str or None.
    ValueError
        For an unknown mode, or ``"d4"`` with a tile that is not square (a quarter turn would
        change its shape).
    """
    if tta is None or tta == "none":
        return None
    if not isinstance(tta, str):
        raise InvalidTypeError(f"`tta` must be one of {TTA_MODES} or None. Got {tta!r}.")
    tta_transforms(tta)
    if tta == "d4" and tile[0] != tile[1]:
        raise InvalidValueError(
            f"`tta` 'd4' needs square tiles (quarter turns keep only a square's shape). Got "
            f"tile {tuple(tile)}; use tta='flips' or a square tile.")
    return tta


def _is_tensor(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _forward(x, k: int, mirror: bool):
    if _is_tensor(x):
        import torch

        if mirror:
            x = torch.flip(x, dims=(3,))
        return torch.rot90(x, k, dims=(2, 3)) if k else x
    if mirror:
        x = x[..., ::-1]
    return np.ascontiguousarray(np.rot90(x, k, axes=(2, 3)) if k else x)


def _inverse(y, k: int, mirror: bool):
    if _is_tensor(y):
        import torch

        if k:
            y = torch.rot90(y, -k, dims=(2, 3))
        return torch.flip(y, dims=(3,)) if mirror else y
    if k:
        y = np.rot90(y, -k, axes=(2, 3))
    return y[..., ::-1] if mirror else y


class TTAModel:
    """A model whose logits are averaged over transformed copies of each tile.

    Works for a model on numpy batches (the engine's numpy kernel) and for a torch module on
    tensors (the torch kernel): the transforms use ``numpy.rot90``/slicing or ``torch.rot90``/
    ``torch.flip`` to match the batch.

    Parameters
    ----------
    model : callable
        ``(N, C_in, T_y, T_x)`` float32 -> ``(N, K, T_y, T_x)`` logits (ndarray or tensor).
    mode : {"flips", "d4"}
        See :func:`tta_transforms`. ``"d4"`` needs ``T_y == T_x``.

    Notes
    -----
    Cost: the model runs once per transform (4 or 8 times per tile); one transformed batch
    and a running sum of logits, ``4 N K T_y T_x`` bytes, are held at a time.
    """

    def __init__(self, model: Any, mode: str):
        self.model = model
        self.mode = mode
        self.transforms = tta_transforms(mode)

    def __call__(self, batch):
        total = None
        for k, mirror in self.transforms:
            x = _forward(batch, k, mirror)
            logits = self.model(x)
            if not _is_tensor(logits):  # a wrong output fails here, not in the inverse
                logits = check_model_output(logits, tuple(x.shape))
            elif (logits.ndim != 4 or logits.shape[0] != x.shape[0]
                  or tuple(logits.shape[2:]) != tuple(x.shape[2:])):
                check_model_output(logits.detach().float().cpu().numpy(), tuple(x.shape))
            back = _inverse(logits, k, mirror)
            total = back + 0 if total is None else total + back  # `+ 0`: never a view
        return total / len(self.transforms)

    def __repr__(self) -> str:
        return f"TTAModel({self.model!r}, mode={self.mode!r})"
