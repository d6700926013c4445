"""A model resolved once per run: what the engine needs to know of it, asked once.

:func:`resolve_model` turns what :func:`chunkseg.predict` accepts as a model into a
:class:`ResolvedModel`: the callable the tasks run (an adapter, or a
:class:`~chunkseg.models.load.LazyModel` that ships its spec, never its weights), the defaults
the model states for itself (tile, overlap, class names), the kernels it allows and its
description for the output's attrs. The runners receive it; no task asks the model's
defaults, description or adapter again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidTypeError
from .adapters import TorchAdapter
from .load import (
    BUILTIN_MODELS,
    LazyModel,
    _load_factory,
    as_model,
    describe_model,
    is_torch_spec,
    load_model,
    model_defaults,
)
from .spec import Normalization

__all__ = ["ResolvedModel", "resolve_instance_model", "resolve_model"]


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    """A model as one run uses it, resolved once on the client (:func:`resolve_model`).

    Picklable; a :class:`~chunkseg.models.load.LazyModel` inside ships its spec only.

    Attributes
    ----------
    model : callable
        float32 ``(N, C_in, T_y, T_x)`` -> ``(N, K, T_y, T_x)`` logits: an adapter, or a
        LazyModel (loaded at its first call, once per process).
    normalization : Normalization or None
        The normalisation the run asked for (None: the model's own, or none).
    tile, overlap : int or (int, int) or None
        The model's own (a bioimage.io package's valid size and twice its halo), else None.
    class_names : tuple of str or None
        The model's own (the shipped U-Net's, a package's output channels), else None.
    kernels : tuple of str
        The per-chunk kernels it allows: ``("torch", "numpy")`` for a torch model,
        ``("numpy",)`` for any other.
    description : dict
        JSON-serialisable, for the output's attrs
        (:func:`chunkseg.models.load.describe_model`).
    """

    model: Callable[[np.ndarray], Any]
    normalization: Normalization | None
    tile: int | tuple[int, int] | None
    overlap: int | tuple[int, int] | None
    class_names: tuple[str, ...] | None
    kernels: tuple[str, ...]
    description: dict

    def loaded(self) -> Callable[[np.ndarray], Any]:
        """The model ready to run: a LazyModel's adapter, loaded once per process
        (:func:`~chunkseg.models.load.load_model`'s cache), else :attr:`model` itself."""
        if isinstance(self.model, LazyModel):
            return load_model(self.model.spec)
        return self.model

    def kernel(self, requested: str) -> str:
        """The per-chunk kernel for a requested one: ``"auto"`` is ``"torch"`` for a torch
        model, else ``"numpy"``.

        Raises
        ------
        chunkseg.errors.InvalidTypeError
            For ``"torch"`` when the model is not a torch model.
        """
        if requested == "numpy":
            return "numpy"
        if "torch" in self.kernels:
            return "torch"
        if requested == "torch":
            raise InvalidTypeError(
                f"`kernel` 'torch' needs a torch model (torch.nn.Module, TorchScript file or a "
                f"factory returning a module). Got {type(self.loaded()).__name__}; use "
                "kernel='numpy' or 'auto'."
            )
        return "numpy"

    def torch_adapter(self) -> TorchAdapter | None:
        """The loaded torch adapter of a torch model (:meth:`loaded`), else None."""
        return self.loaded() if "torch" in self.kernels else None


def resolve_model(model: Any, *, device: str = "cpu",
                  normalization: Normalization | None = None) -> ResolvedModel:
    """Resolve a model once for a run of :func:`chunkseg.predict`.

    Parameters
    ----------
    model : callable, torch.nn.Module, keras.Model, ModelSpec, str or ResolvedModel
        Anything :func:`chunkseg.models.as_model` takes (also a loaded bioimage.io package);
        a ResolvedModel is returned as it is.
    device : str, default "cpu"
        Device of torch, Keras and ONNX models.
    normalization : Normalization, optional
        Input normalisation; for specs it overrides the spec's own.

    Returns
    -------
    ResolvedModel

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``model`` is none of the above (:func:`~chunkseg.models.load.as_model`).
    chunkseg.errors.NotFoundError, chunkseg.errors.InvalidValueError,
    chunkseg.errors.MissingDependencyError
        For a spec that cannot be read or loaded: a spec is loaded here, on the client, once
        per process, when only loading tells whether it is a torch model (a factory, a
        bioimage.io package); a built-in model or a TorchScript, ONNX or Keras file is not
        (:func:`~chunkseg.models.load.is_torch_spec`): it loads at its first call.
    """
    if isinstance(model, ResolvedModel):
        return model
    defaults = model_defaults(model)  # a bioimage.io package's tile, overlap, class names
    predictor = as_model(model, device=device, normalization=normalization)
    names = defaults.get("class_names")
    if isinstance(predictor, LazyModel):
        torch_model = is_torch_spec(predictor.spec)
        # a file chunkseg exported states its class names: read them (loading it); a built-in
        # model's names are in its defaults, so it is not loaded on the client
        if torch_model is None or (names is None and predictor.spec.source not in BUILTIN_MODELS):
            loaded = load_model(predictor.spec)
            torch_model = isinstance(loaded, TorchAdapter)
            names = names or getattr(loaded, "class_names", None)
    else:
        torch_model = isinstance(predictor, TorchAdapter)
        names = names or getattr(predictor, "class_names", None)
    return ResolvedModel(
        model=predictor, normalization=normalization, tile=defaults.get("tile"),
        overlap=defaults.get("overlap"),
        class_names=None if names is None else tuple(names),
        kernels=("torch", "numpy") if torch_model else ("numpy",),
        description=describe_model(predictor))


def resolve_instance_model(model: Any) -> ResolvedModel:
    """Resolve a per-tile instance model once for :func:`chunkseg.predict_instances`.

    Parameters
    ----------
    model : callable or str
        A callable on float32 batches returning integer instance ids, or a
        ``'package.module:factory'`` spec (the factory, called here, returns the callable).

    Returns
    -------
    ResolvedModel
        The callable as it is (no adapter: its integer ids are not logits), no defaults,
        the numpy kernel.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``model`` is not callable.
    """
    if isinstance(model, str) and ":" in model:  # 'package.module:factory'
        model = _load_factory(model, "cpu", {})
    if not callable(model):
        raise InvalidTypeError(
            f"`model` must be a callable on float32 batches returning integer instance ids. "
            f"Got {type(model)!r}.")
    return ResolvedModel(model=model, normalization=None, tile=None, overlap=None,
                         class_names=None, kernels=("numpy",),
                         description=describe_model(model))
