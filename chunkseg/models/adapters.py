"""Model adapters: anything that maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits
``(N, K, T_y, T_x)``.

Four adapters share one contract, :class:`ModelAdapter` (a callable on numpy batches that
describes itself, picklable):

- :class:`CallableAdapter` for any Python callable on numpy arrays;
- :class:`TorchAdapter` for a ``torch.nn.Module`` or a TorchScript file (``device``,
  ``torch.inference_mode``);
- :class:`OnnxAdapter` for an ``.onnx`` file through ONNX Runtime;
- :class:`KerasAdapter` for a Keras 3 model or ``.keras`` file, run with Keras' torch backend
  (channels-last models are transposed to and from the engine's channels-first batches).

Each applies its :class:`~chunkseg.models.spec.Normalization` to the batch first. torch,
onnxruntime and keras are imported only when an adapter needs them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError, NotFoundError
from .spec import Normalization

__all__ = [
    "ModelAdapter",
    "CallableAdapter",
    "TorchAdapter",
    "OnnxAdapter",
    "KerasAdapter",
    "MODEL_METADATA",
]

MODEL_METADATA = "chunkseg.json"
"""The metadata chunkseg writes into the models it exports
(:func:`chunkseg.training.train.export_model`): JSON ``{"class_names": [...]}``, a TorchScript
extra file of this name (``torch.jit.save(..., _extra_files=...)``) and an ONNX
``metadata_props`` entry of this key. :class:`TorchAdapter` (through
:func:`chunkseg.models.load_model`) and :class:`OnnxAdapter` read it back as their
``class_names``, the class names a run takes when it is given none."""


def metadata_class_names(text: str | bytes | None, source: str) -> tuple[str, ...] | None:
    """The class names in a model file's :data:`MODEL_METADATA` text (None without any).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If the text is not JSON holding ``"class_names"``, a non-empty list of non-empty str.
    """
    if not text:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    names = meta.get("class_names") if isinstance(meta, dict) else None
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise InvalidValueError(
            f"`model` file {source!r} must hold chunkseg's metadata ({MODEL_METADATA}) as JSON "
            f"with \"class_names\", a list of names. Got {str(text)[:200]!r}. Export the model "
            "again (chunkseg.training.train.export_model).")
    return tuple(names)


@runtime_checkable
class ModelAdapter(Protocol):
    """What every adapter is (:class:`CallableAdapter`, :class:`TorchAdapter`,
    :class:`OnnxAdapter`, :class:`KerasAdapter`, and :class:`chunkseg.models.LazyModel`).

    Calling one on a float32 batch ``(N, C_in, T_y, T_x)`` returns the model's logits
    ``(N, K, T_y, T_x)`` as a numpy array (float32 for every adapter but
    :class:`CallableAdapter`, whose result the engine checks and converts), the normalisation
    applied first; :meth:`describe` gives the JSON-serialisable description recorded in an
    output's attrs. An adapter pickles without its weights where it can (a file travels by name).
    """

    def __call__(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict: ...


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

    def describe(self) -> dict:
        """``{"kind": "callable", "name", "normalization"}``, for the output's attrs."""
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return {"kind": "callable", "name": name, "normalization": self.normalization.to_dict()}

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
    class_names : sequence of str, optional
        The classes the module's output channels are, as its file states them
        (:data:`MODEL_METADATA`); the attribute ``class_names`` (None: not stated).

    Raises
    ------
    ImportError
        If torch is not installed (``pip install "chunkseg[torch]"``).
    """

    def __init__(self, module: Any, device: str = "cpu", normalization: Normalization | None = None,
                 class_names: Sequence[str] | None = None):
        self.device = _torch_device(device)
        self.module = module.to(self.device).eval()
        self.normalization = normalization or Normalization()
        self.class_names = None if class_names is None else tuple(class_names)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        torch = _import_torch()
        x = torch.from_numpy(np.ascontiguousarray(self.normalization(batch))).to(self.device)
        with torch.inference_mode():
            y = self.module(x)
        return y.float().cpu().numpy()

    def describe(self) -> dict:
        """``{"kind": "torch", "module", "device", "normalization"}``, for the output's attrs."""
        return {"kind": "torch", "module": type(self.module).__name__,
                "device": str(self.device), "normalization": self.normalization.to_dict()}

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
        #: the class names the file states (:data:`MODEL_METADATA`), else None
        self.class_names = metadata_class_names(
            self.session.get_modelmeta().custom_metadata_map.get(MODEL_METADATA), str(path))

    def __reduce__(self):
        # An InferenceSession cannot be pickled: send the path and rebuild it on arrival.
        return (OnnxAdapter, (self.path, self.device, self.normalization))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(self.normalization(batch), dtype=np.float32)
        return np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)

    def describe(self) -> dict:
        """``{"kind": "onnx", "source", "normalization"}``, for the output's attrs."""
        return {"kind": "onnx", "source": str(self.path),
                "normalization": self.normalization.to_dict()}

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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(str(path))
        return path.read_bytes()


def _keras_adapter_from_bytes(data: bytes, device: str, normalization: Normalization,
                              data_format: str | None) -> KerasAdapter:
    """Rebuild a pickled in-memory Keras adapter: its ``.keras`` bytes loaded in safe mode,
    the weights built on ``device``."""
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

    def describe(self) -> dict:
        """``{"kind": "keras", "source", "model", "name", "data_format", "device", "keras",
        "backend", "normalization"}``, for the output's attrs."""
        return {"kind": "keras", "source": None if self.path is None else str(self.path),
                "model": type(self.model).__name__, "name": str(self.model.name),
                "data_format": self.data_format, "device": str(self.device),
                "keras": str(sys.modules["keras"].__version__), "backend": "torch",
                "normalization": self.normalization.to_dict()}

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


def _wrap(obj: Any, device: str, normalization: Normalization | None) -> ModelAdapter:
    """The adapter of a model object: Keras, else torch, else a plain callable.

    Raises
    ------
    chunkseg.errors.InvalidTypeError
        If ``obj`` is none of these (not callable).
    """
    if _is_keras_model(obj):  # first: with the torch backend a Keras model is a torch module
        return KerasAdapter(obj, device, normalization)
    if _is_torch_module(obj):
        return TorchAdapter(obj, device, normalization)
    return CallableAdapter(obj, normalization)

