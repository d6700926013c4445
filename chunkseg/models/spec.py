"""What a model is, as data: its input :class:`Normalization` and the :class:`ModelSpec` that
names a model (a built-in name, a file, a bioimage.io package or ``package.module:factory``)
instead of holding it.

Plain data with no knowledge of how a source is loaded: :mod:`chunkseg.models.load` dispatches
a spec by its source, and registers how a source states its own normalisation
(:func:`register_source_normalization`), so that this module imports nothing above it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError

__all__ = [
    "Normalization",
    "ModelSpec",
    "isbi_normalization",
    "register_source_normalization",
]


def _as_floats(value: float | Sequence[float], name: str) -> tuple[float, ...]:
    if np.isscalar(value):
        return (float(value),)  # type: ignore[arg-type]
    out = tuple(float(v) for v in value)  # type: ignore[union-attr]
    if not out:
        raise InvalidValueError(f"`{name}` must hold at least one value. Got {value!r}.")
    return out


_NORMALIZATION_KEYS = ("scale", "mean", "std")


@dataclass(frozen=True, slots=True)
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
        """Normalise a float32 batch ``(N, C_in, y, x)``: ``(x * scale - mean) / std``, the one
        place chunkseg computes it on numpy batches.

        Parameters
        ----------
        batch : numpy.ndarray
            float32 ``(N, C_in, y, x)``.

        Returns
        -------
        numpy.ndarray
            float32 of the same shape; ``batch`` itself when :attr:`is_identity`.

        Raises
        ------
        chunkseg.errors.InvalidValueError
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
        chunkseg.errors.InvalidValueError
            If ``mean`` or ``std`` holds several values and their number is not ``channels``.
        """
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, channels):
                raise InvalidValueError(
                    f"`{name}` has {len(v)} values but the image has {channels} channels; give "
                    f"one value or one per channel."
                )

    def affine(self, channels: int) -> tuple[np.ndarray, np.ndarray]:
        """The map as ``a * x + b`` per channel: ``a = scale / std``, ``b = -mean / std``.

        Parameters
        ----------
        channels : int
            Number of input channels; ``mean`` and ``std`` must hold one value or this many.

        Returns
        -------
        tuple of numpy.ndarray
            ``(a, b)``, float64, shape ``(channels,)`` each.
        """
        mean = np.broadcast_to(np.asarray(self.mean, np.float64), (channels,))
        std = np.broadcast_to(np.asarray(self.std, np.float64), (channels,))
        return self.scale / std, -mean / std

    def to_dict(self) -> dict:
        """JSON-serialisable form: ``{"scale": float, "mean": [float, ...], "std": [...]}``."""
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalization:
        """Build from :meth:`to_dict`'s form (a parsed JSON or TOML table).

        Parameters
        ----------
        data : mapping
            Keys among ``scale`` (a number), ``mean`` and ``std`` (a number or a list of
            numbers); a missing key takes its default (1, 0 and 1).

        Returns
        -------
        Normalization
            ``Normalization.from_dict(n.to_dict()) == n``.

        Raises
        ------
        chunkseg.errors.InvalidTypeError
            If ``data`` is not a mapping, holds another key, or ``scale`` is not a number.
        chunkseg.errors.InvalidValueError
            If ``mean`` or ``std`` is empty, or ``std`` is not strictly positive.
        """
        if not isinstance(data, Mapping):
            raise InvalidTypeError(
                f"`normalization` must be a {{scale, mean, std}} mapping. Got "
                f"{type(data).__name__} {data!r}.")
        unknown = sorted(str(k) for k in data if k not in _NORMALIZATION_KEYS)
        if unknown:
            raise InvalidTypeError(
                f"`normalization` may only hold the keys {list(_NORMALIZATION_KEYS)}. Got "
                f"{unknown}; remove them.")
        scale = data.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, Real):
            raise InvalidTypeError(
                f"`normalization` scale must be a number such as 1/255. Got {scale!r}.")
        return cls(**data)


def isbi_normalization() -> Normalization:
    """The normalisation of the shipped ``isbi2012-unet``: ``(x / 255 - ISBI_MEAN) / ISBI_STD``
    (constants of :mod:`chunkseg.models.unet`; importing it imports torch)."""
    from .unet import ISBI_MEAN, ISBI_SCALE, ISBI_STD  # torch: only when a built-in is used

    return Normalization(ISBI_SCALE, (ISBI_MEAN,), (ISBI_STD,))


_SOURCE_NORMALIZATIONS: list[Callable[[str], Normalization | None]] = []


def register_source_normalization(own: Callable[[str], Normalization | None]) -> None:
    """Register how a source states its own normalisation, for :meth:`ModelSpec.resolved_normalization`.

    Parameters
    ----------
    own : callable
        ``own(source)`` returns the normalisation a source names (a built-in model's, a
        bioimage.io package's preprocessing), or None when it is not such a source.
        :mod:`chunkseg.models.load`, which knows the sources, registers its own at import.
    """
    if own not in _SOURCE_NORMALIZATIONS:
        _SOURCE_NORMALIZATIONS.append(own)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A model named, not held: resolved lazily, once per process.

    ``source`` is one of

    - a built-in name from :data:`chunkseg.models.BUILTIN_MODELS` (``"isbi2012-unet"``);
    - a TorchScript file (``.pt``, ``.pth``, ``.ts``, loaded with ``torch.jit.load``);
    - an ONNX file (``.onnx``, run with ONNX Runtime);
    - a Keras 3 file (``.keras``, run with Keras' torch backend, see
      :class:`~chunkseg.models.KerasAdapter`);
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
        """The normalisation that will be applied: :attr:`normalization`, else the one the
        source states (a built-in model's, a bioimage.io package's preprocessing, which reads
        the package), else the identity.

        Raises
        ------
        chunkseg.errors.MissingDependencyError, NotFoundError, InvalidValueError
            As :func:`chunkseg.models.bioimageio.load_bioimageio`, for a package that cannot be
            read or whose preprocessing chunkseg cannot map.
        """
        if self.normalization is not None:
            return self.normalization
        for own in _SOURCE_NORMALIZATIONS:
            norm = own(self.source)
            if norm is not None:
                return norm
        return Normalization()

    def to_dict(self) -> dict:
        """JSON-serialisable form (recorded in the output's attrs), with the resolved
        normalisation and the options as a mapping."""
        d = asdict(self)
        d["normalization"] = self.resolved_normalization().to_dict()
        d["options"] = dict(self.options)
        return d
