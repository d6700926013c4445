"""A run's settings: the defaults of :func:`chunkseg.predict` and
:func:`chunkseg.predict_to_zarr`, the checks of their arguments, and :func:`_setup`, which
turns them into a :class:`RunSetup` (the input as read, the tile runner, the output's attrs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .._check import class_names_arg, isel_arg, isel_attrs, positive_int
from .._redact import redact_attrs, secrets_of
from .._version import __version__
from ..errors import InvalidValueError
from ..io import open_image
from ..kernels.tta import check_tta
from ..kernels.windows import get_window, window_name
from ..models.resolve import ResolvedModel, resolve_model
from ..models.spec import Normalization
from ..outputs._target import MARKER
from ..plan import plan_tiles
from .runner import TileRunner, make_runner

__all__ = ["OUTPUTS", "RunSetup"]

OUTPUTS = ("logits", "probabilities", "labels")
"""Names of the variables :func:`predict` can return."""

GPU_CHUNK = 2048
"""Default chunk, pixels, when the model runs on a CUDA device (measured on an H100, shipped
U-Net at 8192^2: 2048 px chunks 0.43-0.52 s, 1536 px 0.48-0.56 s, 1024 px 0.56-0.64 s for 2 to 16
dask threads)."""

DEFAULT_TILE = 256
"""Tile, pixels, when neither the call nor the model gives one."""

DEFAULT_OVERLAP = 64
"""Overlap, pixels, when neither the call nor the model gives one."""

DEFAULT_WINDOW = "gaussian"
"""Blending window of :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_BATCH_SIZE = 8
"""Tiles per model call in :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_OUTPUTS = ("logits", "labels")
"""Variables :func:`predict` returns and :func:`predict_to_zarr` writes."""

DEFAULT_DTYPE = "float32"
"""dtype of ``logits`` and ``probabilities`` in :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_DEVICE = "cpu"
"""Device of torch and ONNX models in :func:`predict` and :func:`predict_to_zarr`."""

DEFAULT_KERNEL = "auto"
"""Per-chunk kernel of :func:`predict` and :func:`predict_to_zarr` (one of :data:`chunkseg.engine.runner.KERNELS`)."""

GPU_READ_AHEAD = 4
"""Blocks read ahead of the GPU in :func:`predict_to_zarr` (its rolling window is this plus 2)."""


def _normalize_outputs(outputs: str | Sequence[str]) -> tuple[str, ...]:
    items = [o.strip() for o in outputs.split(",")] if isinstance(outputs, str) else list(outputs)
    bad = [o for o in items if o not in OUTPUTS]
    if bad or not items:
        raise InvalidValueError(
            f"`outputs` must be a non-empty subset of {OUTPUTS}. Got {outputs!r}."
        )
    return tuple(dict.fromkeys(items))


def _validate_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float16):
        raise InvalidValueError(f"`dtype` must be float32 or float16. Got {dtype!r}.")
    return dt


def _class_names(classes, k: int, defaults: Sequence[str] | None) -> tuple[str, ...]:
    """The ``K`` class names: ``classes``, else the model's, else ``"0"``, ``"1"``..."""
    if classes is None:
        if defaults is not None and len(defaults) == k:
            return tuple(str(n) for n in defaults)
        return tuple(str(i) for i in range(k))
    return class_names_arg(classes, count=k, fix="(CLI: --classes a,b).")


@dataclass(frozen=True, slots=True)
class RunSetup:
    """A run's validated settings, what :func:`_setup` returns to :func:`predict` and
    :func:`predict_to_zarr` (and :func:`chunkseg.outputs._manifest._fingerprint` reads).

    Attributes
    ----------
    image : dask.array.Array
        The input as read, ``(y, x, c)``.
    runner : TileRunner
        Runs the model over the plan's tiles and blends them (its ``plan``, ``classes``).
    outputs : tuple of str
        The requested variables, a subset of :data:`OUTPUTS`, in order, without repeats.
    dtype : numpy.dtype
        dtype of ``logits`` and ``probabilities`` (float32 or float16).
    attrs : dict
        The output's attrs (plan, window, model, class names, chunkseg version...), JSON
        values without credentials. A dict: :func:`predict_to_zarr` adds its own keys.
    class_names : tuple of str
        One name per class, the ``class`` coordinate.
    coords : dict of str -> xarray.Variable
        The input's ``y``/``x`` and scalar coordinates, attrs without credentials.
    input_attrs : dict
        The opened input's attrs (its source, pixel size...), for the input's identity.
    lead : tuple of str
        The leading dims of a stack of planes (``("t", "z")``...), empty for one image.
    planes : tuple of TileRunner
        One runner per plane, in row-major order over the leading dims (``(runner,)`` for one
        image): the same model, plan and window over each plane.
    """

    image: da.Array
    runner: TileRunner
    outputs: tuple[str, ...]
    dtype: np.dtype
    attrs: dict[str, Any]
    class_names: tuple[str, ...]
    coords: dict[str, xr.Variable]
    input_attrs: dict[str, Any]
    lead: tuple[str, ...]
    planes: tuple[TileRunner, ...]

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """The stack's shape over its leading dims (``()`` for one image)."""
        return tuple(self.image.shape[:len(self.lead)])


def tile_and_overlap(resolved: ResolvedModel, tile: int | tuple[int, int] | None,
                     overlap: int | tuple[int, int] | None
                     ) -> tuple[int | tuple[int, int], int | tuple[int, int]]:
    """The tile and overlap of a run: those given, else the model's own (a bioimage.io
    package's), else :data:`DEFAULT_TILE` and :data:`DEFAULT_OVERLAP`. Unchecked
    (:func:`chunkseg.plan.plan_tiles` checks them)."""
    if tile is None:
        tile = DEFAULT_TILE if resolved.tile is None else resolved.tile
    if overlap is None:
        overlap = DEFAULT_OVERLAP if resolved.overlap is None else resolved.overlap
    return tile, overlap


