"""bioimage.io model packages: read one, to run it as a chunkseg model.

A bioimage.io model package (format 0.5, https://bioimage.io) is a folder or a ``.zip`` with an
``rdf.yaml`` (or ``bioimageio.yaml``) that describes the model: its weights, its input and output
tensors (axes, valid sizes, halo), the preprocessing of the input, test tensors, documentation,
license and citations. :func:`load_bioimageio` reads a package back as a :class:`BioimageioModel`: the weights file
chunkseg runs (TorchScript or ONNX), the :class:`~chunkseg.models.Normalization` equal to the
package's preprocessing, a tile and an overlap from the package's valid sizes and halo, and the
class names from its output channel axis.

A model spec string naming a package (``"path/rdf.yaml"``, ``"path/bioimageio.yaml"``,
``"model.zip"`` or a folder holding ``rdf.yaml``) runs through :func:`load_bioimageio` wherever
chunkseg takes a model, and :func:`chunkseg.models.model_defaults` gives the engine its tile,
overlap and class names.

Everything here needs ``bioimageio.spec`` (``pip install 'chunkseg[bioimageio]'``), imported only
when a package is read. :func:`chunkseg.training.export.export_bioimageio` writes the shipped
``isbi2012-unet`` as such a package.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import (
    InvalidTypeError,
    InvalidValueError,
    MissingDependencyError,
    NotFoundError,
)
from ._preprocessing import (  # noqa: F401  (MAPPED_PREPROCESSING: documented here)
    MAPPED_PREPROCESSING,
    _config_normalization,
    _normalization,
)
from .spec import ModelSpec, Normalization

__all__ = [
    "BioimageioModel",
    "load_bioimageio",
    "is_bioimageio_source",
    "SPEC_VERSION",
    "YAML_NAMES",
]

SPEC_VERSION = "0.5.14.3"
"""The ``bioimageio.spec`` release this module was written and tested against (format 0.5.14)."""

YAML_NAMES = ("rdf.yaml", "bioimageio.yaml")
"""File names of a package's description; a spec string ending in one names a package."""

PREFERRED_TILE = 256
"""The tile :func:`load_bioimageio` aims for: the package's valid size nearest to it."""

_INSTALL = "pip install 'chunkseg[bioimageio]'"


def _import_spec():
    try:
        import bioimageio.spec as spec
    except ImportError as e:
        raise MissingDependencyError(
            f"bioimage.io model packages need bioimageio.spec, which is not installed: {_INSTALL} "
            f"(tested with bioimageio.spec=={SPEC_VERSION})."
        ) from e
    return spec


# --------------------------------------------------------------------------------------------
# What a package is


def is_bioimageio_source(source: Any) -> bool:
    """Whether a model spec names a bioimage.io package; reads no file but a folder's listing.

    Parameters
    ----------
    source : str or os.PathLike
        A model spec string.

    Returns
    -------
    bool
        True for a path or URL ending in ``rdf.yaml``, ``bioimageio.yaml`` (``x.bioimageio.yaml``
        too) or ``.zip``, and for a folder holding ``rdf.yaml`` or ``bioimageio.yaml``; False for
        anything else (built-in names, ``.pt``/``.onnx`` files, ``module:factory``, objects).
    """
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    if not isinstance(text, str) or not text:
        return False
    name = text.rstrip("/").replace("\\", "/").rsplit("/", 1)[-1].lower()
    if name.endswith(YAML_NAMES) or name.endswith(".zip"):
        return True
    if "://" in text:
        return False
    try:
        return Path(text).is_dir() and any((Path(text) / n).is_file() for n in YAML_NAMES)
    except OSError:
        return False


def _package_file(source: str) -> str:
    """The description a spec names: a folder's rdf.yaml, else the source itself."""
    if "://" not in source and Path(source).is_dir():
        for name in YAML_NAMES:
            if (Path(source) / name).is_file():
                return str(Path(source) / name)
        raise NotFoundError(
            f"`model` folder {source!r} must hold a bioimage.io description "
            f"({' or '.join(YAML_NAMES)}). Got a folder without one; point to the package's "
            f"rdf.yaml or its .zip."
        )
    if "://" not in source and not Path(source).exists():
        raise NotFoundError(
            f"`model` bioimage.io package {source!r} does not exist. Give the path of a package's "
            f"rdf.yaml, its folder or its .zip."
        )
    if "://" not in source and source.lower().endswith(".zip") and not zipfile.is_zipfile(source):
        raise InvalidValueError(
            f"`model` bioimage.io package {source!r} must be a zip archive holding an rdf.yaml. "
            "Got a file that is not a zip archive (truncated, or another format); download or "
            "export the package again."
        )
    return source


