"""Model adapters: anything that maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits
``(N, K, T_y, T_x)``.

Four adapters share one contract (a callable on numpy batches, picklable):

- :class:`CallableAdapter` for any Python callable on numpy arrays;
- :class:`TorchAdapter` for a ``torch.nn.Module`` or a TorchScript file (``device``,
  ``torch.inference_mode``);
- :class:`OnnxAdapter` for an ``.onnx`` file through ONNX Runtime;
- :class:`KerasAdapter` for a Keras 3 model or ``.keras`` file, run with Keras' torch backend
  (channels-last models are transposed to and from the engine's channels-first batches).

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
import sys
import threading
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError, NotFoundError

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
    - a Keras 3 file (``.keras``, run with Keras' torch backend, see :class:`KerasAdapter`);
    - ``"package.module:factory"``: ``factory()`` (or ``factory(device=...)`` when it takes a
      ``device`` argument) returns a ``torch.nn.Module`` or a callable on numpy batches;
    - a bioimage.io model package: its ``rdf.yaml`` / ``bioimageio.yaml``, its folder or its
      ``.zip`` (:func:`chunkseg.models.bioimageio.load_bioimageio`; needs ``chunkseg[bioimageio]``),
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
    "isbi2012-unet": ("chunkseg.models.unet:pretrained", _isbi_normalization),
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
        self.device = _torch_device(device)
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
        ``"cpu"`` uses ``CPUExecutionProvider``; ``"cuda"`` (``"cuda:N"``: GPU ``N``) puts
        ``CUDAExecutionProvider`` first.
    normalization : Normalization, optional

    Raises
    ------
    ImportError
        If onnxruntime is not installed (``pip install "chunkseg[onnx]"``).
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``device`` is not ``"cpu"``/``"cuda[:N]"``, or is CUDA and onnxruntime has no
        ``CUDAExecutionProvider``.
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
        providers: list = ["CPUExecutionProvider"]
        kind, _, index = str(device).partition(":")
        if device != "cpu" and not (kind == "cuda" and (not index or index.isdigit())):
            raise InvalidValueError(
                f"`device` must be 'cpu', 'cuda' or 'cuda:N' for an ONNX model. Got {device!r}. "
                "Use 'cpu' (CLI: --device cpu), or 'cuda' with onnxruntime-gpu.")
        if kind == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" not in available:
                raise InvalidValueError(
                    f"`device` must be a device ONNX Runtime can use here. Got {device!r}, but "
                    f"this onnxruntime has no CUDAExecutionProvider (it has {available}). Use "
                    "'cpu' (CLI: --device cpu), or install onnxruntime-gpu on a machine with a "
                    "GPU.")
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(index or 0)}))
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


_KERAS_FORMATS = ("channels_last", "channels_first")
_KERAS_INSTALL = 'pip install "chunkseg[keras]"'


def _import_keras():
    """Keras 3 with the torch backend, importing it with that backend if it is not imported yet.

    Keras reads its backend once, at its first import: from ``KERAS_BACKEND``, else from
    ``~/.keras/keras.json``, else TensorFlow. When keras is not imported yet and
    ``KERAS_BACKEND`` is unset, this sets it to ``torch`` (for this process and the processes it
    starts) before importing keras.
    """
    keras = sys.modules.get("keras")
    if keras is None:  # not imported yet: the backend can still be chosen
        wanted = os.environ.get("KERAS_BACKEND")
        if wanted is None:
            os.environ["KERAS_BACKEND"] = "torch"
        elif wanted.strip().lower() != "torch":
            raise MissingDependencyError(
                f"Keras models run with Keras' torch backend, but KERAS_BACKEND is {wanted!r}. "
                "Set KERAS_BACKEND=torch before Python imports keras (a .keras file saved with "
                "any backend loads with the torch one)."
            )
        try:
            import torch  # noqa: F401  (keras' torch backend fails on import without it)
        except ImportError as e:
            raise MissingDependencyError(
                f"Keras models run on Keras' torch backend, which needs torch: {_KERAS_INSTALL}."
            ) from e
        try:
            import keras
        except ImportError as e:
            raise MissingDependencyError(
                f"Keras models need Keras 3 (torch backend): {_KERAS_INSTALL}."
            ) from e
    version = str(getattr(keras, "__version__", "0"))
    if not version.split(".")[0].isdigit() or int(version.split(".")[0]) < 3:
        raise MissingDependencyError(
            f"Keras models need Keras 3; this process has keras {version}: {_KERAS_INSTALL}."
        )
    backend = keras.backend.backend()
    if backend != "torch":
        raise MissingDependencyError(
            f"Keras models run with Keras' torch backend, but keras was imported with the "
            f"{backend!r} backend (Keras reads KERAS_BACKEND once, at its first import). Set "
            "KERAS_BACKEND=torch before importing keras, e.g. `KERAS_BACKEND=torch python ...` "
            "or os.environ['KERAS_BACKEND'] = 'torch' at the top of the script."
        )
    return keras


def _is_keras_model(obj: Any) -> bool:
    keras = sys.modules.get("keras")  # a Keras model exists only once keras is imported
    model_class = getattr(keras, "Model", None)
    return isinstance(model_class, type) and isinstance(obj, model_class)


def _keras_input_shape(model: Any) -> tuple | None:
    try:
        inputs = model.inputs  # functional and sequential models; subclassed ones may lack it
    except (AttributeError, ValueError):
        return None
    if not inputs:
        return None
    if len(inputs) != 1:
        raise InvalidValueError(
            f"`model` (Keras) must take one image input. Got {len(inputs)} inputs; wrap it in "
            "a model of one input."
        )
    return tuple(inputs[0].shape)


def _keras_data_format(model: Any, keras: Any) -> str:
    """The layout of the model's input: from its input shape when only one end of it is known
    (``(None, None, None, 3)``: channels_last), else the ``data_format`` its layers agree on,
    else Keras' ``image_data_format()``."""
    shape = _keras_input_shape(model)
    if shape is not None:
        if len(shape) != 4:
            raise InvalidValueError(
                f"`model` (Keras) must take 4-D image batches, (N, H, W, C) or (N, C, H, W). "
                f"Got an input of shape {shape}."
            )
        if shape[3] is not None and shape[1] is None:
            return "channels_last"
        if shape[1] is not None and shape[3] is None:
            return "channels_first"
    formats, stack, seen = set(), [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if getattr(layer, "data_format", None) in _KERAS_FORMATS:
            formats.add(layer.data_format)
        stack.extend(getattr(layer, "layers", None) or ())
    if len(formats) == 1:
        return formats.pop()
    if formats:
        raise InvalidValueError(
            f"`model` (Keras) has layers in both data formats and an input shape {shape} that "
            "does not tell which one it takes; pass data_format='channels_last' or "
            "'channels_first' (KerasAdapter, or ModelSpec options)."
        )
    return keras.config.image_data_format()


def _same_device(a: Any, b: Any) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _keras_bytes(model: Any) -> bytes:
    """A Keras model as the bytes of a ``.keras`` file (Keras' own format, no pickle)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(str(path))
        return path.read_bytes()


def _keras_adapter_from_bytes(data: bytes, device: str, normalization: Normalization,
                              data_format: str | None) -> KerasAdapter:
    """Rebuild a pickled in-memory Keras adapter: its ``.keras`` bytes loaded in safe mode,
    the weights built on ``device``."""
    import tempfile

    keras = _import_keras()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        path.write_bytes(data)
        with keras.device(device):
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    return KerasAdapter(model, device, normalization, data_format)


class KerasAdapter:
    """Run a Keras 3 model (or a ``.keras`` file) with Keras' torch backend on numpy batches.

    Each call runs ``model(x, training=False)`` under ``torch.no_grad()`` and returns float32
    numpy logits ``(N, K, T_y, T_x)``. A channels-last model gets the engine's batch transposed
    to ``(N, T_y, T_x, C_in)`` and its ``(N, T_y, T_x, K)`` output transposed back; a
    channels-first model gets the batch as it is.

    Parameters
    ----------
    model : str, os.PathLike or keras.Model
        A ``.keras`` file (loaded with ``keras.saving.load_model(path, compile=False)``, in
        Keras' safe mode: custom layers must be registered with
        ``keras.saving.register_keras_serializable`` in an imported module, and ``Lambda``
        layers are refused; load such a model yourself, or in a ``package.module:factory``),
        or a model in memory.
    device : str, default "cpu"
        Torch device the model runs on. A file is loaded onto it; a model in memory must already
        hold its weights there (build or load it under ``with keras.device(device):``).
    normalization : Normalization, optional
        Applied on the numpy batch ``(N, C_in, T_y, T_x)`` before it is transposed.
    data_format : {"channels_last", "channels_first"}, optional
        The layout the model takes. None reads it from the model's input shape (the end of
        ``(None, None, None, 3)`` that is known), else from the ``data_format`` of its layers,
        else from ``keras.config.image_data_format()``.

    Raises
    ------
    MissingDependencyError
        If Keras 3 is not installed (``pip install "chunkseg[keras]"``), or keras was imported
        (or ``KERAS_BACKEND`` set) with a backend other than torch: set
        ``KERAS_BACKEND=torch`` before importing keras. When keras is not imported yet and
        ``KERAS_BACKEND`` is unset, chunkseg sets it to ``torch`` itself.
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file is not a Keras model Keras can load, the model does not take one 4-D
        input, ``data_format`` is unknown, or a model in memory lives on another device.
    TypeError
        If ``model`` is neither a path nor a ``keras.Model``.

    Notes
    -----
    Pickles as its path (a file) or as Keras' own serialisation of the model (in memory),
    rebuilt on ``device`` on arrival. Runs on the engine's numpy kernel (the torch kernel
    takes torch modules in the channels-first layout only).
    """

    def __init__(self, model: Any, device: str = "cpu",
                 normalization: Normalization | None = None, data_format: str | None = None):
        keras = _import_keras()
        if data_format is not None and data_format not in _KERAS_FORMATS:
            raise InvalidValueError(
                f"`data_format` must be one of {_KERAS_FORMATS} or None. Got {data_format!r}."
            )
        self.device = _torch_device(device)
        self.path: Path | None = None
        if isinstance(model, (str, os.PathLike)):
            path = Path(model)
            if not path.exists():
                raise NotFoundError(f"`model` file {str(path)!r} does not exist.")
            try:
                with keras.device(str(self.device)):
                    model = keras.saving.load_model(str(path), compile=False)
            except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as err:
                raise InvalidValueError(
                    f"`model` file {str(path)!r} must be a Keras 3 model saved with "
                    f"model.save('name.keras'). Got a file Keras cannot load: "
                    f"{_first_line(err)}. Custom layers must be registered "
                    "(keras.saving.register_keras_serializable) in a module imported first."
                ) from err
            self.path = path
        elif not _is_keras_model(model):
            raise InvalidTypeError(
                f"`model` must be a .keras file or a keras.Model. Got {type(model)!r}."
            )
        else:
            weights = [w for w in model.weights if hasattr(w, "value")]
            held = weights[0].value.device if weights else self.device
            if not _same_device(held, self.device):
                raise InvalidValueError(
                    f"`device` is {str(self.device)!r} but the Keras model's weights are on "
                    f"{str(held)!r}. Pass device={str(held)!r}, or build or load the model "
                    f"under `with keras.device({str(self.device)!r}):`."
                )
        self.model = model
        self._data_format = data_format
        self.data_format = data_format or _keras_data_format(model, keras)
        self.normalization = normalization or Normalization()

    def __reduce__(self):
        if self.path is not None:  # the file travels by name and is loaded on arrival
            return (KerasAdapter, (self.path, str(self.device), self.normalization,
                                   self._data_format))
        return (_keras_adapter_from_bytes, (_keras_bytes(self.model), str(self.device),
                                            self.normalization, self._data_format))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        keras = _import_keras()
        torch = _import_torch()
        x = self.normalization(batch)
        if self.data_format == "channels_last":
            x = x.transpose(0, 2, 3, 1)
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        with torch.no_grad(), keras.device(str(self.device)):
            y = self.model(x, training=False)
        if isinstance(y, (list, tuple)):  # several outputs: the logits come first
            y = y[0]
        y = torch.as_tensor(y).detach().float().cpu().numpy()
        if self.data_format == "channels_last" and y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(y)

    def __repr__(self) -> str:
        name = repr(self.path.name) if self.path is not None else type(self.model).__name__
        return (f"KerasAdapter({name}, data_format={self.data_format!r}, "
                f"device={str(self.device)!r})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def _import_torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("PyTorch models need torch: pip install 'chunkseg[torch]'.") from e
    return torch


def _torch_device(device: Any):
    """``torch.device(device)``, refused unless this machine has it (checked before a model is
    loaded or anything is written: torch's own errors come late and name no parameter).

    The one device check of the package: prediction (:class:`TorchAdapter`, :class:`KerasAdapter`,
    a TorchScript file, a factory taking ``device``) and :func:`chunkseg.training.train.train` call it.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``device`` is neither a str nor a ``torch.device``.
    chunkseg.errors.InvalidValueError
        If ``device`` is not a torch device name, or names a device this machine lacks (CUDA
        without a GPU, ``cuda:N`` past the GPU count, MPS off Apple silicon).
    """
    torch = _import_torch()
    if isinstance(device, torch.device):
        device = str(device)
    if not isinstance(device, str):
        raise InvalidTypeError(
            f"`device` must be a torch device name such as 'cpu' or 'cuda'. Got "
            f"{type(device).__name__} {device!r}.")
    count = torch.cuda.device_count()
    gpus = f", or 'cuda:0' to 'cuda:{count - 1}'" if count else ""
    fix = (f"This machine has {count} CUDA GPUs (torch.cuda.device_count()): use 'cpu' (CLI: "
           f"--device cpu){gpus}.")
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidValueError(
            f"`device` must be a torch device such as 'cpu', 'cuda' or 'cuda:1'. Got {device!r}. "
            + fix) from None
    if parsed.type == "cpu":
        return parsed
    if parsed.type == "cuda":
        has = torch.cuda.is_available() and (parsed.index is None or parsed.index < count)
    else:  # mps, xpu...: the backend's own is_available; a type without one (meta) is refused
        backend = getattr(torch.backends, parsed.type, None) or getattr(torch, parsed.type, None)
        available = getattr(backend, "is_available", None)
        has = callable(available) and bool(available())
    if not has:
        raise InvalidValueError(
            f"`device` must be a device this machine has. Got {device!r}, which is not available "
            f"here. {fix}")
    return parsed


def _is_torch_module(obj: Any) -> bool:
    try:
        import torch
    except ImportError:
        return False
    return isinstance(obj, torch.nn.Module)


def _wrap(obj: Any, device: str, normalization: Normalization) -> Callable[[np.ndarray], np.ndarray]:
    if _is_keras_model(obj):  # first: with the torch backend a Keras model is a torch module
        return KerasAdapter(obj, device, normalization)
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
    if _is_bioimageio(source):  # the package's weights file, with its (or the spec's) norm
        from .bioimageio import load_bioimageio

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
    if suffix in (".pt", ".pth", ".ts"):
        if not Path(source).exists():
            raise NotFoundError(f"`model` file {source!r} does not exist.")
        torch = _import_torch()
        device = _torch_device(spec.device)
        try:
            module = torch.jit.load(source, map_location=device)
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

    def __repr__(self) -> str:
        return f"LazyModel({self.spec.source!r}, device={self.spec.device!r})"


def as_model(
    model: Any, *, device: str = "cpu", normalization: Normalization | None = None
) -> Callable[[np.ndarray], np.ndarray]:
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
    callable
        float32 ``(N, C_in, T_y, T_x)`` -> float32 logits ``(N, K, T_y, T_x)``.

    Raises
    ------
    TypeError
        If ``model`` is none of the above.
    """
    if isinstance(model, (CallableAdapter, TorchAdapter, OnnxAdapter, KerasAdapter, LazyModel)):
        return model
    if isinstance(model, (str, os.PathLike)):
        model = ModelSpec(str(model), device=device, normalization=normalization)
    if isinstance(model, ModelSpec):
        if normalization is not None and model.normalization is None:
            model = ModelSpec(model.source, model.device, normalization, model.options)
        return LazyModel(model)
    if _is_keras_model(model):  # first: with the torch backend a Keras model is a torch module
        return KerasAdapter(model, device, normalization)
    if _is_torch_module(model):
        return TorchAdapter(model, device, normalization)
    if callable(model):
        return CallableAdapter(model, normalization)
    raise InvalidTypeError(
        "`model` must be a callable on numpy batches, a torch.nn.Module, a keras.Model, a "
        "ModelSpec, or a spec string (file path or 'package.module:factory'). "
        f"Got {type(model)!r}."
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
    if isinstance(model, KerasAdapter):
        return {"kind": "keras", "source": None if model.path is None else str(model.path),
                "model": type(model.model).__name__, "name": str(model.model.name),
                "data_format": model.data_format, "device": str(model.device),
                "keras": str(sys.modules["keras"].__version__), "backend": "torch",
                "normalization": model.normalization.to_dict()}
    if isinstance(model, CallableAdapter):
        name = getattr(model.fn, "__qualname__", type(model.fn).__name__)
        return {"kind": "callable", "name": name, "normalization": model.normalization.to_dict()}
    return {"kind": "callable", "name": type(model).__name__}
