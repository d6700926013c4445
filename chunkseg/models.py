"""Model adapters: anything that maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits
``(N, K, T_y, T_x)``.

Three adapters share one contract (a callable on numpy batches, picklable):

- :class:`CallableAdapter` for any Python callable on numpy arrays;
- :class:`TorchAdapter` for a ``torch.nn.Module`` or a TorchScript file (``device``,
  ``torch.inference_mode``);
- :class:`OnnxAdapter` for an ``.onnx`` file through ONNX Runtime.

A :class:`ModelSpec` names a model by file path or ``package.module:factory`` instead of holding
it. :func:`as_model` turns a spec into a :class:`LazyModel`, which pickles as the spec alone and
loads the model at its first call, once per process (:func:`load_model` is cached), so a Dask
cluster never ships the weights inside every task.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InvalidTypeError, InvalidValueError, MissingDependencyError, NotFoundError

__all__ = [
    "Normalization",
    "ModelSpec",
    "CallableAdapter",
    "TorchAdapter",
    "OnnxAdapter",
    "LazyModel",
    "as_model",
    "load_model",
    "describe_model",
    "model_defaults",
    "BUILTIN_MODELS",
]


def _as_floats(value: float | Sequence[float], name: str) -> tuple[float, ...]:
    if np.isscalar(value):
        return (float(value),)  # type: ignore[arg-type]
    out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    if not out:
        raise InvalidValueError(f"`{name}` must hold at least one value. Got {value!r}.")
    return out


@dataclass(frozen=True)
class Normalization:
    """Input normalisation applied to each batch before the model: ``(x * scale - mean) / std``.

    ``mean`` and ``std`` hold one value for all channels or one per channel.
    """

    scale: float = 1.0
    """Multiplier applied first (``1/255`` for uint8 images)."""
    mean: tuple[float, ...] = (0.0,)
    """Subtracted after scaling; one value, or one per input channel."""
    std: tuple[float, ...] = (1.0,)
    """Divisor after subtracting the mean; strictly positive."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", _as_floats(self.mean, "mean"))
        object.__setattr__(self, "std", _as_floats(self.std, "std"))
        if any(s <= 0 for s in self.std):
            raise InvalidValueError(f"`std` must be strictly positive. Got {self.std!r}.")

    @property
    def is_identity(self) -> bool:
        """True when the normalisation leaves the batch unchanged."""
        return self.scale == 1.0 and set(self.mean) == {0.0} and set(self.std) == {1.0}

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        """Normalise a float32 batch ``(N, C_in, y, x)``; returns float32 of the same shape.

        Raises
        ------
        ValueError
            If ``mean``/``std`` hold several values and their number is not ``C_in``.
        """
        if self.is_identity:
            return batch
        self.check_channels(batch.shape[1])
        mean = np.asarray(self.mean, np.float32).reshape(1, -1, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(1, -1, 1, 1)
        return ((batch * np.float32(self.scale) - mean) / std).astype(np.float32, copy=False)

    def check_channels(self, channels: int) -> None:
        """Check that ``mean`` and ``std`` fit an image of ``channels`` channels.

        Raises
        ------
        ValueError
            If ``mean`` or ``std`` holds several values and their number is not ``channels``.
        """
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, channels):
                raise InvalidValueError(
                    f"`{name}` has {len(v)} values but the image has {channels} channels; give "
                    f"one value or one per channel."
                )

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}


