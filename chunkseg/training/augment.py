"""Augmentation of training patches: :func:`augmentation` builds the usual albumentations
pipelines (D4 flips/rotations, EM brightness/contrast jitter and elastic deformation, RGB colour
jitter; needs ``chunkseg[train]``), and :func:`augment_patch` runs one on a patch the way
:class:`chunkseg.training.patches.PatchDataset` does (intensity scaling, reseeding, checks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError

__all__ = ["AUGMENTATIONS", "augmentation", "augment_patch"]

#: The values :func:`augmentation`'s ``kind`` takes.
AUGMENTATIONS: tuple[str, ...] = ("em", "rgb", "flips", "none")


def _reseed(transform: Any, seq: np.random.SeedSequence) -> None:
    """Give an albumentations transform (and each transform of a Compose its own) seed."""
    setter = getattr(transform, "set_random_seed", None)
    if setter is None:
        return
    setter(int(seq.generate_state(1)[0]))
    children = getattr(transform, "transforms", None)
    if isinstance(children, Sequence):
        for child, child_seq in zip(children, seq.spawn(len(children))):
            _reseed(child, child_seq)


def augment_patch(transform: Callable[..., Any], image: np.ndarray, labels: np.ndarray,
                  dtype: np.dtype, value_range: tuple[float, float] | None,
                  seed: np.random.SeedSequence) -> tuple[np.ndarray, np.ndarray]:
    """Run ``transform`` on one patch, as :class:`~chunkseg.training.patches.PatchDataset` does.

    Parameters
    ----------
    transform : callable
        ``transform(image=(T_y, T_x, C), mask=(T_y, T_x) int32) -> {"image", "mask"}``;
        reseeded from ``seed`` first when it has ``set_random_seed`` (albumentations).
    image : (C, T_y, T_x) ndarray
        The patch in stored units and dtype.
    labels : (T_y, T_x) ndarray of int64
        Class indices and ``ignore_index``.
    dtype : numpy.dtype
        The image's stored dtype: uint8 is passed as uint8 (unless ``value_range`` is given),
        anything else as float32 scaled from ``value_range`` (default: the dtype's range for
        8/16-bit integers, else ``(0, 1)``) to ``[0, 1]`` and scaled back afterwards.
    value_range : (float, float), optional
    seed : numpy.random.SeedSequence

    Returns
    -------
    image : (C, T_y, T_x) ndarray of float32
    labels : (T_y, T_x) ndarray of int64

    Raises
    ------
    TypeError
        If ``transform`` does not return a dict with ``"image"`` and ``"mask"``.
    ValueError
        If it changes the patch shape.
    """
    channels, tile = image.shape[0], tuple(labels.shape)
    hwc = np.moveaxis(image, 0, -1)
    scale = None
    if dtype == np.uint8 and value_range is None:
        x = np.ascontiguousarray(hwc)
    else:
        if value_range is not None:
            lo, hi = value_range
        elif dtype.kind in "iu" and dtype.itemsize <= 2:  # exact in float32
            lo, hi = float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)
        else:
            lo, hi = 0.0, 1.0
        scale = (lo, hi)
        x = np.ascontiguousarray((hwc.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo))
    _reseed(transform, seed)
    out = transform(image=x, mask=labels.astype(np.int32))
    if not isinstance(out, Mapping) or "image" not in out or "mask" not in out:
        raise InvalidTypeError(
            "`transform` must return a dict with 'image' and 'mask' (the albumentations "
            f"convention). Got {type(out).__name__}."
        )
    im, mk = np.asarray(out["image"]), np.asarray(out["mask"])
    if im.ndim == 2:
        im = im[:, :, None]
    want = (*tile, channels)
    if im.shape != want or mk.shape != tile:
        raise InvalidValueError(
            f"`transform` must keep the patch shape: image {want}, mask {tile}. Got "
            f"image {im.shape}, mask {mk.shape}. Rotations by 90 degrees (D4, "
            "RandomRotate90) swap y and x: use a square tile, or augmentation('flips') "
            "style flips only."
        )
    im = im.astype(np.float32)
    if scale is not None:
        im = im * np.float32(scale[1] - scale[0]) + np.float32(scale[0])
    return np.moveaxis(im, -1, 0), mk.astype(np.int64)


def augmentation(kind: str = "em", *, elastic: bool = True, alpha: float = 100.0,
                 sigma: float = 10.0, elastic_p: float = 0.5, brightness: float = 0.1,
                 contrast: float = 0.1, saturation: float = 0.1, hue: float = 0.02,
                 jitter_p: float = 0.5, border: str = "reflect", ignore_index: int = -100):
    """An albumentations pipeline for :class:`PatchDataset`'s ``transform``.

    Parameters
    ----------
    kind : {"em", "rgb", "flips", "none"}, default "em"
        ``"em"``: D4 (the 8 rotations by 90 degrees and flips, ``A.D4``), then, if ``elastic``,
        an elastic deformation, then brightness/contrast jitter (``A.RandomBrightnessContrast``).
        ``"rgb"``: D4, the elastic deformation if ``elastic``, then ``A.ColorJitter``
        (expects 3 channels). ``"flips"``: D4 only. ``"none"``: the identity.
    elastic : bool, default True
        Add ``A.ElasticTransform`` to "em" and "rgb" (ignored by "flips" and "none").
    alpha, sigma : float, default 100, 10
        Elastic deformation of Simard et al. (2003), as used for the U-Net (Ronneberger et al.,
        2015): a displacement field of uniform noise in [-1, 1] per pixel and axis, smoothed by a
        Gaussian of ``sigma`` pixels and scaled by ``alpha`` (``noise_distribution="uniform"``).
        The defaults give about 2 px RMS displacement inside a 256 px tile, smooth over ~10 px
        (more at the tile edges, where the smoothing sees the replicated border).
    elastic_p : float, default 0.5
        Probability of the elastic deformation.
    brightness, contrast : float, default 0.1
        Jitter limits: ``"em"``: ``x * (1 + c) + b * max`` with ``c`` in ``[-contrast,
        contrast]``, ``b`` in ``[-brightness, brightness]`` and ``max`` 255 (uint8) or 1
        (float in [0, 1]), clipped to the range. ``"rgb"``: ``A.ColorJitter`` factors in
        ``[1 - v, 1 + v]``.
    saturation, hue : float, default 0.1, 0.02
        ``A.ColorJitter`` saturation factor range ``[1 - v, 1 + v]`` and hue shift ``[-hue,
        hue]`` (``"rgb"`` only).
    jitter_p : float, default 0.5
        Probability of the intensity jitter.
    border : {"reflect", "ignore"}, default "reflect"
        Pixels the elastic deformation pulls from outside the patch: ``"reflect"`` mirrors
        image and labels alike (``cv2.BORDER_REFLECT_101``), so they stay aligned and
        labelled; ``"ignore"`` fills the image with 0 and the labels with ``ignore_index``,
        so no loss is computed there. D4 creates no border.
    ignore_index : int, default -100
        Label fill for ``border="ignore"``; use the dataset's ``ignore_index``.

    Returns
    -------
    albumentations.Compose
        Called as ``transform(image=(H, W, C), mask=(H, W))``. The mask is always
        transformed with nearest-neighbour interpolation (``mask_interpolation=INTER_NEAREST``;
        D4 only permutes pixels), so class indices and ``ignore_index`` are never blended.

    Raises
    ------
    ValueError
        For an unknown ``kind`` or ``border``.
    chunkseg.errors.MissingDependencyError
        If albumentations is not installed (``pip install 'chunkseg[train]'``).

    Notes
    -----
    D4 changes the shape of a non-square tile; :class:`PatchDataset` refuses such output.
    """
    if not isinstance(kind, str) or kind not in AUGMENTATIONS:
        raise InvalidValueError(f"`kind` must be one of {list(AUGMENTATIONS)}. Got {kind!r}.")
    if border not in ("reflect", "ignore"):
        raise InvalidValueError(f"`border` must be 'reflect' or 'ignore'. Got {border!r}.")
    try:
        import albumentations as A
        import cv2
    except ImportError as err:
        raise MissingDependencyError(
            "`augmentation` needs albumentations. Got ImportError: "
            f"{err}. Install it with `pip install 'chunkseg[train]'`."
        ) from err
    if kind == "none":
        return A.Compose([])
    steps: list[Callable[..., Any]] = [A.D4(p=1.0)]
    if elastic and kind in ("em", "rgb"):
        if border == "reflect":
            edge = {"border_mode": cv2.BORDER_REFLECT_101}
        else:
            edge = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": ignore_index}
        steps.append(A.ElasticTransform(
            alpha=alpha, sigma=sigma, interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST, noise_distribution="uniform",
            p=elastic_p, **edge))
    if kind == "em":
        steps.append(A.RandomBrightnessContrast(
            brightness_limit=brightness, contrast_limit=contrast, p=jitter_p))
    elif kind == "rgb":
        steps.append(A.ColorJitter(
            brightness=(1 - brightness, 1 + brightness), contrast=(1 - contrast, 1 + contrast),
            saturation=(1 - saturation, 1 + saturation), hue=(-hue, hue), p=jitter_p))
    return A.Compose(steps, mask_interpolation=cv2.INTER_NEAREST)
