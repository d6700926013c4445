"""``labels_into_source``: the class label image of a run, also written into the input's own
NGFF ``labels/`` group -- the only place inside an input that chunkseg ever writes.

:func:`source_labels_target` checks, before anything is computed, that the input is an
OME-NGFF 0.5 image (a Zarr v3 group with ``multiscales``) and that its ``labels/classes`` is
absent or chunkseg's (every node stamped, :mod:`chunkseg.outputs._ownership`); and
:func:`write_labels_into_source`, after the output is complete, copies the output's
``labels/classes`` levels there chunk by chunk and writes their NGFF metadata with
:func:`chunkseg._ome.write_labels_metadata` (the label image stores class ``k`` as ``k + 1``,
0 where nothing was predicted). Nothing else of the input is written: the image's arrays, its
group's ``zarr.json`` and any other label image (``labels/<other>``) stay byte-identical; the
``labels`` group's own ``zarr.json`` gains ``"classes"`` in its list.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import dask.array as da

from .. import _ome
from .._version import MARKER
from ..errors import InvalidValueError, OutputExistsError
from ..io._locations import IMAGE_FILE_SUFFIXES, _image_suffix, _redact
from ..io._zarr import _describe_zarr, _ngff_multiscale
from ..scheduling import compute
from ._arrays import ArrayWriter, create_array
from ._ownership import require_group

__all__ = ["LABEL_NAME", "source_labels_target", "write_labels_into_source"]

LABEL_NAME = _ome.LABELS_GROUP.split("/")[-1]
"""The label image chunkseg writes into a source: ``labels/classes``, as in its own outputs."""

_FIX = ("Pass the path or URL of an OME-NGFF 0.5 image (a Zarr v3 group with 'multiscales'; "
        "`chunkseg ingest` writes one), or drop `labels_into_source` (CLI: "
        "--labels-into-source) and open the output's own labels/classes.")


def _not_ngff(image: Any, why: str) -> InvalidValueError:
    return InvalidValueError(
        f"`labels_into_source` needs `image` to be an OME-NGFF image, the only kind of input "
        f"chunkseg writes into (its labels/ group). Got {image}, {why}. {_FIX}")


def source_labels_target(image: Any, storage_options: Mapping[str, Any] | None,
                         array_name: str | None, overwrite: bool) -> Any:
    """The input's NGFF image group, opened for writing its ``labels/``, after every check.

    Parameters
    ----------
    image : str, os.PathLike or zarr.Group
        The run's input.
    storage_options : mapping, optional
        fsspec options of a URL ``image``.
    array_name : str, optional
        The run's ``array_name``: None, or the path of the image's full-resolution dataset
        (the label image is on the grid of level 0).
    overwrite : bool
        Replace a ``labels/classes`` chunkseg wrote there before.

    Returns
    -------
    zarr.Group
        The NGFF image (the input's root group), writable.

    Raises
    ------
    chunkseg.errors.InvalidValueError
        If ``image`` is not an OME-NGFF 0.5 image: an array, an image file or an in-memory
        array; a Zarr group without ``multiscales``; a Zarr v2 (NGFF 0.4) group; a group
        opened read-only; ``array_name`` another array than level 0; ``labels`` not a group.
    chunkseg.errors.OutputExistsError
        If ``labels/classes`` exists and some node of it was not written by chunkseg (never
        replaced), or it was and ``overwrite`` is False.
    """
    import zarr

    if isinstance(image, zarr.Group):
        group, where = image, _describe_zarr(image)
        if group.store.read_only:
            raise _not_ngff(repr(where), "a Zarr group opened read-only") from None
    elif isinstance(image, str | os.PathLike):
        location = os.fspath(image)
        where = repr(_redact(location))
        if _image_suffix(location) in IMAGE_FILE_SUFFIXES:
            raise _not_ngff(where, "an image file")
        kwargs = {"storage_options": dict(storage_options)} if storage_options else {}
        try:
            group = zarr.open_group(store=location, mode="r+", **kwargs)
        except (FileNotFoundError, NotADirectoryError, ValueError, TypeError,
                zarr.errors.BaseZarrError) as err:
            raise _not_ngff(where, f"which is not a Zarr group ({type(err).__name__})") \
                from None
    else:
        raise _not_ngff(f"a {type(image).__name__}", "which has no labels/ group to write to")
    if group.metadata.zarr_format != 3:
        raise _not_ngff(where, "a Zarr v2 group (NGFF 0.4); chunkseg writes NGFF 0.5 label "
                        "images only (convert it with `chunkseg ingest`)")
    multiscale = _ngff_multiscale(group.attrs.asdict())
    if multiscale is None:
        raise _not_ngff(where, "a Zarr group without NGFF 'multiscales' metadata")
    paths = [str(d.get("path")) for d in multiscale["datasets"]]
    if array_name is not None and array_name != paths[0]:
        raise _not_ngff(where, f"with array_name={array_name!r}, which is not its full "
                        f"resolution level {paths[0]!r}: the label image must lie on the grid "
                        "of level 0. Drop `array_name`")
    labels = group.get("labels")
    if labels is None:
        return group
    if not isinstance(labels, zarr.Group):
        raise _not_ngff(where, "whose 'labels' is an array, not the NGFF labels group")
    existing = labels.get(LABEL_NAME)
    if existing is not None:
        nodes = [existing] + ([node for _, node in existing.members(max_depth=None)]
                              if isinstance(existing, zarr.Group) else [])
        foreign = [n.path for n in nodes if MARKER not in n.attrs]
        if foreign:
            raise OutputExistsError(
                f"`labels_into_source` writes labels/{LABEL_NAME} of {where}, which holds one "
                f"chunkseg did not write ({foreign[0]!r} has no {MARKER!r} attribute); "
                "chunkseg never replaces it. Rename or move that label image, or drop "
                "`labels_into_source` (CLI: --labels-into-source).")
        if not overwrite:
            raise OutputExistsError(
                f"`labels_into_source`: {where} already holds labels/{LABEL_NAME} from an "
                "earlier chunkseg run. Pass `overwrite=True` (CLI: --overwrite) to replace it, "
                "or drop `labels_into_source`.")
    return group


def write_labels_into_source(source: Any, output: Any, *, class_names: Sequence[str],
                             scale: Sequence[float], translation: Sequence[float],
                             units: Mapping[str, str | None], scheduler: Any = None,
                             progress: bool = False) -> Any:
    """Copy a complete OME-layout output's class label image into ``source``'s ``labels/``.

    Parameters
    ----------
    source : zarr.Group
        From :func:`source_labels_target` (checked).
    output : zarr.Group
        The output (``labels/classes/0`` ... ``labels/classes/<levels - 1>``, written).
    class_names, scale, translation, units
        As :func:`chunkseg._ome.write_labels_metadata` (the output's).
    scheduler, progress
        As :func:`chunkseg.scheduling.compute` (default: dask's threads): one task per stored
        chunk (shard) of each level.

    Returns
    -------
    zarr.Group
        ``source``'s ``labels/classes``: the same levels, dtype, chunks and values as the
        output's, each stamped as chunkseg's.
    """
    levels = int(output.attrs.get("levels", 1))
    arrays = [output[_ome.var_path("labels", k)] for k in range(levels)]
    labels = require_group(source, "labels")
    if LABEL_NAME in labels:  # chunkseg's own (checked): replaced
        del labels[LABEL_NAME]
    image = require_group(labels, LABEL_NAME)
    location = _describe_zarr(image)
    writes = []
    for k, src in enumerate(arrays):
        attrs = {key: v for key, v in src.attrs.asdict().items() if key != MARKER}
        dst = create_array(image, name=str(k), shape=src.shape, chunks=src.chunks,
                           dtype=src.dtype, compressor=src.compressors[0],
                           dimension_names=("y", "x"), attributes=attrs,
                           write_empty_chunks=True)
        data = da.from_zarr(src, chunks=getattr(src, "shards", None) or src.chunks)
        writes.append(da.store(data, ArrayWriter(dst, location, f"labels/{LABEL_NAME}/{k}"),
                               lock=False, compute=False))
    compute(*writes, scheduler=scheduler, progress=progress)
    _ome.write_labels_metadata(labels, LABEL_NAME, levels, class_names, scale, translation,
                               units)
    return image
