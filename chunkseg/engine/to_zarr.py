"""Writing a run: :func:`predict_to_zarr`, which folds each output chunk, computes its
variables and writes them once (the arrays, their codecs and the pyramid are
:mod:`chunkseg.outputs._variables`'), with resume, shards and the OME-Zarr layout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed

from .. import _ome
from .._check import positive_int
from .._redact import redact_text, redacting_warnings, secrets_of
from ..errors import InvalidTypeError, InvalidValueError, RunInterruptedError
from ..kernels import blend
from ..models.spec import Normalization
from ..outputs import _pyramid
from ..outputs._lifecycle import writing
from ..outputs._manifest import (
    _fingerprint,
    _open,
    _reopen,
    _so,
    consolidate,
    open_output_group,
)
from ..outputs._source_labels import source_labels_target, write_labels_into_source
from ..outputs._target import describe_location
from ..outputs._variables import (
    ChunkWriter,
    check_compression_level,
    create_variables,
    pixel_grid,
    shard_layout,
    write_levels,
)
from ..outputs.api import output_progress
from ..plan import DEFAULT_CHUNK_TARGET
from ..progress import stage
from ..scheduling import compute, dask_threads, open_client
from .graph import _count, _gpu_resources, _graph, _write_task, blend_graph
from .placement import on_every_worker
from .runner import TileRunner
from .settings import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_KERNEL,
    DEFAULT_OUTPUTS,
    DEFAULT_WINDOW,
    GPU_CHUNK,
    GPU_READ_AHEAD,
    _normalize_outputs,
    _setup,
)

__all__ = ["ChunkOutputs", "predict_to_zarr"]


class ChunkOutputs:
    """The variables of a folded output chunk, computed and handed to a
    :class:`~chunkseg.outputs._variables.ChunkWriter` (the fold task's context).

    Parameters
    ----------
    writer : ChunkWriter
    dtype : numpy dtype
        Of ``logits`` and ``probabilities``; float16 logits are clamped to +-65504 (a
        :class:`~chunkseg.errors.Float16OverflowWarning` once per run, from the first chunk
        that had any: :class:`chunkseg.kernels.blend.LogitsCast`).
    """

    def __init__(self, writer: ChunkWriter, dtype: np.dtype):
        self.writer = writer
        self.dtype = np.dtype(dtype)
        self._cast = blend.LogitsCast(self.dtype)  # warns once per run (per worker process)
        # an NGFF label image (OME layout) stores class k as k + 1, 0 where no tile ran
        labels = writer.targets.get("labels")
        self.ngff_labels = labels is not None and _ome.class_offset(labels) > 0

    def __call__(self, runner: TileRunner, jy: int, jx: int, acc) -> int:
        names = self.writer.names
        what = f"output chunk ({jy}, {jx}) (y, x of the chunk grid)"
        # where a tile ran (only a mask leaves pixels without one)
        need_covered = self.ngff_labels and runner.fill_nan
        covered = None
        if hasattr(acc, "clone"):
            from ..kernels.blend_torch import outputs_torch

            clamped: list = []
            outs = outputs_torch(acc, names + (("covered",) if need_covered else ()),
                                 self.dtype, runner.fill_value, clamped=clamped)
            covered = outs.pop("covered", None)
            self._cast.clamped(sum(clamped), what)
        else:
            logits = blend.normalize_accumulator(acc, np.float32, runner.fill_value)
            outs = {}
            if "logits" in names:
                outs["logits"] = self._cast(logits, what)
            if "probabilities" in names:
                outs["probabilities"] = blend.probabilities_from_logits(logits, self.dtype)
            if "labels" in names:
                outs["labels"] = blend.labels_from_logits(logits)
            if need_covered:
                covered = acc[-1] > 0
        if self.ngff_labels and "labels" in outs:
            outs["labels"] = _ome.encode_classes(outs["labels"], covered, runner.classes)
        self.writer.write(jy, jx, outs, what)
        return 1


def predict_to_zarr(
    image: Any,
    model: Any,
    store: Any,
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
    array_name: str | None = None,
    mask: Any = None,
    kernel: str = DEFAULT_KERNEL,
    classes: Sequence[str] | None = None,
    tta: str | None = None,
    isel: Mapping[str, int | slice] | None = None,
    overwrite: bool = False,
    storage_options: dict | None = None,
    scheduler: Any = None,
    workers: int | None = None,
    progress: bool = False,
    compression_level: int = 1,
    resume: bool = False,
    shards: int | tuple[int, int] | None = None,
    ome: bool = False,
    levels: int | None = None,
    labels_into_source: bool = False,
) -> xr.Dataset:
    """Run :func:`predict` and write its outputs to a Zarr v3 group, each chunk written once.

    Parameters
    ----------
    image : array_like, str or path
        ``(y, x)`` or ``(y, x, c)``, or a stack of planes with named leading dims (``t``,
        ``z``...: ``(t, c, z, y, x)`` OME-Zarr, run plane by plane): numpy, dask or xarray
        array, a Zarr array/group, a Zarr
        store path or fsspec URL, or a small PNG/JPEG/TIFF file (as :func:`predict`).
    model : callable, torch.nn.Module, ModelSpec or str
        Maps a float32 batch ``(N, C_in, T_y, T_x)`` to logits ``(N, K, T_y, T_x)``; see
        :func:`chunkseg.models.as_model`.
    store : str, os.PathLike or zarr store
        Output group: a local path, an fsspec URL (``s3://bucket/out.zarr``) or a zarr store.
    tile : int or (int, int), optional
        Tile size, pixels. Default: the model's (a bioimage.io package's valid size), else 256
        (:data:`DEFAULT_TILE`).
    overlap : int or (int, int), optional
        Overlap between tiles, pixels, ``0 <= overlap < tile``. Default: the model's (twice a
        bioimage.io package's halo), else 64 (:data:`DEFAULT_OVERLAP`).
    window : str or (T_y, T_x) array, default "gaussian"
        Blending window: ``"uniform"``, ``"linear"``, ``"gaussian"``, ``"cosine"`` or weights.
    chunks : int or (int, int), optional
        Computation and output chunk, pixels (with ``shards``, the inner Zarr chunk of each
        shard); default 1536 px, 2048 px with a CUDA ``device`` (:data:`GPU_CHUNK`).
    batch_size : int, default 8
        Tiles per model call, a positive int (``True`` is refused).
    outputs : str or sequence of str, default ("logits", "labels")
        Variables to write: any of ``"logits"``, ``"probabilities"``, ``"labels"`` (or a
        comma-separated string).
    dtype : {"float32", "float16"}, default "float32"
        dtype of ``logits`` and ``probabilities``.
    device : str, default "cpu"
        Device for torch and ONNX models (``"cuda"``, ``"cuda:1"``...). With a torch model the
        whole per-chunk pipeline runs there (see ``kernel``).
    normalization : Normalization, optional
        Input normalisation ``(x * scale - mean) / std`` applied to each batch.
    array_name : str, optional
        Array to read inside a Zarr group ``image`` (default: ``image``, the NGFF full
        resolution, or the only array).
    mask : (M_y, M_x) array_like or callable, optional
        Skip background so it never reaches the model: a low-resolution foreground map, or a
        predicate ``mask(block) -> bool`` asked once per chunk (as :func:`predict`). Fill
        values where no tile ran: ``logits`` and ``probabilities`` NaN, ``labels`` 0.
    kernel : {"auto", "torch", "numpy"}, default "auto"
        Per-chunk kernel: ``"torch"`` (the default for torch models under ``"auto"``) keeps each
        chunk on the model's device from the raw input block to the written outputs;
        ``"numpy"`` (the reference, and the kernel for ONNX models and plain callables) blends
        on the CPU.
    classes : sequence of str, optional
        One name per class (``K`` of them), the ``class`` coordinate. Default: the model's,
        else ``"0"``, ``"1"``...
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
    overwrite : bool, default False
        Replace a previous chunkseg output at ``store``. Without it, a store that already holds
        data is refused before anything is computed or written; even with it, a folder that is
        not a Zarr store, a Zarr store chunkseg did not write, or one holding other files is
        refused, never deleted (see ``chunkseg.outputs._target.check_output_target``).
    storage_options : dict, optional
        fsspec options for URL inputs and outputs.
    scheduler : str or distributed.Client, optional
        See :func:`chunkseg.scheduling.open_client`; default: dask's threaded scheduler.
    workers : int, optional
        Start a LocalCluster of this many worker processes.
    progress : bool, default False
        Show progress on stderr (:mod:`chunkseg.progress`), one labelled bar per stage:
        ``loading the model``, ``predicting N chunks`` (N: the chunks to compute), and with
        ``ome`` ``pyramid level 1``... The CLI shows it unless ``--no-progress``.
    compression_level : int, default 1
        Compression level of every array: zstd for ``labels`` and ``probabilities``, Blosc
        lz4 with byte shuffle for ``logits``. Level 1 wrote 12 % faster than level 3 for the
        same output size within 3 % (``python benchmarks/tuning.py``, 8192^2, labels + float16
        probabilities). Float32 logits hardly compress (zstd: 0.88 of their size, Blosc lz4 with
        shuffle: 0.85) and Blosc wrote them twice as fast (21 against 45 ms for a 1536^2 chunk
        of 2 classes on this 2-core machine); float16 probabilities compress to 0.13 with zstd
        against 0.25 with Blosc lz4, in the same time.
    resume : bool, default False
        Finish an interrupted run at ``store``: its settings must be the same (checked against
        the ``fingerprint`` attribute: input, model, tile, overlap, window, chunks, outputs,
        dtype, classes, mask, kernel); the chunks marked finished in its manifest are neither
        recomputed nor rewritten, the others are computed with the blocks they need. The
        result is bit-identical to an uninterrupted run.
    shards : int or (int, int), optional
        Write every array with Zarr v3 sharding: one stored object per shard of ``shards``
        pixels ``(y, x)`` (the class axis is never split), holding the inner Zarr chunks of
        ``chunks`` pixels; a 40000^2 run then writes a few hundred objects instead of thousands
        (``python benchmarks/shards.py``). The shard is the computation chunk too (one task
        computes and writes each shard, whole, once; the manifest has one element per shard),
        so it must be a multiple of ``chunks`` along each axis (``chunks`` defaults to 1536 px,
        2048 px with a CUDA ``device``); otherwise an
        :class:`~chunkseg.errors.InvalidValueError` is raised before anything is written.
        Default: no sharding, one object per chunk. Readers (``xarray.open_zarr``, zarr-python
        >= 3) read sharded arrays like any other.
    ome : bool, default False
        Write the OME-Zarr 0.5 layout (:mod:`chunkseg._ome`): the group is also an NGFF image
        of the probabilities (else the logits) with a pyramid, ``axes`` ``class, y, x`` (with
        the input's units) and ``scale``/``translation`` from the input's pixel size, and the
        class labels are an NGFF label image ``labels/classes`` (a colour and the name of
        each class), so OME-Zarr viewers (napari with napari-ome-zarr, ome-zarr-py, vizarr)
        open it. That label image stores 0 for "no prediction" (outside the ``mask``; viewers
        draw it transparent) and class ``k`` as ``k + 1`` (its ``image-label`` ``properties``
        and ``colors`` use ``label-value`` ``k + 1``); the ``labels`` variable that
        :func:`open_output` (and this function) return, and every chunkseg reader, hold class
        indices ``0..K-1`` as in the plain layout. ``xarray.open_zarr(store)`` still opens the
        full-resolution image variables, ``xarray.open_zarr(store, group="1")`` level 1;
        :func:`open_output` adds the labels.
        Needs ome-zarr-py (``pip install 'chunkseg[ome]'``).
    levels : int, optional
        With ``ome``: pyramid levels, full resolution included. Default: halve until the larger
        side is at most 512 px. Levels are computed out of core after every chunk is written,
        each from the one before it as stored (mean of 2 x 2 for probabilities and logits,
        mode for labels; :mod:`chunkseg.outputs._pyramid`), one task per chunk.
    labels_into_source : bool, default False
        Also write the class label image into the input's own NGFF ``labels/`` group, as
        ``labels/classes`` (its levels, values and ``image-label`` metadata as the output's:
        0 "no prediction", class ``k`` as ``k + 1``), so that viewers opening the input show
        the segmentation over it. The only write chunkseg ever makes inside an input, and only
        when asked: ``image`` must be an OME-NGFF 0.5 image (path, URL or writable
        ``zarr.Group`` of a Zarr v3 group with ``multiscales``, as :func:`chunkseg.ingest`
        writes), and the run needs ``ome=True`` and ``labels`` in ``outputs``. Checked
        before anything is computed; written after the output is complete (copied from it
        chunk by chunk). An existing ``labels/classes`` is replaced only when chunkseg wrote
        it and ``overwrite`` is True; nothing else of the input is written (other label
        images are kept and stay listed). :mod:`chunkseg.outputs._source_labels`.

    Returns
    -------
    xarray.Dataset
        The written group, opened with ``xarray.open_zarr`` (dask-backed).

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If ``store`` holds data and ``overwrite`` is False; with ``overwrite``, if it holds
        anything but a Zarr store chunkseg wrote (``attrs["chunkseg_version"]``).
    chunkseg.errors.OutputOverlapError
        If ``store`` is, contains or lies inside a path/URL ``image``.
    chunkseg.errors.InvalidValueError
        With ``labels_into_source``: without ``ome=True`` and ``labels``, or when ``image`` is
        not an OME-NGFF 0.5 image (nothing is written).
    chunkseg.errors.OutputExistsError
        With ``labels_into_source``: the input's ``labels/classes`` was not written by
        chunkseg, or was and ``overwrite`` is False (nothing is written).
    ValueError, TypeError, chunkseg.errors.ModelOutputError
        As :func:`predict`, all before anything is written.

    Notes
    -----
    One task per output chunk folds it, computes every requested variable (on the model's
    device with the torch kernel) and writes each variable's chunk, whole, once. Blocks are
    accumulated in row-major order through a rolling window of ``threads + 2`` blocks
    (``min(threads, 4) + 2`` on a GPU, :data:`GPU_READ_AHEAD`), so
    memory holds a few blocks plus one row of overhanging pieces (less than a tile high):
    it grows with the image's width by ``4 (K + 1) T W`` bytes at most, not with its area.
    On a ``dask.distributed`` cluster whose workers declare ``resources={"GPU": 1}`` and a
    CUDA ``device``, the block and chunk tasks ask for a quarter of a GPU each (they run only
    on GPU workers, up to four at once per GPU); run one worker process per GPU.
    Completion: the group's ``attrs["complete"]`` is False until every chunk is written, and
    the array ``chunkseg/done`` (a subgroup xarray does not list) marks each finished chunk;
    :func:`open_output` warns on an incomplete output, ``chunkseg info`` prints its progress.
    Arrays: ``logits``/``probabilities`` ``(class, y, x)`` chunked ``(K, C_y, C_x)``,
    ``labels`` ``(y, x)`` chunked ``(C_y, C_x)``, zstd-compressed, ``dimension_names`` set;
    with ``shards``, sharded ``(K, S_y, S_x)`` / ``(S_y, S_x)`` around those chunks, and the
    group's attrs record ``shards`` and ``zarr_chunks`` (``chunks`` is then the shard).
    """
    import zarr

    if not isinstance(ome, bool):
        raise InvalidTypeError(f"`ome` must be True or False. Got {ome!r}.")
    if levels is not None:
        if not ome:
            raise InvalidValueError(
                f"`levels` must be a positive int (pyramid levels, full resolution included) and "
                f"needs `ome=True`. Got levels={levels!r} with ome={ome!r}; pass ome=True (CLI: "
                "--ome) and levels >= 1, or drop `levels`.")
        levels = positive_int(levels, "levels", "Pyramid levels, full resolution included: "
                              "pass levels >= 1, or drop `levels` for the default.")
    check_compression_level(compression_level, _normalize_outputs(outputs))
    if ome:
        _ome._ome()  # ome-zarr-py is needed: say so before anything is written
    source_labels = None  # the input's NGFF image, when labels go into its labels/ too
    if not isinstance(labels_into_source, bool):
        raise InvalidTypeError(f"`labels_into_source` must be True or False. Got "
                               f"{labels_into_source!r}.")
    if labels_into_source:
        if not ome or "labels" not in _normalize_outputs(outputs):
            raise InvalidValueError(
                "`labels_into_source` writes the output's NGFF label image into the input, so "
                f"it needs `ome=True` and 'labels' in `outputs`. Got ome={ome!r}, "
                f"outputs={outputs!r}; pass ome=True (CLI: --ome) with labels in the outputs.")
        source_labels = source_labels_target(image, _so(image, storage_options), array_name,
                                             overwrite)
    inner = None  # the inner Zarr chunks of a sharded output
    if shards is not None:
        chunks, inner = shard_layout(shards, chunks, GPU_CHUNK if str(device).startswith("cuda")
                                     else DEFAULT_CHUNK_TARGET)
    so = _so(store, storage_options)
    with writing(store, source=image, overwrite=overwrite, resume=resume, storage_options=so,
                 what="chunkseg predict") as target:
        # connect to the cluster before anything is written: a wrong address leaves no output;
        # the warnings of the run (the model's probe, the stores', the chunk tasks') are redacted
        with redacting_warnings(secrets_of(storage_options)), \
                open_client(scheduler, workers) as client:
            threads = dask_threads(client)
            cores = os.cpu_count() or 1
            local = client is None or workers is not None
            with stage("loading the model", progress):  # and probing it on one tile
                setup = _setup(image, model, tile=tile, overlap=overlap, window=window,
                               chunks=chunks, batch_size=batch_size, outputs=outputs, dtype=dtype,
                               device=device, normalization=normalization,
                               storage_options=_so(image, storage_options),
                               array_name=array_name, mask=mask, kernel=kernel, classes=classes,
                               tta=tta, isel=isel,
                               torch_threads=max(1, cores // threads) if local else None)
            runner, ds_attrs = setup.runner, setup.attrs
            plan, dtype_ = runner.plan, setup.dtype
            if setup.lead and ome:
                raise InvalidValueError(
                    "`ome=True` writes a 2-D NGFF image (class, y, x); a stack of planes is not "
                    f"written in the OME layout. Got an input with leading dims {setup.lead} of "
                    f"lengths {setup.lead_shape}. Drop `ome` (CLI: --ome) for a plain Zarr "
                    "output with those dims, or select one plane with `isel` (CLI: --planes "
                    + ",".join(f"{d}=0" for d in setup.lead) + ").")
            n_chunks = plan.n_chunks * len(setup.planes)  # every plane's chunks
            if inner is not None:  # the computation chunks (ds_attrs["chunks"]) are the shards
                ds_attrs.update(shards=list(plan.chunks), zarr_chunks=list(inner))
            level_shapes = _pyramid.level_shapes(plan.image_shape, levels) if ome else []
            if ome:
                ds_attrs.update(layout=_ome.LAYOUT, levels=len(level_shapes))
            fingerprint = _fingerprint(ds_attrs, plan, outputs=setup.outputs, dtype=setup.dtype,
                                       image=setup.image, input_attrs=setup.input_attrs)
            if target.resume:
                group, targets, done, finished = _reopen(target.store, so, fingerprint,
                                                         setup.outputs, ome)
            else:
                group = zarr.open_group(target.store, mode="w", storage_options=so,
                                        attributes={**ds_attrs, "fingerprint": fingerprint,
                                                    "complete": False})
                targets, done = create_variables(
                    group, outputs=setup.outputs, plan=plan, classes=runner.classes,
                    dtype=dtype_, labels_dtype=blend.labels_dtype(runner.classes), inner=inner,
                    ome=ome, level_shapes=level_shapes, coords=setup.coords,
                    class_names=setup.class_names, compression_level=compression_level,
                    lead=setup.lead, lead_shape=setup.lead_shape)
                finished = set()
            token = tokenize(setup.image.name, plan, uuid.uuid4().hex)
            gpu = str(device).startswith("cuda") and runner.kernel == "torch"
            # on a GPU a few blocks read ahead keep it busy; more only compete with it for the GIL
            lag = (min(threads, GPU_READ_AHEAD) if gpu else threads) + 2
            dsk, fold_keys = _stack_graph(setup, targets, done, dtype_, describe_location(store),
                                          lag=lag, token=token, finished=finished)
            resources = _gpu_resources(client, device)
            done_key = f"chunkseg-done-{token}"
            dsk[done_key] = (_count, list(fold_keys))
            graph = _graph(done_key, dsk, resources)
            try:
                # the runner and writer on every worker first: blocks spread by load
                with _restore_torch_threads(), on_every_worker(client, dsk):
                    written = compute(Delayed(done_key, graph), scheduler=scheduler if client is None
                                      else client, progress=progress,
                                      label=f"predicting {len(fold_keys)} chunks", count=fold_keys,
                                      secrets=secrets_of(storage_options))[0]
            except (asyncio.CancelledError, concurrent.futures.CancelledError) as err:
                # e.g. distributed's FutureCancelledError when the scheduler is lost
                done_now = output_progress(target.store, storage_options=so)[0]
                reason = redact_text(" ".join(str(err).split()), secrets_of(storage_options))
                raise RunInterruptedError(
                    f"the run was interrupted before it finished ({reason}). {done_now} of "
                    f"{n_chunks} chunks are written and marked in {describe_location(store)!r}; "
                    "finish it with resume=True (CLI: --resume)."
                ) from None
            if written + len(finished) != n_chunks:
                raise RuntimeError(f"wrote {written + len(finished)} of {n_chunks} chunks.")
            if ome:  # every chunk is written: the pyramid, level by level, each from the one before
                write_levels(group, setup.outputs, len(level_shapes), store,
                              scheduler if client is None else client, progress)
            group.attrs["complete"] = True  # last: the output is whole
        consolidate(group)
    if source_labels is not None:  # the output is complete and in place: copy its labels
        scale, translation, units = pixel_grid(setup.coords)
        with redacting_warnings(secrets_of(storage_options)):  # a local copy, chunk by chunk
            write_labels_into_source(
                source_labels, open_output_group(store, storage_options=so, mode="r"),
                class_names=setup.class_names, scale=scale, translation=translation,
                units=units, progress=progress)
    return _open(store, so, consolidated=True)


def _stack_graph(setup, targets: dict, done, dtype: np.dtype, location: str, *, lag: int,
                 token: str, finished: set) -> tuple[dict, list]:
    """The write graph of every plane (one plane for a single image): each plane's own
    :func:`blend_graph` with its runner and a writer of its plane, merged; ``finished`` holds
    the ``(*plane, jy, jx)`` chunks to skip. The rolling window runs on from one plane to the
    next (``before``), so memory holds about ``lag`` blocks, whatever the number of planes.

    Returns
    -------
    dsk : dict
    fold_keys : list
        Every plane's fold keys, plane after plane.
    """
    dsk: dict = {}
    fold_keys: list = []
    before = None
    nr, nc = setup.runner.plan.chunk_grid
    for index, runner in zip(np.ndindex(*setup.lead_shape), setup.planes, strict=True):
        writer = ChunkOutputs(ChunkWriter(targets, runner.plan, done=done, location=location,
                                          plane=index), dtype)
        skip = {ij[-2:] for ij in finished if tuple(ij[:-2]) == index}
        plane_dsk, fold_name, keys = blend_graph(
            runner, _write_task, context=writer, lag=lag, skip=skip, before=before,
            token=token if not index else f"{token}-{'-'.join(map(str, index))}")
        dsk.update(plane_dsk)
        fold_keys += keys
        # this plane's chunks in row-major order, the skipped ones None: the next plane's gates
        before = [(fold_name, 0, jy, jx) if (jy, jx) not in skip else None
                  for jy in range(nr) for jx in range(nc)]
    return dsk, fold_keys


@contextlib.contextmanager
def _restore_torch_threads():
    """Torch's intra-op thread count as it was, after tasks set one per dask thread."""
    import sys

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if before is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


