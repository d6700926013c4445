"""Model factories that misbehave, for the bad-input matrix (``bad_models:NAME`` specs).

They are stateless: what they return depends only on the batch, so the client's probe and the
tasks agree on what they see whatever the order of calls. The sentinel pixel value
:data:`LATE` marks where a "late" misbehaviour starts: images built with :func:`late_image`
hold it only in their last rows, far from the first tile the client probes.
"""

from __future__ import annotations

import numpy as np

LATE = 255
"""Pixel value that triggers the late misbehaviours (absent from the first tiles)."""


def late_image(shape=(80, 90), seed: int = 3) -> np.ndarray:
    """uint8 noise in 0..254 with the value :data:`LATE` in its last 8 rows."""
    image = np.random.default_rng(seed).integers(0, LATE, shape).astype(np.uint8)
    image[-8:, -8:] = LATE
    return image


def _two_class(batch):
    z = batch / 255.0 - 0.5
    return np.concatenate([z, -z], axis=1)


def wrong_shape():
    """Logits of a 10 x 10 crop instead of the tile."""
    return lambda batch: _two_class(batch)[:, :, :10, :10]


def complex_output():
    """Complex logits."""
    return lambda batch: _two_class(batch).astype(np.complex64)


def string_output():
    """Not an array at all."""
    return lambda batch: "not an array"


def classes_change():
    """2 classes, but 3 for batches that hold the :data:`LATE` value."""

    def model(batch):
        out = _two_class(batch)
        return np.concatenate([out, out[:, :1]], axis=1) if (batch == LATE).any() else out

    return model


def nan_late():
    """NaN logits for batches that hold the :data:`LATE` value."""

    def model(batch):
        out = _two_class(batch)
        if (batch == LATE).any():
            out[:] = np.nan
        return out

    return model


def raises_late():
    """RuntimeError for batches that hold the :data:`LATE` value (a model failing mid-run)."""

    def model(batch):
        if (batch == LATE).any():
            raise RuntimeError("the model failed on a late tile")
        return _two_class(batch)

    return model