@dataclass(frozen=True)
class ModelSpec:
    """A model named, not held: resolved lazily, once per process.

    ``source`` is one of

    - a built-in name from :data:`BUILTIN_MODELS` (``"isbi2012-unet"``);
    - a TorchScript file (``.pt``, ``.pth``, ``.ts``, loaded with ``torch.jit.load``);
    - an ONNX file (``.onnx``, run with ONNX Runtime);
    - ``"package.module:factory"``: ``factory()`` (or ``factory(device=...)`` when it takes a
      ``device`` argument) returns a ``torch.nn.Module`` or a callable on numpy batches;
    - a bioimage.io model package: its ``rdf.yaml`` / ``bioimageio.yaml``, its folder or its
      ``.zip`` (:func:`chunkseg.bioimageio.load_bioimageio`; needs ``chunkseg[bioimageio]``),
      run through its TorchScript or ONNX weights with its preprocessing as the normalisation.
    """

    source: str
    """Built-in name, file path or ``package.module:factory``."""
    device: str = "cpu"
    """Torch device (``"cpu"``, ``"cuda"``, ``"cuda:1"``) or ONNX Runtime device."""
    normalization: Normalization | None = None
    """Input normalisation; None uses the built-in model's own, or the identity."""
    options: tuple[tuple[str, Any], ...] = field(default=())
    """Extra keyword arguments for the factory, as ``(name, value)`` pairs (hashable)."""

    def resolved_normalization(self) -> Normalization:
        """The normalisation that will be applied."""
        if self.normalization is not None:
            return self.normalization
        if self.source in BUILTIN_MODELS:
            return BUILTIN_MODELS[self.source][1]()
        if _is_bioimageio(self.source):
            from .bioimageio import load_bioimageio

            return load_bioimageio(self.source).normalization
        return Normalization()

    def to_dict(self) -> dict:
        """JSON-serialisable form (recorded in the output's attrs)."""
        d = asdict(self)
        d["normalization"] = self.resolved_normalization().to_dict()
        d["options"] = dict(self.options)
        return d


def _isbi_normalization() -> Normalization:
    from .unet import ISBI_MEAN, ISBI_SCALE, ISBI_STD

    return Normalization(ISBI_SCALE, (ISBI_MEAN,), (ISBI_STD,))


BUILTIN_MODELS: dict[str, tuple[str, Callable[[], Normalization]]] = {
    "isbi2012-unet": ("chunkseg.unet:pretrained", _isbi_normalization),
}
"""Models shipped with the package: ``name -> (factory, normalisation)``."""

_BUILTIN_CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "isbi2012-unet": ("cell", "membrane"),  # class 0 cell interior, class 1 membrane
}


def _is_bioimageio(source: Any) -> bool:
    from .bioimageio import is_bioimageio_source  # lazy: bioimageio imports this module

    return is_bioimageio_source(source)


def model_defaults(model: Any) -> dict:
    """The tile, overlap and class names a model states for itself, for the engine's defaults.

    Parameters
    ----------
    model : any
        What :func:`as_model` takes; also a :class:`chunkseg.bioimageio.BioimageioModel`.

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
        As :func:`chunkseg.bioimageio.load_bioimageio`, for a package that cannot be read.

    Notes
    -----
    Reads and validates a package's description (cached per process); loads no weights.
    """
    if isinstance(model, LazyModel):
        model = model.spec
    source = model.source if isinstance(model, ModelSpec) else model
    if type(source).__name__ == "BioimageioModel":
        return source.defaults()
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        return {}
    if source in _BUILTIN_CLASS_NAMES:
        return {"class_names": _BUILTIN_CLASS_NAMES[source]}
    if _is_bioimageio(source):
        from .bioimageio import _package_defaults

        return _package_defaults(source)  # whatever the preprocessing: normalization is apart
    return {}


