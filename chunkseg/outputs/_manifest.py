"""An output's manifest, completion and resume: what a writer records and what it trusts.

A :func:`chunkseg.predict_to_zarr` output holds, beside its variables, the subgroup
:data:`MANIFEST` with the array ``done`` (one element per output chunk, set to 1 by the task
that wrote every variable of that chunk), ``attrs["complete"]`` (True once the run finished)
and ``attrs["fingerprint"]``: the settings that decide the output's values, the input's
identity (shape, dtype, a hash of its metadata and of a sample of its pixels) and chunkseg's
version. ``resume`` checks all of it before trusting a single chunk (:func:`_reopen`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from .. import _ome
from .._check import parse_planes
from .._redact import redact_text, secrets_of
from ..errors import (
    ChunksegError,
    IncompleteOutputWarning,
    InputReadError,
    InvalidValueError,
    NotAnOutputError,
)
from ..io._locations import _refuse_url_password
from ..models.spec import Normalization
from ..plan import TilePlan
from ._lifecycle import staging_path
from ._marks import ChunkMarks
from ._ownership import MARKER
from ._target import describe_location

__all__ = ["MANIFEST", "consolidate", "open_output_group", "recorded_settings",
           "warn_if_incomplete"]


MANIFEST = "chunkseg"
"""Subgroup of an output holding its completion manifest (array ``done``)."""


def input_identity(image: Any, attrs: dict | None = None, sample: int = 32) -> dict:
    """What identifies an input's content, cheaply: shape, dtype, metadata, a pixel sample.

    Parameters
    ----------
    image : dask.array.Array
        The input as read, ``(y, x, c)``, or a stack ``(*lead, y, x, c)`` (its first and last
        planes are sampled).
    attrs : dict, optional
        Its metadata (the opened DataArray's attrs: the source, pixel size...).
    sample : int, default 32
        Side of the squares read: the four corners and the centre.

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``metadata`` (SHA-256 of the attrs as JSON, but ``source``,
        the location, which the fingerprint records apart) and ``sample``
        (SHA-256 of the five squares' bytes). Reads at most five ``sample``-square windows
        (the chunks that hold them).
    """
    import hashlib

    h, w = image.shape[-3:-1]
    sy, sx = min(sample, h), min(sample, w)
    corners = {(0, 0), (0, w - sx), (h - sy, 0), (h - sy, w - sx),
               ((h - sy) // 2, (w - sx) // 2)}
    lead = image.ndim - 3  # a stack of planes: its first and last plane are sampled
    planes = [image] if not lead else [image[(0,) * lead], image[(-1,) * lead]]
    digest = hashlib.sha256()
    for plane, (y, x) in ((p, c) for p in planes for c in sorted(corners)):
        try:
            digest.update(np.ascontiguousarray(np.asarray(plane[y:y + sy, x:x + sx])).tobytes())
        except (OSError, ValueError, RuntimeError) as err:  # a corrupt chunk (a codec's error)
            # the run reads it again and reports it with the pixels; here it is a fact of the
            # input like any other
            digest.update(f"unreadable {type(err).__name__}".encode())
    # the location is recorded apart (``source``): the same data under another name is the
    # same input
    meta = json.dumps({k: v for k, v in (attrs or {}).items() if k != "source"},
                      sort_keys=True, default=str)
    return {"shape": [int(n) for n in image.shape], "dtype": str(image.dtype),
            "metadata": hashlib.sha256(meta.encode()).hexdigest(),
            "sample": digest.hexdigest()}


def _fingerprint(attrs: dict, plan: TilePlan, *, outputs: Sequence[str], dtype: Any,
                 image: Any, input_attrs: dict | None) -> dict:
    """The settings that decide an output's values (what ``resume`` must match): the run's
    settings (``attrs``, the plan, the output variables and their dtype), the input's identity
    (:func:`input_identity` of ``image``, ``(y, x, c)``, and its ``input_attrs``) and
    chunkseg's version."""
    keep = ("source", "model", "tile", "overlap", "window", "tta", "chunks", "classes", "mask",
            "kernel", "padding", "shards", "zarr_chunks", "class_names", "layout", "levels",
            "planes", "stack", "chunkseg_version")
    fp = {k: attrs[k] for k in keep if k in attrs}
    fp.update(image_shape=list(plan.image_shape), outputs=sorted(outputs), dtype=str(dtype),
              input=input_identity(image, input_attrs))
    return json.loads(json.dumps(fp))


def _so(store: Any, storage_options: dict | None) -> dict | None:
    if isinstance(store, str):
        _refuse_url_password(store, "store")
    return storage_options if isinstance(store, str) and "://" in store else None


def _open(store: Any, so: dict | None, consolidated: bool) -> xr.Dataset:
    """An output as one Dataset: the root's variables and, in the OME layout, the class labels
    of ``labels/classes/0`` (an NGFF label image, not a root array), as class indices
    (:func:`chunkseg._ome.open_classes`: the stored ``k + 1`` read as ``k``)."""
    import zarr

    ds = xr.open_zarr(store, storage_options=so, consolidated=consolidated)
    if ds.attrs.get("layout") == _ome.LAYOUT:
        group = zarr.open_group(store, mode="r", storage_options=so)
        path = _ome.var_path("labels")
        if path in group:
            array = group[path]
            attrs = {k: v for k, v in array.attrs.asdict().items() if k != _ome.CLASS_OFFSET}
            if _ome.class_offset(array):
                attrs["long_name"] = "argmax class labels"
            ds["labels"] = xr.DataArray(_ome.open_classes(array), dims=("y", "x"), attrs=attrs)
    return ds


def _missing_chunks(store: Any, so: dict | None, targets: dict, done: np.ndarray) -> list:
    """The output chunks marked done whose stored chunk (or shard) of some variable is absent.

    Only for a path or URL store (listed through fsspec); a store object is not checked.
    """
    import os

    if not isinstance(store, str | os.PathLike):
        return []
    import fsspec

    fs, root = fsspec.core.url_to_fs(os.fspath(store), **dict(so or {}))
    marked = {tuple(int(v) for v in ij) for ij in np.argwhere(done == 1)}
    lead = done.ndim - 2  # a stack of planes: the manifest's leading dims
    missing: set = set()
    for array in targets.values():
        prefix = f"{root.rstrip('/')}/{array.path}/c"
        present = set()
        if fs.exists(prefix):
            for key in fs.find(prefix):
                parts = key[len(prefix) + 1:].split("/")
                if all(p.isdigit() for p in parts) and len(parts) == array.ndim:
                    # a stack's plane (its leading indices) and the chunk's (y, x)
                    present.add(tuple(int(p) for p in parts[:lead] + parts[-2:]))
        missing |= marked - present
    return sorted(missing)


def check_same_settings(old: dict, new: dict) -> None:
    """Raise unless an interrupted run's recorded settings ``old`` equal ``new`` (a resume).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        Naming every setting that differs, with both values.
    """
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise InvalidValueError(
            "`resume=True` needs the same settings as the interrupted run; these differ: "
            + ", ".join(f"{k} (was {old.get(k)!r}, now {new.get(k)!r})" for k in diff)
            + ". Use the original settings, or drop `resume` (with `overwrite=True`) to start "
            "again.")


def _reopen(store, so, fingerprint: dict, outputs, ome: bool = False) -> tuple:
    """The group, variable arrays, manifest and finished chunks (a set of ``(jy, jx)``) of an
    output to resume, after checking it."""
    group = open_output_group(store, storage_options=so, mode="r+")
    try:
        done = group[MANIFEST]["done"]
        # write_empty_chunks is run-time configuration, not stored: set it again
        targets = {name: group[_ome.var_path(name) if ome else name].with_config(
            {"write_empty_chunks": True}) for name in outputs}
    except (FileNotFoundError, KeyError, ValueError, OSError) as err:
        raise InvalidValueError(
            "`resume=True` needs an output written by predict_to_zarr (with its 'chunkseg/done' "
            f"manifest) at `store`. Got {describe_location(store)!r}, which is not one: "
            f"{redact_text(str(err), secrets_of(so))}. Drop "
            "`resume` to start a new run."
        ) from None
    check_same_settings(dict(group.attrs.get("fingerprint") or {}), fingerprint)
    marks = ChunkMarks.open(group[MANIFEST], "done", None, describe_location(store)).values
    missing = _missing_chunks(store, so, targets, marks)
    if missing:
        raise InvalidValueError(
            f"`resume=True` trusts only chunks that are stored; {describe_location(store)!r} "
            f"marks {len(missing)} output chunk(s) done whose data is missing, e.g. chunk "
            f"{missing[0]} (y, x of the chunk grid). The output was changed after it was "
            "written; start again with `overwrite=True` (CLI: --overwrite).")
    return group, targets, done, {tuple(int(v) for v in ij) for ij in np.argwhere(marks == 1)}


def open_output_group(store: Any, *, storage_options: dict | None = None, mode: str = "r"):
    """The root group of a chunkseg output, or one clear error: the one way to open an output
    for reading or adding to it (``label``, ``regions``, figures, ``info``, resume).

    Parameters
    ----------
    store : str, os.PathLike or zarr store
    storage_options : dict, optional
        fsspec options for a URL.
    mode : {"r", "r+"}, default "r"
        ``"r+"`` reads the hierarchy as stored (not the consolidated view, which knows no
        members added since).

    Returns
    -------
    zarr.Group

    Raises
    ------
    chunkseg.errors.NotAnOutputError
        If nothing is there, or a Zarr node chunkseg did not write (no ``chunkseg_version``
        attribute), or its ``zarr.json`` cannot be read.
    """
    import zarr

    kwargs = {"use_consolidated": False} if mode != "r" else {}
    try:
        group = zarr.open_group(store, mode=mode, storage_options=_so(store, storage_options),
                                **kwargs)
        attrs = group.attrs.asdict()
    except (FileNotFoundError, KeyError, ValueError, TypeError) as err:
        # TypeError: zarr's reading of a zarr.json whose fields have the wrong types
        if isinstance(err, ChunksegError):
            raise
        raise NotAnOutputError(
            f"`store` must be a chunkseg output (a Zarr group written by chunkseg predict, with "
            f"the metadata chunkseg wrote). Got {describe_location(store)!r}, where none could "
            f"be read, or whose metadata (zarr.json) was changed ({type(err).__name__}). Check "
            "the path, or run chunkseg predict (with --overwrite) to write it again.") from None
    except OSError as err:  # the store did not answer (a connection refused, no permission)
        raise InputReadError(
            f"`store` {describe_location(store)!r} could not be read: "
            f"{redact_text(str(err), secrets_of(storage_options))}. Check that the store is "
            "reachable and the credentials allow reading it.") from None
    if MARKER not in attrs:
        raise NotAnOutputError(
            f"`store` must be a chunkseg output. Got {describe_location(store)!r}, a Zarr group "
            f"that chunkseg did not write (no '{MARKER}' attribute). Point to the output of "
            "chunkseg predict.")
    return group


def refuse_stack(group: Any, where: str, param: str, what: str) -> None:
    """Refuse an output that is a stack of planes (``attrs["stack"]``: a run over an input
    with leading dims such as ``t``, ``z``) where ``what`` reads one 2-D output.

    Parameters
    ----------
    group : zarr.Group
        Root group of the output to be read (its attrs and manifest are looked at).
    where, param, what : str
        For the message: the output's location (without credentials), the parameter that
        named it (``store``, ``pred``...) and the reader (``chunkseg.label``...).

    Raises
    ------
    chunkseg.errors.InvalidValueError
        Naming the stack's dims and lengths and the fix: write one plane's output
        (``isel``, CLI ``--planes``).
    """
    lead = group.attrs.get("stack")
    if not lead:
        return
    lead = [str(d) for d in lead]
    try:
        lengths = tuple(group[MANIFEST]["done"].shape[:len(lead)])
    except (KeyError, OSError, ValueError):
        lengths = ()
    one = ",".join(f"{d}=0" for d in lead)
    raise InvalidValueError(
        f"`{param}` must be a 2-D output (y, x) for {what}. Got {where!r}, a stack of planes "
        f"with leading dims {tuple(lead)}" + (f" of lengths {lengths}" if lengths else "")
        + f". Write the output of one plane and use that: predict_to_zarr(..., isel="
        f"{{{', '.join(repr(d) + ': 0' for d in lead)}}}) (CLI: chunkseg predict ... --planes "
        f"{one}).")


def warn_if_incomplete(group: Any, where: str, *, stacklevel: int = 2) -> None:
    """Warn that a :func:`predict_to_zarr` output is not finished, with its chunks written.

    Parameters
    ----------
    group : zarr.Group
        The output's root group.
    where : str
        The output, for the message (no credentials).
    stacklevel : int, default 2
        As :func:`warnings.warn`'s, counted from the caller of this function.

    Warns
    -----
    chunkseg.errors.IncompleteOutputWarning
        Unless ``attrs["complete"]`` is True: the chunks marked in the ``chunkseg/done``
        manifest, of all; the others read as 0.
    """
    if group.attrs.get("complete") is True:
        return
    done = group[MANIFEST]["done"][...] if MANIFEST in group else np.zeros(0)
    warnings.warn(
        f"{where!r} is incomplete: {int((done == 1).sum())} of {done.size} chunks written; the "
        "others read as 0. Finish it with predict_to_zarr(..., resume=True) (CLI: --resume).",
        IncompleteOutputWarning, stacklevel=stacklevel + 1)


def recorded_settings(store: Any, *, storage_options: dict | None = None) -> dict | None:
    """The :func:`chunkseg.predict_to_zarr` settings an output records, to resume it with.

    Parameters
    ----------
    store : str or os.PathLike
        An output (or, after an interrupted ``overwrite``, its staging folder is read).
    storage_options : dict, optional
        fsspec options for a URL.

    Returns
    -------
    dict or None
        None where no chunkseg output with a fingerprint is there. Else the keyword arguments
        that decide its values and can be given again: ``model`` (a spec string; absent for a
        model that was an object in memory), ``normalization``, ``tile``, ``overlap``,
        ``window`` (absent for a window array), ``chunks`` and ``shards``, ``outputs``,
        ``dtype``, ``tta``, ``kernel``, ``classes``, ``ome``, ``levels``, ``batch_size``,
        ``device``, ``isel`` (the planes selected, when some were); and ``mask``: True
        when the run had a mask (which must be given again).
    """
    import os

    import zarr

    where = store
    staging = staging_path(store)
    if staging is not None and os.path.isdir(staging):
        where = staging
    try:
        attrs = zarr.open_group(where, mode="r", storage_options=_so(where, storage_options)
                                ).attrs.asdict()
    except (FileNotFoundError, KeyError, ValueError, OSError):
        return None
    fp = attrs.get("fingerprint")
    if not isinstance(fp, dict):
        return None
    out: dict[str, Any] = {}
    model = fp.get("model") or {}
    if isinstance(model, dict) and model.get("kind") in ("spec", "onnx", "keras"):
        out["model"] = model.get("source")
        out["device"] = model.get("device")
    if isinstance(model, dict) and isinstance(model.get("normalization"), dict):
        out["normalization"] = Normalization.from_dict(model["normalization"])
    for key in ("tile", "overlap", "tta", "kernel", "dtype", "levels"):
        if key in fp:
            out[key] = fp[key]
    if fp.get("window") in ("uniform", "linear", "gaussian", "cosine"):
        out["window"] = fp["window"]
    out["tta"] = None if fp.get("tta") in (None, "none") else fp.get("tta")
    if "shards" in fp:
        out["shards"], out["chunks"] = fp["shards"], fp.get("zarr_chunks")
    elif "chunks" in fp:
        out["chunks"] = fp["chunks"]
    if "outputs" in fp:
        out["outputs"] = ",".join(fp["outputs"])
    if "class_names" in fp:
        out["classes"] = list(fp["class_names"])
    out["ome"] = fp.get("layout") is not None
    out["batch_size"] = attrs.get("batch_size")
    out["mask"] = fp.get("mask", "none") != "none"
    if isinstance(fp.get("planes"), str):  # the planes selected (isel_attrs)
        out["isel"] = parse_planes(fp["planes"])
    return {k: v for k, v in out.items() if v is not None}


def consolidate(group: Any) -> None:
    """Write the consolidated metadata of an output's hierarchy (one read opens it all).

    The one place every writer consolidates (:func:`chunkseg.predict_to_zarr`,
    :func:`chunkseg.predict_instances`, :func:`chunkseg.label`). Consolidated metadata is
    not in the Zarr v3 spec yet, but zarr-python and xarray read it (xarray warns without it);
    zarr's notice about that is silenced here.

    Parameters
    ----------
    group : zarr.Group
        The output's root group.
    """
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(group.store)