# --------------------------------------------------------------------------------------------
# The loaded model


@dataclass(frozen=True)
class BioimageioModel:
    """A bioimage.io model package as chunkseg runs it; plain data (see :func:`load_bioimageio`).

    chunkseg feeds the weights float32 batches ``(N, input_channels, T_y, T_x)`` after
    :attr:`normalization`, blends their raw output as logits ``(N, K, T_y, T_x)`` and computes
    its own softmax; :attr:`postprocessing` is recorded, not applied.
    """

    source: str
    """The spec it was loaded from (a description, a folder or a .zip), as given."""
    name: str
    """The package's ``name``."""
    weights: str
    """Local path of the weights chunkseg runs: a TorchScript (``.pt``) or ONNX (``.onnx``) file.
    Weights inside a .zip or behind a URL (or named without that suffix) are copied once to
    ``<tempdir>/chunkseg-bioimageio/<sha256>/``."""
    weights_format: str
    """``"torchscript"`` or ``"onnx"``."""
    normalization: Normalization
    """Equal to the package's preprocessing (or the ``normalization`` given to the loader)."""
    tile: int | tuple[int, int]
    """A valid input size (``min + n * step``) near :data:`PREFERRED_TILE`; a tuple only when the
    package's y and x sizes differ."""
    overlap: int | tuple[int, int]
    """Twice the output halo (0 for a package without one); a tuple only when y and x differ."""
    class_names: tuple[str, ...]
    """The output channel axis' ``channel_names``, one per class."""
    input_channels: int
    """Channels of the input tensor, ``C_in``."""
    tile_min: tuple[int, int] = (1, 1)
    """Smallest valid input size, ``(y, x)``."""
    tile_step: tuple[int, int] = (0, 0)
    """Step between valid input sizes, ``(y, x)``; 0 for a fixed size."""
    halo: tuple[int, int] = (0, 0)
    """Output halo, ``(y, x)``: pixels the package asks to crop from each side of an output tile."""
    batch_size: int | None = None
    """1 when the package fixes its batch axis to one sample, else None (any batch)."""
    postprocessing: tuple[str, ...] = ()
    """Ids of the output's postprocessing ops (``ensure_dtype`` left out), not applied."""
    input_id: str = "input"
    """Id of the package's input tensor."""
    output_id: str = "output"
    """Id of the package's output tensor."""

    def to_model_spec(self, device: str = "cpu",
                      normalization: Normalization | None = None) -> ModelSpec:
        """A :class:`~chunkseg.models.ModelSpec` of the weights file with this normalisation.

        Parameters
        ----------
        device : str, default "cpu"
            Torch or ONNX Runtime device.
        normalization : Normalization, optional
            Use this instead of :attr:`normalization`.

        Returns
        -------
        ModelSpec
            Resolved by chunkseg's TorchScript or ONNX adapter (the weights' file name ends in
            ``.pt`` or ``.onnx``).
        """
        return ModelSpec(self.weights, device=device,
                         normalization=normalization or self.normalization)

    def to_dict(self) -> dict:
        """JSON-serialisable form."""
        def _plain(v):
            return list(v) if isinstance(v, tuple) else v
        return {
            "source": self.source, "name": self.name, "weights": self.weights,
            "weights_format": self.weights_format, "normalization": self.normalization.to_dict(),
            "tile": _plain(self.tile), "overlap": _plain(self.overlap),
            "class_names": list(self.class_names), "input_channels": self.input_channels,
            "tile_min": list(self.tile_min), "tile_step": list(self.tile_step),
            "halo": list(self.halo), "batch_size": self.batch_size,
            "postprocessing": list(self.postprocessing), "input_id": self.input_id,
            "output_id": self.output_id,
        }

    def defaults(self) -> dict:
        """What the engine takes when the call gives none: ``tile``, ``overlap``, ``class_names``
        (and ``batch_size`` when the package fixes it to 1)."""
        return _defaults(self.tile, self.overlap, self.class_names, self.batch_size)


