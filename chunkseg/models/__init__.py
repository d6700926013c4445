"""Models: what a model is (spec, normalisation), the adapters that run one on a batch of tiles,
loading by name or path, bioimage.io packages, and the networks chunkseg ships and trains.
"""

from __future__ import annotations

from .adapters import CallableAdapter, KerasAdapter, ModelAdapter, OnnxAdapter, TorchAdapter
from .load import BUILTIN_MODELS, LazyModel, as_model, describe_model, load_model, model_defaults
from .spec import ModelSpec, Normalization

__all__ = [
    "Normalization",
    "ModelSpec",
    "ModelAdapter",
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
