"""The lazy result: :func:`predict` (an xarray dataset of dask arrays, nothing computed) and
:func:`blend_logits` (the blended logits of a dask image), built on :func:`blend_graph`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .. import _geo
from ..kernels import blend
from ..models.spec import Normalization
from ..plan import TilePlan
from ..scheduling import dask_threads
from .graph import _logits_task, blend_graph
from .runner import TileRunner, make_runner
from .settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_KERNEL,
    DEFAULT_OUTPUTS,
    DEFAULT_WINDOW,
    _setup,
)

__all__ = ["blend_logits", "predict"]


def blend_logits(
    image: da.Array,
    model,
    plan: TilePlan,
    window: np.ndarray,
    *,
    batch_size: int = 8,
    classes: int | None = None,
    mask: Any = None,
    kernel: str = "auto",
) -> da.Array:
    """Blended logits of a ``(y, x, c)`` dask image: the whole pipeline, lazily.

    Parameters
    ----------
    image : (H, W, C_in) dask array
    model : callable
        float32 ``(N, C_in, T_y, T_x)`` -> logits ``(N, K, T_y, T_x)``.
    plan : TilePlan
    window : (T_y, T_x) ndarray of float32
    batch_size : int, default 8
    classes : int, optional
        ``K``; probed on the first tile when None.
    mask : array_like or callable, optional
        Foreground mask (see :func:`predict`). Pixels no tile ran on get NaN logits.
    kernel : {"auto", "torch", "numpy"}, default "auto"

    Returns
    -------
    (K, H, W) dask array of float32
        Chunks ``((K,), *plan.output_chunks())``.
    """
    runner = make_runner(image, model, plan, window, batch_size=batch_size, classes=classes,
                         mask=mask, kernel=kernel)
    return _logits_array(runner, image.name)


def _logits_array(runner: TileRunner, name: str) -> da.Array:
    plan = runner.plan
    dsk, fold_name, _ = blend_graph(runner, _logits_task,
                                    token=tokenize(name, plan, uuid.uuid4().hex))
    graph = HighLevelGraph.from_collections(fold_name, dsk, dependencies=[])
    return da.Array(graph, fold_name, chunks=((runner.classes,),) + plan.output_chunks(),
                    dtype=np.float32, meta=np.empty((0, 0, 0), dtype=np.float32))


def _plane_variables(logits: da.Array, outputs: Sequence[str], dtype: np.dtype,
                     classes: int) -> dict[str, tuple[tuple[str, ...], da.Array]]:
    """The requested variables of one plane from its blended ``(K, H, W)`` float32 logits:
    name -> (dims, dask array)."""
    data_vars = {}
    if "logits" in outputs:
        # float16: clamped to +-65504 (a Float16OverflowWarning, once), never infinite
        data_vars["logits"] = (("class", "y", "x"), logits.map_blocks(
            blend.LogitsCast(dtype), dtype=dtype, meta=np.empty((0, 0, 0), dtype)))
    if "probabilities" in outputs:
        probs = logits.map_blocks(blend.probabilities_from_logits, dtype, dtype=dtype,
                                  meta=np.empty((0, 0, 0), dtype))
        data_vars["probabilities"] = (("class", "y", "x"), probs)
    if "labels" in outputs:
        ldt = blend.labels_dtype(classes)
        labels = logits.map_blocks(blend.labels_from_logits, drop_axis=0, dtype=ldt,
                                   meta=np.empty((0, 0), ldt))
        data_vars["labels"] = (("y", "x"), labels)
    return data_vars


def _stack_planes(arrays: Sequence[da.Array], shape: tuple[int, ...]) -> da.Array:
    """The planes' arrays (row-major over ``shape``) stacked into ``(*shape, ...)``: the one
    array itself when ``shape`` is ``()``."""
    if not shape:
        return arrays[0]
    step = len(arrays) // shape[0]
    return da.stack([_stack_planes(arrays[i * step:(i + 1) * step], shape[1:])
                     for i in range(shape[0])])


def predict(
    image: Any,
    model: Any,
    *,
    tile: int | tuple[int, int] | None = None,
    overlap: int | tuple[int, int] | None = None,
    window: str | np.ndarray = DEFAULT_WINDOW,
    chunks: int | tuple[int, int] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    outputs: str | Sequence[str] = DEFAULT_OUTPUTS,
    dtype: str | np.dtype = DEFAULT_DTYPE,
    device: str = DEFAULT_DEVICE,
    normalization: Normalization | None = None,
    storage_options: dict | None = None,
    array_name: str | None = None,
    mask: Any = None,
    kernel: str = DEFAULT_KERNEL,
    classes: Sequence[str] | None = None,
    tta: str | None = None,
    isel: Mapping[str, int | slice] | None = None,
) -> xr.Dataset:
    """Segment an image of any size with a tiled model and seamless blending, lazily.

    A global grid of tiles (``tile``, ``overlap``, stride ``tile - overlap``) is laid over the
    reflect-padded image. Each computation chunk runs the model on the tiles it owns, weights
    each tile's logits by the blending ``window`` and accumulates them with the weights; an
    overlap-add reduction adds the blocks' overhang into the following chunks and the sum is divided
    by the summed weights. The result is the same for any chunking.

    Parameters
    ----------
    image : array_like, str or path
        ``(y, x)`` or ``(y, x, c)``, or a stack of planes with named leading dims (``t``,
        ``z``...: ``(t, c, z, y, x)`` OME-Zarr, run plane by plane): numpy, dask or xarray
        array (dims ``y``, ``x``[, ``c``]),
        a Zarr array/group, a Zarr store path or fsspec URL, or a small PNG/JPEG/TIFF file (see
        :func:`chunkseg.io.open_image`).
    model : callable, torch.nn.Module, ModelSpec or str
        Maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits ``(N, K, T_y, T_x)``; see
        :func:`chunkseg.models.as_model`.
    tile : int or (int, int), optional
        Tile size, pixels. Default: the model's (a bioimage.io package's valid size), else 256.
    overlap : int or (int, int), optional
        Overlap between tiles, pixels, ``0 <= overlap < tile``. Default: the model's (twice a
        bioimage.io package's halo), else 64.
    window : str or (T_y, T_x) array, default "gaussian"
        Blending window: ``"uniform"``, ``"linear"``, ``"gaussian"``, ``"cosine"`` or weights.
    chunks : int or (int, int) or "tiles", optional
        Computation and output chunk, pixels, any size (at least the tile is best: 1024, 2048
        or the input's chunks), or ``"tiles"``. Default on the CPU ``"tiles"``: one chunk per
        tile cell (the stride ``tile - overlap``, the grid shifted by ``overlap // 2`` onto the
        tiles' starts, :attr:`chunkseg.plan.TilePlan.tile_cells`), so a lazy slice runs only
        the tiles of the cells it touches (2 x 2 tiles for a window inside one cell; dask's
        culling drops the rest). Default with a CUDA ``device``: 2048 px (:data:`GPU_CHUNK`,
        full GPU batches). A number of pixels gives fewer, bigger tasks for whole images (see
        :func:`chunkseg.plan.plan_tiles`).
    batch_size : int, default 8
        Tiles per model call.
    outputs : str or sequence of str, default ("logits", "labels")
        Any of ``"logits"``, ``"probabilities"``, ``"labels"`` (or a comma-separated string).
    dtype : {"float32", "float16"}, default "float32"
        dtype of ``logits`` and ``probabilities``.
    device : str, default "cpu"
        Device for torch and ONNX models (``"cuda"``, ``"cuda:1"``...). With a torch model the
        whole per-chunk pipeline runs there (see ``kernel``).
    normalization : Normalization, optional
        Input normalisation ``(x * scale - mean) / std`` applied to each batch.
    storage_options : dict, optional
        fsspec options for a URL ``image``.
    array_name : str, optional
        Array to read inside a Zarr group ``image`` (default: ``image``, the NGFF full
        resolution, or the only array).
    mask : (M_y, M_x) array_like or callable, optional
        Skip background so it never reaches the model. An array is a low-resolution foreground
        map covering the image (true or > 0 = foreground, read whole on the client): a tile
        runs only if its extent touches foreground (:func:`chunkseg.plan.tile_mask`). A
        callable ``mask(block) -> bool`` is asked once per chunk, in the task, with the
        chunk's padded input block ``(C_in, B_y, B_x)``; False skips all of the chunk's tiles.
        Fill values where no tile ran: ``logits`` and ``probabilities`` NaN, ``labels`` 0.
    kernel : {"auto", "torch", "numpy"}, default "auto"
        Per-chunk kernel. ``"torch"`` (the default for torch models under ``"auto"``) keeps each
        chunk on the model's device from the raw input block to the outputs
        (:mod:`chunkseg.kernels.blend_torch`); ``"numpy"`` (the reference, and the kernel for ONNX
        models and plain callables) runs the model on numpy batches and blends on the CPU.
    classes : sequence of str, optional
        One name per class (``K`` of them), the ``class`` coordinate. Default: the model's
        (the shipped U-Net's ``("cell", "membrane")``, a bioimage.io package's output channel
        names), else ``"0"``, ``"1"``... When either gives ``K``, the dataset is built without
        running the model (it loads and runs in the tasks); else the model runs once on the
        first tile here to learn ``K``.
    tta : {None, "flips", "d4"}, default None
        Test-time augmentation (:mod:`chunkseg.kernels.tta`): each tile's logits are the mean of the
        model's logits on its 4 mirrored (``"flips"``) or 8 rotated/mirrored (``"d4"``, square
        tiles only) copies, mapped back, before the window weights them. The model runs 4 or 8
        times per tile; the output stays independent of the chunking.
    isel : mapping of str to int or slice, optional
        Planes of the input to run, by dimension name (:func:`chunkseg.open_image`), applied
        lazily before its axes are read: ``{"z": 10}``, ``{"z": slice(10, 20), "t": 0}``
        (CLI: ``--planes z=10:20,t=0``). An int for every axis other than ``y``, ``x``, ``c``
        gives the 2-D result of that plane; the axes left longer than 1 make a stack.

    Returns
    -------
    xarray.Dataset
        Dask-backed, nothing computed yet. ``logits`` and ``probabilities``: dims
        ``("class", "y", "x")``, ``dtype``; ``labels``: dims ``("y", "x")``, the smallest unsigned
        integer holding ``K``. Chunks equal the computation chunks (irregular for tile cells:
        the first one ``stride - overlap // 2`` long). Coordinates: ``class`` (the
        class names, str), and ``y``/``x`` where the input has them (pixel centres in its
        units, with ``attrs["units"]``: an xarray input's own coordinates, an OME-NGFF input's
        ``scale``/``translation``, a TIFF's resolution tags), plus an xarray input's scalar
        coordinates (rioxarray's ``spatial_ref``). ``attrs`` record the plan, window, model,
        class names and chunkseg version. A stack (an input with
        leading dims such as ``t``, ``z``) keeps them in front, with their coordinates (the
        input's, else the planes' indices in the source): ``logits`` ``(t, z, class, y, x)``,
        ``labels`` ``(t, z, y, x)``, one chunk per plane, each plane the 2-D result of that
        plane (its own graph; ``attrs["stack"]`` names the dims). The coordinates' attrs and
        ``attrs`` are JSON values
        without credentials (:func:`chunkseg._redact.redact_attrs`: credential-named attrs
        become ``"***"``, URLs lose their user name, password and query).

    Raises
    ------
    ValueError, TypeError
        For bad arguments (wrong image dimensionality, ``overlap >= tile``, unknown window,
        outputs or kernel...).
    chunkseg.errors.ModelOutputError
        If the model's output has the wrong shape (also a number of classes other than
        ``classes``) or is not finite: on the first tile here when ``K`` is not known
        beforehand, else when a tile runs.

    Notes
    -----
    Memory per task is about ``plan.memory_per_task()`` plus the model's activations; nothing
    image-sized is ever held. The blending (sum of windowed logits over the sum of windows) is
    that of MONAI's ``sliding_window_inference``; MONAI differs in tile placement (its tiles
    start at 0, and it pads only images smaller than a tile) and clamps its gaussian weights
    below at 1e-3 (see ``benchmarks/vs_monai.py``).
    """
    cores = os.cpu_count() or 1
    setup = _setup(image, model, tile=tile, overlap=overlap, window=window, chunks=chunks,
                   batch_size=batch_size, outputs=outputs, dtype=dtype, device=device,
                   normalization=normalization, storage_options=storage_options,
                   array_name=array_name, mask=mask, kernel=kernel, classes=classes,
                   tta=tta, isel=isel, torch_threads=max(1, cores // dask_threads(None)),
                   lazy=True)
    outputs_, dtype_ = setup.outputs, setup.dtype
    planes = [_plane_variables(_logits_array(runner, setup.image.name), outputs_, dtype_,
                               runner.classes) for runner in setup.planes]
    # a stack: each plane's variables (the 2-D graph of that plane) stacked along the
    # leading dims, one chunk per plane
    data_vars = {name: ((*setup.lead, *dims), _stack_planes([p[name][1] for p in planes],
                                                           setup.lead_shape))
                 for name, (dims, _) in planes[0].items()}
    coords = {"class": ("class", np.asarray(setup.class_names, dtype=object)),
              **setup.coords}
    out = xr.Dataset(data_vars, coords=coords, attrs=setup.attrs)
    mapping = _geo.grid_mapping(setup.coords)
    if mapping is not None:  # CF / rioxarray: the coordinate holding the input's CRS
        for var in out.data_vars.values():
            var.attrs["grid_mapping"] = mapping
    return out