def _package_defaults(source: str | os.PathLike) -> dict:
    """:meth:`BioimageioModel.defaults` of a package, whatever its preprocessing."""
    path = _package_file(os.fspath(source))
    fields, _ = _load_cached(path, _stamp(path))
    return _defaults(fields["tile"], fields["overlap"], fields["class_names"],
                     fields["batch_size"])


def _defaults(tile, overlap, class_names, batch_size) -> dict:
    d: dict[str, Any] = {"tile": tile, "overlap": overlap, "class_names": class_names}
    if batch_size is not None:
        d["batch_size"] = batch_size
    return d


def _stamp(path: str) -> tuple[int, int] | None:
    """Size and modification time of a local description: a changed file is read again."""
    if "://" in path:
        return None
    st = Path(path).stat()
    return st.st_size, st.st_mtime_ns


def load_bioimageio(source: str | os.PathLike, *,
                    normalization: Normalization | None = None) -> BioimageioModel:
    """Read and validate a bioimage.io model package as a chunkseg model.

    Parameters
    ----------
    source : str or os.PathLike
        The package's ``rdf.yaml`` / ``bioimageio.yaml`` (a path or an http(s) URL), its folder,
        or its ``.zip``. Older formats (0.4) are converted to 0.5 by bioimageio.spec.
    normalization : Normalization, optional
        Use this instead of the one derived from the package's preprocessing (needed when the
        preprocessing is not one chunkseg can map, e.g. ``zero_mean_unit_variance``).

    Returns
    -------
    BioimageioModel

    Raises
    ------
    MissingDependencyError
        If bioimageio.spec is not installed.
    NotFoundError
        If the package or a file it names (weights, test tensors...) does not exist.
    InvalidValueError
        If the package does not validate, is not a model, has no TorchScript or ONNX weights, is
        not a 2-D model with axes (batch, channel, y, x) and an output of the input's size, or
        has a preprocessing op other than :data:`MAPPED_PREPROCESSING` (without ``normalization``).

    Notes
    -----
    Validation reads and hashes every file of the package once per process (cached by path,
    size and modification time): for the shipped model's package (8 MB) it takes about 0.1 s.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidTypeError(
            f"`source` must be the path of a bioimage.io package (rdf.yaml, folder or .zip). "
            f"Got {type(source)!r}."
        )
    if normalization is not None and not isinstance(normalization, Normalization):
        raise InvalidTypeError(
            f"`normalization` must be a chunkseg.Normalization or None. Got {type(normalization)!r}."
        )
    source = os.fspath(source)
    path = _package_file(source)
    fields, derived = _load_cached(path, _stamp(path))
    if normalization is None:
        if isinstance(derived, InvalidValueError):
            raise InvalidValueError(str(derived))
        normalization = derived
    return BioimageioModel(source=source, normalization=normalization, **fields)


@functools.lru_cache(maxsize=32)
def _describe(path: str, stamp: Any):
    """Load and validate the description (cached per file version); raises on an invalid one."""
    spec = _import_spec()
    from bioimageio.spec.model import v0_5

    try:
        with _quiet_spec():
            descr = spec.load_description(path, format_version="latest",
                                          perform_io_checks=True)
    except (ValueError, *_yaml_errors()) as err:  # not YAML, not a mapping, no rdf.yaml in a zip
        lines = str(err).strip().splitlines()
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r} must hold a description (rdf.yaml) that is a "
            f"YAML mapping. Got one bioimageio.spec cannot read ({type(err).__name__}: "
            f"{(lines[0] if lines else '').rstrip('.')}). Point `model` to a bioimage.io model "
            "package's rdf.yaml, its folder or its .zip (chunkseg export-bioimageio writes one)."
        ) from err
    if isinstance(descr, spec.InvalidDescr):
        _raise_invalid(path, descr)
    if not isinstance(descr, v0_5.ModelDescr):
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r} must describe a model. Got a "
            f"{getattr(descr, 'type', type(descr).__name__)!r} resource; use a model package."
        )
    return descr


def _yaml_errors() -> tuple[type[BaseException], ...]:
    """The YAML parser's base error (ruyaml's, which bioimageio.spec reads with), if installed."""
    try:
        from ruyaml.error import YAMLError
    except ImportError:  # pragma: no cover - bioimageio.spec depends on ruyaml
        return ()
    return (YAMLError,)


def _raise_invalid(path: str, descr) -> None:
    """Raise NotFoundError for missing files, else InvalidValueError with the first errors."""
    summary = getattr(descr, "validation_summary", None)
    seen: dict[str, str] = {}
    for detail in getattr(summary, "details", None) or []:
        for e in getattr(detail, "errors", None) or []:
            # pydantic reports every branch of a union; keep the field path, one message each
            loc = ".".join(str(p) for p in getattr(e, "loc", ()) if not _is_branch(str(p)))
            msg = str(getattr(e, "msg", e)).removeprefix("Value error, ")
            if loc not in seen or _is_missing_file(msg):
                seen[loc] = msg
    missing = [f"{loc}: {msg}" for loc, msg in seen.items() if _is_missing_file(msg)]
    if missing:
        raise NotFoundError(
            f"`model` bioimage.io package {path!r} names files that do not exist: "
            f"{'; '.join(missing[:3])}. Restore them, or export the package again."
        )
    texts = [f"{loc or '(description)'}: {msg[:200].rstrip('.')}" for loc, msg in seen.items()]
    shown = "; ".join(texts[:4]) or _first_line(getattr(descr, "get_reason", lambda: "")())
    raise InvalidValueError(
        f"`model` bioimage.io package {path!r} must pass bioimageio.spec's validation. Got "
        f"{len(texts) or 'an'} error(s): {shown}. Fix the rdf.yaml (bioimageio.spec."
        f"load_description({path!r}).validation_summary.display() shows the full report)."
    )


def _is_branch(part: str) -> bool:
    return any(c in part for c in "[]()") or part in ("RelativeFilePath", "FilePath", "HttpUrl")


def _is_missing_file(text: str) -> bool:
    t = text.lower()
    return any(k in t for k in ("does not exist", "no such file", "not found",
                                "does not point to an existing file"))


def _first_line(text: str) -> str:
    lines = str(text).strip().splitlines()
    return lines[0] if lines else ""


@functools.lru_cache(maxsize=32)
def _load_cached(path: str, stamp: Any) -> tuple[dict, Normalization | InvalidValueError]:
    """The package's fields (all but source and normalization) and its derived normalisation,
    or the error saying why its preprocessing does not map (raised unless one is given)."""
    descr = _describe(path, stamp)
    if len(descr.inputs) != 1 or len(descr.outputs) != 1:
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r} must have one input and one output tensor. "
            f"Got {len(descr.inputs)} inputs and {len(descr.outputs)} outputs; chunkseg runs "
            f"single-input, single-output segmentation models."
        )
    ipt, out = descr.inputs[0], descr.outputs[0]
    in_axes = _check_axes(path, "input", ipt)
    out_axes = _check_axes(path, "output", out)
    sizes = [_input_size(path, a) for a in in_axes[2:]]
    halo = tuple(_output_halo(path, ipt, a, b) for a, b in zip(in_axes[2:], out_axes[2:]))
    tile_yx = tuple(_pick_tile(mn, st, 2 * h) for (mn, st), h in zip(sizes, halo))
    weights, fmt = _local_weights(path, descr)
    try:
        derived: Normalization | InvalidValueError = _normalization(
            path, ipt, in_axes, _config_normalization(descr))
    except InvalidValueError as err:
        derived = err
    fields = dict(
        name=str(descr.name), weights=weights, weights_format=fmt,
        tile=_collapse(tile_yx), overlap=_collapse(tuple(2 * h for h in halo)),
        class_names=tuple(str(n) for n in out_axes[1].channel_names),
        input_channels=int(in_axes[1].size),
        tile_min=(sizes[0][0], sizes[1][0]), tile_step=(sizes[0][1], sizes[1][1]),
        halo=(int(halo[0]), int(halo[1])), batch_size=1 if in_axes[0].size == 1 else None,
        postprocessing=tuple(str(p.id) for p in out.postprocessing if p.id != "ensure_dtype"),
        input_id=str(ipt.id), output_id=str(out.id),
    )
    return fields, derived


def _collapse(v: tuple[int, int]) -> int | tuple[int, int]:
    return int(v[0]) if v[0] == v[1] else (int(v[0]), int(v[1]))


def _check_axes(path: str, which: str, tensor) -> list:
    """The tensor's axes, checked to be (batch, channel, space, space)."""
    types = [a.type for a in tensor.axes]
    if types != ["batch", "channel", "space", "space"]:
        got = ", ".join(f"{a.id}:{a.type}" for a in tensor.axes)
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r}: the {which} tensor {str(tensor.id)!r} must "
            f"have the axes (batch, channel, y, x) in this order, as chunkseg feeds and reads "
            f"(N, C, Y, X) batches of a 2-D image. Got ({got}); use a 2-D model with such axes."
        )
    return list(tensor.axes)


