"""A bioimage.io input's preprocessing as a chunkseg :class:`~chunkseg.models.spec.Normalization`.

The affine ops (``scale_linear``, ``fixed_zero_mean_unit_variance``, float casts) compose into
``a * x + b`` per channel, which is ``(x * scale - mean) / std``; any other op (statistics of each
sample, clips, thresholds) has no fixed equivalent and is refused, naming the op and the fix.
Reads the description objects :mod:`chunkseg.models.bioimageio` loads; imports no bioimageio.
"""

from __future__ import annotations

import numpy as np

from ..errors import InvalidValueError
from .spec import Normalization

MAPPED_PREPROCESSING = ("ensure_dtype", "scale_linear", "fixed_zero_mean_unit_variance")
"""Preprocessing ops that :func:`chunkseg.models.bioimageio.load_bioimageio` maps to a chunkseg
Normalization."""


def _normalization(path: str, ipt, axes, hint: Normalization | None) -> Normalization:
    """Compose the input's preprocessing into ``a * x + b`` per channel; as a Normalization."""
    channels = axes[1].size
    channel_id = str(axes[1].id)
    a = np.ones(channels, np.float64)
    b = np.zeros(channels, np.float64)
    for i, op in enumerate(ipt.preprocessing):
        kw = op.kwargs
        if op.id == "ensure_dtype":
            if str(kw.dtype).startswith("float") or (i == 0 and str(kw.dtype) == ipt.dtype):
                continue  # a float cast, or the cast of the raw input to its own dtype
            _unmappable(path, ipt, op.id, f"a cast to {kw.dtype} after the input is read "
                        "(chunkseg normalises in float32 and does not round)")
        elif op.id in ("scale_linear", "fixed_zero_mean_unit_variance"):
            along = getattr(kw, "axis", None)
            if along is not None and str(along) != channel_id:
                _unmappable(path, ipt, op.id, f"values along the axis {str(along)!r}, not the "
                            "channel axis")
            if op.id == "scale_linear":
                gain = _per_channel(kw.gain, channels, path, ipt, op.id)
                offset = _per_channel(kw.offset, channels, path, ipt, op.id)
                a, b = a * gain, b * gain + offset
            else:
                mean = _per_channel(kw.mean, channels, path, ipt, op.id)
                std = _per_channel(kw.std, channels, path, ipt, op.id)
                a, b = a / std, (b - mean) / std
        else:
            _unmappable(path, ipt, op.id, _WHY_NOT.get(op.id, "an op chunkseg does not map"))
    if np.any(a <= 0):
        _unmappable(path, ipt, "scale_linear", f"a gain of {a.tolist()} (negative or zero), "
                    "which (x * scale - mean) / std with std > 0 cannot express")
    return _normalization_from_affine(a, b, hint)


_WHY_NOT = {
    "zero_mean_unit_variance": "statistics of each sample, which tiled inference would compute "
                               "per tile (and each tile would normalise differently)",
    "scale_range": "percentiles of each sample, which tiled inference would compute per tile",
    "scale_mean_variance": "statistics of a reference tensor",
    "clip": "a clip, which is not affine",
    "binarize": "a threshold, which is not affine",
    "sigmoid": "a sigmoid, which is not affine",
    "softmax": "a softmax, which is not affine",
}


def _per_channel(value, channels: int, path: str, ipt, op_id: str) -> np.ndarray:
    v = np.atleast_1d(np.asarray(value, np.float64))
    if v.size == 1:
        return np.full(channels, float(v[0]))
    if v.size != channels:
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r}: preprocessing op {op_id!r} of input "
            f"{str(ipt.id)!r} must give one value or one per channel ({channels}). Got "
            f"{v.size} values; fix the rdf.yaml."
        )
    return v


def _unmappable(path: str, ipt, op_id: str, why: str) -> None:
    raise InvalidValueError(
        f"`model` bioimage.io package {path!r}: preprocessing op {op_id!r} of input "
        f"{str(ipt.id)!r} must be one chunkseg maps to its fixed Normalization "
        f"(x * scale - mean) / std ({', '.join(MAPPED_PREPROCESSING)}). Got {why}. Pass "
        f"normalization=chunkseg.Normalization(scale, mean, std) to load_bioimageio or "
        f"chunkseg.predict (ModelSpec(..., normalization=...)) with values for your images."
    )


def _normalization_from_affine(a: np.ndarray, b: np.ndarray,
                               hint: Normalization | None) -> Normalization:
    """``a * x + b`` as a Normalization: ``hint`` (the chunkseg form an export recorded in the
    config) when it is the same map to 1e-6, else ``(x - (-b / a)) / (1 / a)``."""
    if hint is not None and len(hint.mean) in (1, a.size) and len(hint.std) in (1, a.size):
        ha, hb = hint.affine(a.size)
        if np.allclose(ha, a, rtol=1e-6, atol=0) and np.allclose(hb, b, rtol=1e-6, atol=1e-9):
            return hint
    if np.all(a == a[0]) and np.all(b == b[0]):
        a, b = a[:1], b[:1]
    return Normalization(1.0, tuple(float(v) for v in -b / a), tuple(float(v) for v in 1 / a))


def _config_normalization(descr) -> Normalization | None:
    """The Normalization a chunkseg export records under ``config.chunkseg``, if any."""
    extra = getattr(descr.config, "model_extra", None) or {}
    ours = extra.get("chunkseg")
    norm = ours.get("normalization") if isinstance(ours, dict) else None
    if not isinstance(norm, dict) or set(norm) != {"scale", "mean", "std"}:
        return None
    try:
        return Normalization.from_dict(norm)
    except (TypeError, ValueError):
        return None  # a hint only: the preprocessing is what counts