class CallableAdapter:
    """Wrap a Python callable on numpy batches.

    Parameters
    ----------
    fn : callable
        ``fn(batch)`` with ``batch`` a float32 ``(N, C_in, T_y, T_x)`` ndarray returns logits
        ``(N, K, T_y, T_x)`` (any array-like; converted to float32 ndarray).
    normalization : Normalization, optional
        Applied to the batch before ``fn``.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], normalization: Normalization | None = None):
        if not callable(fn):
            raise InvalidTypeError(f"`model` must be callable. Got {type(fn)!r}.")
        self.fn = fn
        self.normalization = normalization or Normalization()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # no dtype here: a wrong result is reported by the engine's output check, by name
        return np.asarray(self.fn(self.normalization(batch)))

    def __repr__(self) -> str:
        return f"CallableAdapter({getattr(self.fn, '__name__', type(self.fn).__name__)})"


class TorchAdapter:
    """Run a ``torch.nn.Module`` (or TorchScript module) on numpy batches.

    The module is moved to ``device`` and put in eval mode; each call runs under
    ``torch.inference_mode()`` and returns float32 numpy logits on the CPU.

    Parameters
    ----------
    module : torch.nn.Module
    device : str, default "cpu"
        Any ``torch.device`` string.
    normalization : Normalization, optional
        Applied on the numpy batch before it is sent to the device.

    Raises
    ------
    ImportError
        If torch is not installed (``pip install "chunkseg[torch]"``).
    """

    def __init__(self, module: Any, device: str = "cpu", normalization: Normalization | None = None):
        torch = _import_torch()
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.normalization = normalization or Normalization()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = _import_torch()
        x = torch.from_numpy(np.ascontiguousarray(self.normalization(batch))).to(self.device)
        with torch.inference_mode():
            y = self.module(x)
        return y.float().cpu().numpy()

    def __repr__(self) -> str:
        return f"TorchAdapter({type(self.module).__name__}, device={str(self.device)!r})"


class OnnxAdapter:
    """Run an ONNX model with ONNX Runtime on numpy batches.

    Parameters
    ----------
    path : str or Path
        ``.onnx`` file with one float32 input ``(N, C_in, T_y, T_x)`` and logits as first output.
    device : str, default "cpu"
        ``"cpu"`` uses ``CPUExecutionProvider``; ``"cuda"`` puts ``CUDAExecutionProvider`` first.
    normalization : Normalization, optional

    Raises
    ------
    ImportError
        If onnxruntime is not installed (``pip install "chunkseg[onnx]"``).
    FileNotFoundError
        If ``path`` does not exist.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu",
                 normalization: Normalization | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise MissingDependencyError(
                "ONNX models need onnxruntime: pip install 'chunkseg[onnx]'."
            ) from e
        path = Path(path)
        if not path.exists():
            raise NotFoundError(f"`model` file {str(path)!r} does not exist.")
        providers = ["CPUExecutionProvider"]
        if device.startswith("cuda"):
            providers.insert(0, "CUDAExecutionProvider")
        self.path = path
        self.device = device
        state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
        load_errors = (RuntimeError,) + tuple(
            getattr(state, name) for name in ("Fail", "InvalidProtobuf", "InvalidGraph",
                                              "InvalidArgument", "NoSuchFile")
            if state is not None and hasattr(state, name))
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except load_errors as err:  # onnxruntime's errors for a file that is not a model
            raise InvalidValueError(
                f"`model` file {str(path)!r} must be an ONNX model. Got a file onnxruntime "
                f"cannot load: {_first_line(err)}. Export it with torch.onnx.export."
            ) from err
        self.input_name = self.session.get_inputs()[0].name
        self.normalization = normalization or Normalization()

    def __reduce__(self):
        # An InferenceSession cannot be pickled: send the path and rebuild it on arrival.
        return (OnnxAdapter, (self.path, self.device, self.normalization))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self.normalization(batch), dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def __repr__(self) -> str:
        return f"OnnxAdapter({self.path.name!r})"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("PyTorch models need torch: pip install 'chunkseg[torch]'.") from e
    return torch


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _wrap(obj: Any, device: str, normalization: Normalization) -> Callable[[np.ndarray], np.ndarray]:
    if _is_torch_module(obj):
        return TorchAdapter(obj, device, normalization)
    return CallableAdapter(obj, normalization)


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
    if "device" in params:
        kwargs["device"] = device
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
    if _is_bioimageio(source):  # the package's weights file, with its (or the spec's) norm
        from .bioimageio import load_bioimageio

        package = load_bioimageio(source, normalization=spec.normalization)
        return _load_model_cached(package.to_model_spec(spec.device))
    suffix = Path(source).suffix.lower()
    if suffix == ".onnx":
        return OnnxAdapter(source, spec.device, norm)
    if suffix in (".pt", ".pth", ".ts"):
        if not Path(source).exists():
            raise NotFoundError(f"`model` file {source!r} does not exist.")
        torch = _import_torch()
        try:
            module = torch.jit.load(source, map_location=spec.device)
        except RuntimeError as err:  # torch's error for a file that is not a TorchScript zip
            raise InvalidValueError(
                f"`model` file {source!r} must be a TorchScript archive (saved with "
                f"torch.jit.save). Got a file torch cannot load as one: {_first_line(err)}. "
                "Export the model with torch.jit.script(model).save(path)."
            ) from err
        return TorchAdapter(module, spec.device, norm)
    if ":" in source and not Path(source).exists():
        return _wrap(_load_factory(source, spec.device, dict(spec.options)), spec.device, norm)
    raise InvalidValueError(
        f"`model` spec {source!r} is not understood. Use a built-in name "
        f"({', '.join(BUILTIN_MODELS)}), a TorchScript file (.pt/.pth/.ts), an ONNX file "
        f"(.onnx), a bioimage.io package (rdf.yaml, its folder or .zip) or "
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

    def __repr__(self) -> str:
        return f"LazyModel({self.spec.source!r}, device={self.spec.device!r})"


def as_model(
    model: Any, *, device: str = "cpu", normalization: Normalization | None = None
) -> Callable[[np.ndarray], np.ndarray]:
    """Turn anything chunkseg accepts as a model into a callable on numpy batches.

    Parameters
    ----------
    model : ModelSpec, str, os.PathLike, torch.nn.Module or callable
        A spec or a string/path (see :class:`ModelSpec`) becomes a :class:`LazyModel`; a torch
        module a :class:`TorchAdapter`; any other callable a :class:`CallableAdapter`. An
        adapter or LazyModel is returned as it is.
    device : str, default "cpu"
        Device for torch and ONNX models (ignored for plain callables).
    normalization : Normalization, optional
        Input normalisation; for specs it overrides the spec's own.

    Returns
    -------
    callable
        float32 ``(N, C_in, T_y, T_x)`` -> float32 logits ``(N, K, T_y, T_x)``.

    Raises
    ------
    TypeError
        If ``model`` is none of the above.
    """
    if isinstance(model, (CallableAdapter, TorchAdapter, OnnxAdapter, LazyModel)):
        return model
    if isinstance(model, (str, os.PathLike)):
        model = ModelSpec(str(model), device=device, normalization=normalization)
    if isinstance(model, ModelSpec):
        if normalization is not None and model.normalization is None:
            model = ModelSpec(model.source, model.device, normalization, model.options)
        return LazyModel(model)
    if _is_torch_module(model):
        return TorchAdapter(model, device, normalization)
    if callable(model):
        return CallableAdapter(model, normalization)
    raise InvalidTypeError(
        "`model` must be a callable on numpy batches, a torch.nn.Module, a ModelSpec, or a "
        f"spec string (file path or 'package.module:factory'). Got {type(model)!r}."
    )


def describe_model(model: Any) -> dict:
    """A JSON-serialisable description of a model for the output's attrs."""
    if isinstance(model, LazyModel):
        return {"kind": "spec", **model.spec.to_dict()}
    if isinstance(model, TorchAdapter):
        return {"kind": "torch", "module": type(model.module).__name__,
                "device": str(model.device), "normalization": model.normalization.to_dict()}
    if isinstance(model, OnnxAdapter):
        return {"kind": "onnx", "source": str(model.path),
                "normalization": model.normalization.to_dict()}
    if isinstance(model, CallableAdapter):
        name = getattr(model.fn, "__qualname__", type(model.fn).__name__)
        return {"kind": "callable", "name": name, "normalization": model.normalization.to_dict()}
    return {"kind": "callable", "name": type(model).__name__}