def _input_size(path: str, axis) -> tuple[int, int]:
    """``(min, step)`` of an input space axis; step 0 for a fixed size."""
    from bioimageio.spec.model import v0_5

    size = axis.size
    if isinstance(size, int):
        return int(size), 0
    if isinstance(size, v0_5.ParameterizedSize):
        return int(size.min), int(size.step)
    raise InvalidValueError(
        f"`model` bioimage.io package {path!r}: the input axis {str(axis.id)!r} must have a fixed "
        f"or parameterized size (min + n*step). Got a size that refers to another axis "
        f"({size!r}); chunkseg cuts tiles of one size per axis."
    )


def _output_halo(path: str, ipt, in_axis, out_axis) -> int:
    """The halo of an output space axis, checked to be the input axis' size."""
    from bioimageio.spec.model import v0_5

    size = out_axis.size
    same = (isinstance(size, v0_5.SizeReference) and str(size.tensor_id) == str(ipt.id)
            and str(size.axis_id) == str(in_axis.id) and size.offset == 0
            and out_axis.scale == in_axis.scale)
    if not same:
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r}: the output axis {str(out_axis.id)!r} must have "
            f"the size of the input axis {str(in_axis.id)!r} (a size reference with offset 0 and "
            f"the same scale), as chunkseg blends output tiles over the input's grid. Got "
            f"{size!r}; use a model whose output has its input's size."
        )
    return int(getattr(out_axis, "halo", 0) or 0)