def _setup(image: Any, model: Any, *, tile: int | tuple[int, int] | None,
           overlap: int | tuple[int, int] | None, window: str | np.ndarray,
           chunks: int | tuple[int, int] | None, batch_size: int, outputs: str | Sequence[str],
           dtype: str | np.dtype, device: str, normalization: Normalization | None,
           storage_options: dict | None, array_name: str | None, mask: Any, kernel: str,
           classes: Sequence[str] | None, tta: str | None,
           torch_threads: int | None, lazy: bool = False,
           isel: Mapping[str, int | slice] | None = None) -> RunSetup:
    """Validate :func:`predict`'s arguments and build the runner and the output attrs.

    ``lazy`` (:func:`predict`): the default chunks are tile cells on the CPU
    (:attr:`chunkseg.plan.TilePlan.tile_cells`), and the model does not run on the client when
    the number of classes is known (``classes``, or the model's class names); else (the
    writer) chunks on a regular grid and a probe of the model on the first tile, before any
    output exists.

    ``isel`` selects planes (:func:`chunkseg.open_image`); the axes other than ``y``, ``x``,
    ``c`` left longer than 1 make a stack, one runner per plane (the model's classes probed
    once, on the first plane).
    """
    outputs_ = _normalize_outputs(outputs)
    isel = isel_arg(isel)
    dtype_ = _validate_dtype(dtype)
    batch_size = positive_int(batch_size, "batch_size", "Tiles per model call: e.g. 8.")
    arr = open_image(image, storage_options=storage_options, array_name=array_name, isel=isel,
                     stack=True)
    lead = tuple(str(d) for d in arr.dims[:-3])
    if chunks is None:
        # CUDA: big chunks keep the GPU's batches full; lazily on the CPU, tile cells (a slice
        # runs only the tiles it touches; the model's batches matter little on the CPU)
        chunks = GPU_CHUNK if str(device).startswith("cuda") else ("tiles" if lazy else None)
    # once per run: the adapter, a bioimage.io package's tile, overlap and class names, the
    # kernels the model allows, its description
    resolved = resolve_model(model, device=device, normalization=normalization)
    tile, overlap = tile_and_overlap(resolved, tile, overlap)
    plan = plan_tiles(arr.shape[-3:], tile, overlap, chunks)
    if not lazy and plan.chunk_offset != (0, 0):
        raise InvalidValueError(
            f"`chunks` must be a number of pixels when writing to Zarr (its chunks lie on a "
            f"regular grid from 0). Got {chunks!r}; use e.g. chunks=1536, or predict(...) for "
            "tile cells.")
    weights = get_window(window, plan.tile, plan.overlap)
    tta = check_tta(tta, plan.tile)
    known = None  # the number of classes, when known without running the model
    if lazy and classes is not None:
        known = len(class_names_arg(classes, fix="(CLI: --classes a,b)."))
    elif lazy and classes is None and resolved.class_names is not None:
        known = len(resolved.class_names)
    planes: list[TileRunner] = []
    stack_reader = arr.encoding.get("chunkseg_stack_reader")  # a Zarr stack's, per plane
    for index in np.ndindex(*arr.shape[:len(lead)]):  # one plane (index ()) for one image
        direct = arr.encoding.get("chunkseg_reader") if stack_reader is None \
            else stack_reader.plane(index)
        planes.append(make_runner(
            arr.data[index] if index else arr.data, resolved, plan, weights,
            batch_size=int(batch_size),
            classes=planes[0].classes if planes else known, mask=mask, kernel=kernel,
            torch_threads=torch_threads, direct=direct, tta=tta))
    runner = planes[0]
    class_names = _class_names(classes, runner.classes, resolved.class_names)
    # the input's coordinate attrs are copied into the output: without credentials
    secrets = secrets_of(storage_options)
    coords = {name: c.variable.copy(deep=False) for name, c in arr.coords.items()
              if name in ("y", "x", *lead) or (c.ndim == 0 and name not in ("c", "class"))}
    for var in coords.values():
        var.attrs = redact_attrs(var.attrs, secrets)
    classes = runner.classes
    attrs = {
        MARKER: __version__,
        "tile": list(plan.tile),
        "overlap": list(plan.overlap),
        "stride": list(plan.stride),
        "chunks": list(plan.chunks),
        "window": window_name(window),
        "tta": tta or "none",
        "padding": "reflect",
        "blend": "overlap-add of window-weighted logits, divided by the summed window",
        "classes": int(classes),
        "batch_size": int(batch_size),
        "model": resolved.description,
        "kernel": runner.kernel,
        "mask": "none" if mask is None else ("predicate" if callable(mask) else "array"),
        "source": str(arr.attrs.get("source", "array")),
        "class_names": list(class_names),
    }
    if plan.chunk_offset != (0, 0):  # tile cells (lazy predict)
        attrs["chunk_offset"] = list(plan.chunk_offset)
    attrs.update(isel_attrs(isel))
    if lead:  # a stack: the 2-D model ran plane by plane over these dims
        attrs["stack"] = list(lead)
    attrs = redact_attrs(attrs, secrets)
    return RunSetup(image=arr.data, runner=runner, outputs=outputs_, dtype=dtype_, attrs=attrs,
                    class_names=class_names, coords=coords, input_attrs=dict(arr.attrs),
                    lead=lead, planes=tuple(planes))


