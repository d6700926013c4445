"""Models: what a model is (spec, normalisation), the adapters that run one on a batch of tiles,
loading by name or path, bioimage.io packages, and the networks chunkseg ships and trains.
"""

from __future__ import annotations

from .load import (
    BUILTIN_MODELS,
    CallableAdapter,
    KerasAdapter,
    LazyModel,
    ModelSpec,
    Normalization,
    OnnxAdapter,
    TorchAdapter,
    as_model,
    describe_model,
    load_model,
    model_defaults,
)

__all__ = [
    "Normalization",
    "ModelSpec",
    "CallableAdapter",
    "TorchAdapter",
    "OnnxAdapter",
    "KerasAdapter",
    "LazyModel",
    "as_model",
    "load_model",
    "describe_model",
    "model_defaults",
    "BUILTIN_MODELS",
]