def _pick_tile(minimum: int, step: int, overlap: int) -> int:
    """The valid size ``minimum + n * step`` nearest :data:`PREFERRED_TILE`, above ``overlap``."""
    if step == 0:
        return minimum
    n = max(0, round((PREFERRED_TILE - minimum) / step))
    while minimum + n * step <= overlap:
        n += 1
    return minimum + n * step


def _local_weights(path: str, descr) -> tuple[str, str]:
    """A local file of the TorchScript (else ONNX) weights, with the suffix chunkseg expects."""
    present = [f for f in ("torchscript", "onnx", "pytorch_state_dict", "keras_hdf5", "keras_v3",
                           "tensorflow_saved_model_bundle", "tensorflow_js")
               if getattr(descr.weights, f, None) is not None]
    fmt = next((f for f in ("torchscript", "onnx") if f in present), None)
    if fmt is None:
        raise InvalidValueError(
            f"`model` bioimage.io package {path!r} must have torchscript or onnx weights, which "
            f"chunkseg runs. Got {', '.join(present)}; convert them (bioimageio.core's weight "
            f"converters, or torch.jit.trace / torch.onnx.export) and add them to the package."
        )
    entry = getattr(descr.weights, fmt)
    suffix = ".pt" if fmt == "torchscript" else ".onnx"
    src = entry.source
    local = getattr(src, "absolute", lambda: src)()
    if isinstance(local, Path) and local.is_file() and local.suffix.lower() in (
            (".pt", ".pth", ".ts") if fmt == "torchscript" else (".onnx",)):
        return str(local), fmt
    # inside a zip, behind a URL, or named without the suffix: copy once, named by content
    with _quiet_spec():
        data = entry.get_reader().read()
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.gettempdir()) / "chunkseg-bioimageio" / digest[:32]
    target = folder / f"{fmt}{suffix}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)  # atomic: concurrent workers write the same bytes
    return str(target), fmt


class _quiet_spec:
    """Silence bioimageio.spec's loguru messages and Python warnings for one call."""

    def __enter__(self):
        try:
            from loguru import logger
        except ImportError:  # pragma: no cover - bioimageio.spec depends on loguru
            logger = None
        self._logger = logger
        if logger is not None:
            logger.disable("bioimageio")
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        self._warnings.__exit__(*exc)
        if self._logger is not None:
            self._logger.enable("bioimageio")
        return False
