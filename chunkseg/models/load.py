"""Loading models: a :class:`~chunkseg.models.spec.ModelSpec` dispatched by its source to an
adapter (:mod:`chunkseg.models.adapters`), the per-process cache, and what a model states for
itself.

A :class:`ModelSpec` names a model by built-in name, file path, bioimage.io package or
``package.module:factory`` instead of holding it. :func:`as_model` turns a spec into a
:class:`LazyModel`, which pickles as the spec alone and loads the model at its first call, once
per process (:func:`load_model` is cached), so a Dask cluster never ships the weights inside
every task; it turns a model object into its adapter. :func:`describe_model` records a model in
an output's attrs; :func:`model_defaults` gives the engine the tile, overlap and class names a
model states.

"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, NotFoundError
from .adapters import (
    MODEL_METADATA,
    CallableAdapter,
    KerasAdapter,
    ModelAdapter,
    OnnxAdapter,
    TorchAdapter,
    _first_line,
    _import_torch,
    _torch_device,
    _wrap,
    metadata_class_names,
)
from .bioimageio import BioimageioModel, _package_defaults, is_bioimageio_source, load_bioimageio
from .spec import (
    ModelSpec,
    Normalization,
    isbi_normalization,
    register_source_normalization,
)

__all__ = [
    "LazyModel",
    "as_model",
    "load_model",
    "describe_model",
    "model_defaults",
    "BUILTIN_MODELS",
]


BUILTIN_MODELS: dict[str, tuple[str, Callable[[], Normalization]]] = {
    "isbi2012-unet": ("chunkseg.models.unet:pretrained", isbi_normalization),
}
"""Models shipped with the package: ``name -> (factory, normalisation)``."""

_BUILTIN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "isbi2012-unet": ("cell", "membrane"),  # class 0 cell interior, class 1 membrane
}

_BUILTIN_TORCH = frozenset({"isbi2012-unet"})  # built-in models whose factory returns a torch module

_TORCH_SUFFIXES = (".pt", ".pth", ".ts")


def is_torch_spec(spec: ModelSpec) -> bool | None:
    """Whether a spec loads as a torch model, told from its source without loading it.

    Returns
    -------
    bool or None
        True for a built-in torch model or an existing TorchScript file (.pt, .pth, .ts),
        False for an existing ONNX or Keras file, None when only loading tells (a
        ``package.module:factory``, a bioimage.io package, a missing file: loading it also
        raises the error that names it).
    """
    source = spec.source
    if source in _BUILTIN_TORCH:
        return True
    suffix = Path(source).suffix.lower()
    if suffix in _TORCH_SUFFIXES + (".onnx", ".keras") and Path(source).is_file():
        return suffix in _TORCH_SUFFIXES
    return None


def _is_bioimageio(source: Any) -> bool:
    return is_bioimageio_source(source)


def _own_normalization(source: str) -> Normalization | None:
    """The normalisation a source states: a built-in model's, a bioimage.io package's
    preprocessing (reading the package); None for any other source."""
    if source in BUILTIN_MODELS:
        return BUILTIN_MODELS[source][1]()
    if is_bioimageio_source(source):
        return load_bioimageio(source).normalization
    return None


register_source_normalization(_own_normalization)  # ModelSpec.resolved_normalization asks it


def model_defaults(model: Any) -> dict:
    """The tile, overlap and class names a model states for itself, for the engine's defaults.

    Parameters
    ----------
    model : any
        What :func:`as_model` takes; also a :class:`chunkseg.models.bioimageio.BioimageioModel`.

    Returns
    -------
    dict
        For a bioimage.io package (a spec string, a :class:`ModelSpec` or a
        :class:`LazyModel` naming one, or a loaded ``BioimageioModel``): ``{"tile": ...,
        "overlap": ..., "class_names": (...)}`` (int or ``(y, x)`` tuples; the package's valid
        size nearest 256, twice its output halo, its output channel names), plus
        ``"batch_size": 1`` when the package fixes its batch to one sample. For a built-in
        model: its ``{"class_names": ...}``. ``{}`` for anything else.

    Raises
    ------
    MissingDependencyError, NotFoundError, InvalidValueError
        As :func:`chunkseg.models.bioimageio.load_bioimageio`, for a package that cannot be read.

    Notes
    -----
    Reads and validates a package's description (cached per process); loads no weights.
    """
    if isinstance(model, LazyModel):
        model = model.spec
    source = model.source if isinstance(model, ModelSpec) else model
    if isinstance(source, BioimageioModel):
        return source.defaults()
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        return {}
    if source in _BUILTIN_CLASS_NAMES:
        return {"class_names": _BUILTIN_CLASS_NAMES[source]}
    if is_bioimageio_source(source):
        return _package_defaults(source)  # whatever the preprocessing: normalization is apart
    return {}


def _load_factory(source: str, device: str, options: dict) -> Any:
    module_name, _, attr = source.partition(":")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as e:
        raise InvalidValueError(
            f"`model` spec {source!r} could not be resolved ({e}). Use 'package.module:factory' "
            f"with an importable module and a factory function in it."
        ) from e
    kwargs = dict(options)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "device" in params:  # a torch factory: refuse a device this machine lacks first
        kwargs["device"] = str(_torch_device(device))
    return factory(**kwargs)


_LOAD_LOCK = threading.Lock()


def load_model(spec: ModelSpec) -> Callable[[np.ndarray], np.ndarray]:
    """Load the model a spec names; cached, so each process loads each spec once.

    Parameters
    ----------
    spec : ModelSpec

    Returns
    -------
    callable
        An adapter: float32 ``(N, C_in, T_y, T_x)`` -> float32 logits ``(N, K, T_y, T_x)``,
        normalisation included.

    Raises
    ------
    FileNotFoundError
        If a file spec does not exist.
    ValueError
        If the spec is neither a built-in name, a known file type, nor ``module:factory``.

    Notes
    -----
    Thread-safe: concurrent first calls from the threads of one Dask worker load once.
    ``load_model.cache_info()`` counts the loads of this process.
    """
    with _LOAD_LOCK:
        return _load_model_cached(spec)


load_model.cache_info = lambda: _load_model_cached.cache_info()  # type: ignore[attr-defined]
load_model.cache_clear = lambda: _load_model_cached.cache_clear()  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=16)
def _load_model_cached(spec: ModelSpec) -> Callable[[np.ndarray], np.ndarray]:
    norm = spec.resolved_normalization()
    source = spec.source
    if source in BUILTIN_MODELS:
        return _wrap(_load_factory(BUILTIN_MODELS[source][0], spec.device, dict(spec.options)),
                     spec.device, norm)
    if is_bioimageio_source(source):  # the package's weights file, with its (or the spec's) norm
        package = load_bioimageio(source, normalization=spec.normalization)
        return _load_model_cached(package.to_model_spec(spec.device))
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return OnnxAdapter(source, spec.device, norm)
    if suffix == ".keras":
        options = dict(spec.options)
        data_format = options.pop("data_format", None)
        if options:
            raise InvalidValueError(
                f"`options` of a .keras spec may only hold 'data_format'. Got {sorted(options)}."
            )
        return KerasAdapter(source, spec.device, norm, data_format)
    if suffix in _TORCH_SUFFIXES:
        if not Path(source).exists():
            raise NotFoundError(f"`model` file {source!r} does not exist.")
        torch = _import_torch()
        device = _torch_device(spec.device)
        extra = {MODEL_METADATA: ""}  # filled when the file holds chunkseg's metadata
        try:
            module = torch.jit.load(source, map_location=device, _extra_files=extra)
        except RuntimeError as err:  # torch's error for a file that is not a TorchScript zip
            raise InvalidValueError(
                f"`model` file {source!r} must be a TorchScript archive (saved with "
                f"torch.jit.save). Got a file torch cannot load as one: {_first_line(err)}. "
                "Export the model with torch.jit.script(model).save(path)."
            ) from err
        return TorchAdapter(module, spec.device, norm,
                            class_names=metadata_class_names(extra[MODEL_METADATA], source))
    if ":" in source and not Path(source).exists():
        return _wrap(_load_factory(source, spec.device, dict(spec.options)), spec.device, norm)
    raise InvalidValueError(
        f"`model` spec {source!r} is not understood. Use a built-in name "
        f"({', '.join(BUILTIN_MODELS)}), a TorchScript file (.pt/.pth/.ts), an ONNX file "
        f"(.onnx), a Keras file (.keras), a bioimage.io package (rdf.yaml, its folder or .zip) or "
        f"'package.module:factory'."
    )


class LazyModel:
    """A picklable handle on a :class:`ModelSpec`: loads it at first call, once per process.

    Pickling sends the spec only (a few hundred bytes), never the weights.
    """

    def __init__(self, spec: ModelSpec):
        self.spec = spec

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return load_model(self.spec)(batch)

    def describe(self) -> dict:
        """``{"kind": "spec", **spec.to_dict()}``, for the output's attrs (resolves the spec's
        normalisation, loads no weights)."""
        return {"kind": "spec", **self.spec.to_dict()}

    def __repr__(self) -> str:
        return f"LazyModel({self.spec.source!r}, device={self.spec.device!r})"


_ADAPTERS = (CallableAdapter, TorchAdapter, OnnxAdapter, KerasAdapter, LazyModel)
"""The classes satisfying :class:`ModelAdapter`: returned by :func:`as_model` as they are."""


def as_model(
    model: Any, *, device: str = "cpu", normalization: Normalization | None = None
) -> ModelAdapter:
    """Turn anything chunkseg accepts as a model into a callable on numpy batches.

    Parameters
    ----------
    model : ModelSpec, str, os.PathLike, keras.Model, torch.nn.Module or callable
        A spec or a string/path (see :class:`ModelSpec`) becomes a :class:`LazyModel`; a Keras
        model a :class:`KerasAdapter`; a torch module a :class:`TorchAdapter`; any other
        callable a :class:`CallableAdapter`. An adapter or LazyModel is returned as it is.
    device : str, default "cpu"
        Device for torch, Keras and ONNX models (ignored for plain callables).
    normalization : Normalization, optional
        Input normalisation; for specs it overrides the spec's own.

    Returns
    -------
    ModelAdapter
        float32 ``(N, C_in, T_y, T_x)`` -> float32 logits ``(N, K, T_y, T_x)``.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``model`` is none of the above.
    """
    if isinstance(model, _ADAPTERS):
        return model
    if isinstance(model, (str, os.PathLike)):
        model = ModelSpec(str(model), device=device, normalization=normalization)
    if isinstance(model, ModelSpec):
        if normalization is not None and model.normalization is None:
            model = ModelSpec(model.source, model.device, normalization, model.options)
        return LazyModel(model)
    if callable(model):  # a Keras model, a torch module or a plain callable
        return _wrap(model, device, normalization)
    raise InvalidTypeError(
        "`model` must be a callable on numpy batches, a torch.nn.Module, a keras.Model, a "
        "ModelSpec, or a spec string (file path or 'package.module:factory'). "
        f"Got {type(model)!r}."
    )


def describe_model(model: Any) -> dict:
    """A JSON-serialisable description of a model for the output's attrs.

    Parameters
    ----------
    model : any
        What :func:`as_model` returns, or any other callable.

    Returns
    -------
    dict
        The adapter's :meth:`ModelAdapter.describe` (``"kind"``: ``"spec"``, ``"torch"``,
        ``"onnx"``, ``"keras"`` or ``"callable"``, with its source, device and normalisation);
        ``{"kind": "callable", "name": <type name>}`` for anything else.
    """
    if isinstance(model, _ADAPTERS):
        return model.describe()
    return {"kind": "callable", "name": type(model).__name__}
