"""The OME-Zarr 0.5 layout of an output: where each array goes, and its NGFF metadata.

:func:`chunkseg.predict_to_zarr` with ``ome=True`` writes one Zarr v3 group that is both an
xarray dataset and an OME-NGFF 0.5 image (https://ngff.openmicroscopy.org/0.5/)::

    out.zarr/                  NGFF image: "ome" attrs (multiscales, omero channels) + chunkseg attrs
      probabilities            level 0 (class, y, x) -- or logits, when probabilities are not written
      logits                   the other variable, full resolution only
      y, x, class              coordinates (xarray); not NGFF arrays
      1/probabilities ...      level k (halved k times)
      labels/                  NGFF labels group: "ome": {"labels": ["classes"]}
        classes/               NGFF label image: multiscales + image-label (colours, class names)
          0, 1, 2 ...          stored class labels (y, x), level 0, 1, 2 ...
      chunkseg/done            completion manifest

Two conventions for the class labels (both documented in the README, "Outputs", and docs/ome.md):

* the NGFF label image ``labels/classes`` stores **0 for "no prediction"** (a pixel no tile ran
  on: outside the ``mask``; or a chunk never written) and **class k as k + 1**, so that viewers
  (napari, which draws 0 transparent; Fiji/MoBIE; vizarr) show every class, each named and
  coloured in the ``image-label`` metadata (``properties``/``colors``, ``label-value`` k + 1);
  each level carries ``attrs["class_offset"] = 1`` (:data:`CLASS_OFFSET`);
* every chunkseg reader -- :func:`chunkseg.open_output` (its ``labels`` variable),
  :func:`chunkseg.label`, :func:`chunkseg.regions`, :func:`chunkseg.evaluate`, the figures --
  sees **class indices 0..K-1**, the values of the plain layout's ``labels`` (where nothing was
  predicted: 0, as there), through the one mapping :func:`decode_classes`
  (:func:`class_labels`, :func:`open_classes`). :func:`encode_classes` is the one writer's
  mapping.

``xarray.open_zarr(out)`` opens the full-resolution image variables with their coordinates,
``xarray.open_zarr(out, group="1")`` level 1, and :func:`chunkseg.open_output` adds the labels.
The metadata are written with ome-zarr-py (``ome_zarr.writer.write_multiscales_metadata`` and
``write_label_metadata``, format 0.5), never by hand; the level arrays are chunkseg's own
(:mod:`chunkseg.outputs._pyramid`), written before the metadata name them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import MissingDependencyError

__all__ = ["LAYOUT", "IMAGE_VARIABLES", "LABELS_GROUP", "NO_PREDICTION", "CLASS_OFFSET",
           "image_variable", "var_path", "find", "ngff_unit", "write_image_metadata",
           "write_labels_metadata", "write_instances_metadata", "write_multiscales",
           "stored_dtype", "encode_classes", "decode_classes", "class_offset", "class_labels",
           "open_classes", "label_names", "ClassLabels"]

LAYOUT = "ome-zarr-0.5"
"""``attrs["layout"]`` of an output written with ``ome=True``."""

IMAGE_VARIABLES = ("probabilities", "logits")
"""The variable that becomes the NGFF image: the first of these that is written."""

LABELS_GROUP = "labels/classes"
"""The NGFF label image of the argmax class labels."""

NO_PREDICTION = 0
"""Value of the NGFF class label image where nothing was predicted (outside the ``mask``, or a
chunk not written): the background value viewers draw transparent."""

CLASS_OFFSET = "class_offset"
"""Attribute of each level array of ``labels/classes``: the stored value of class ``k`` is
``k + attrs["class_offset"]`` (1). An array without it (written before this convention) stores
class indices, and is read as it is."""

# NGFF 0.5 spatial units (the UDUNITS-2 names the spec lists) by the spellings people use
_UNITS = {
    "angstrom": "angstrom", "nanometer": "nanometer", "nm": "nanometer",
    "micrometer": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "um": "micrometer", "µm": "micrometer", "μm": "micrometer", "millimeter": "millimeter",
    "mm": "millimeter", "centimeter": "centimeter", "cm": "centimeter", "meter": "meter",
    "m": "meter", "metre": "meter", "kilometer": "kilometer", "km": "kilometer",
    "inch": "inch", "in": "inch", "foot": "foot", "ft": "foot", "mile": "mile",
    "picometer": "picometer", "pm": "picometer",
}

# tab10, then grey: one colour per class, RGBA 0-255 (image-label "colors")
_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _ome(what: str = "`ome=True`"):
    try:
        with warnings.catch_warnings():
            # ome-zarr 0.18's writer builds a deprecated Scaler as a default argument at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr import format as ome_format
            from ome_zarr import writer
    except ImportError as err:
        raise MissingDependencyError(
            f"{what} writes its NGFF metadata with ome-zarr-py, which is not installed. "
            "Install it with `pip install 'chunkseg[ome]'` (or `pip install ome-zarr`)."
        ) from err
    return writer, ome_format.FormatV05()


def ngff_unit(unit: Any) -> str | None:
    """The NGFF 0.5 name of a spatial unit (``"um"`` -> ``"micrometer"``), or None if it has none."""
    if not isinstance(unit, str):
        return None
    return _UNITS.get(unit.strip().lower(), _UNITS.get(unit.strip()))


def image_variable(outputs: Sequence[str]) -> str | None:
    """The output variable that is the NGFF image (None when only labels are written)."""
    return next((v for v in IMAGE_VARIABLES if v in outputs), None)


def var_path(name: str, level: int = 0) -> str:
    """Path inside an OME-layout output of variable ``name`` at pyramid ``level``."""
    if name == "labels":
        return f"{LABELS_GROUP}/{level}"
    return name if level == 0 else f"{level}/{name}"


def _datasets(paths: Sequence[str], lead: int, scale: Sequence[float],
              translation: Sequence[float]) -> list[dict]:
    """NGFF datasets: level k has pixel size ``scale * 2^k`` and its first pixel's centre at
    ``translation + (2^k - 1) / 2 * scale`` (the centre of the 2^k x 2^k square it summarises)."""
    out = []
    for k, path in enumerate(paths):
        f = 2 ** k
        s = [1.0] * lead + [float(v) * f for v in scale]
        t = [0.0] * lead + [float(t0) + (f - 1) / 2 * float(v) for t0, v in zip(translation, scale)]
        transforms = [{"type": "scale", "scale": s}]
        if any(t):
            transforms.append({"type": "translation", "translation": t})
        out.append({"path": path, "coordinateTransformations": transforms})
    return out


def _space_axes(units: Mapping[str, str | None]) -> list[dict]:
    axes = []
    for name in ("y", "x"):
        axis = {"name": name, "type": "space"}
        if units.get(name):
            axis["unit"] = units[name]
        axes.append(axis)
    return axes


def _hex(rgb: Sequence[int]) -> str:
    return "".join(f"{v:02X}" for v in rgb)


def write_multiscales(group: Any, paths: Sequence[str], scale: Sequence[float],
                      translation: Sequence[float], units: Mapping[str, str | None], *,
                      name: str, channel_axis: str | None = None,
                      metadata: Mapping[str, Any] | None = None) -> None:
    """Write the NGFF 0.5 ``multiscales`` of a ``([channel,] y, x)`` pyramid, with ome-zarr-py.

    The one writer of chunkseg's ``multiscales``: the image variable of an OME-layout output,
    its class label image and an ingested image (:func:`chunkseg.ingest`).

    Parameters
    ----------
    group : zarr.Group
        The NGFF image (its arrays ``paths`` exist).
    paths : sequence of str
        The level arrays, full resolution first; level ``k`` is halved ``k`` times.
    scale, translation : (float, float)
        Pixel size and the centre of pixel (0, 0) at full resolution, ``y`` then ``x``, in
        ``units``.
    units : mapping
        NGFF unit of ``y`` and ``x`` (:func:`ngff_unit`; None or absent: no unit).
    name : str
        The multiscale's ``name``.
    channel_axis : str, optional
        Name of a leading ``"channel"`` axis (``"class"``, ``"c"``); None: ``(y, x)`` only.
    metadata : mapping, optional
        More NGFF keys of the image (``omero``).
    """
    writer, fmt = _ome()
    lead = 0 if channel_axis is None else 1
    axes = ([] if channel_axis is None else [{"name": channel_axis, "type": "channel"}]) \
        + _space_axes(units)
    writer.write_multiscales_metadata(
        group, _datasets(paths, lead, scale, translation), fmt=fmt, axes=axes, name=name,
        **({"metadata": dict(metadata)} if metadata else {}))


def write_image_metadata(group: Any, variable: str, levels: int, class_names: Sequence[str],
                         scale: Sequence[float], translation: Sequence[float],
                         units: Mapping[str, str | None]) -> None:
    """Write the NGFF 0.5 ``multiscales`` (and ``omero`` channels) of the image variable.

    Parameters
    ----------
    group : zarr.Group
        The output's root group.
    variable : {"probabilities", "logits"}
    levels : int
        Pyramid levels written, full resolution included.
    class_names : sequence of str
        One per class: the channel labels.
    scale, translation : (float, float)
        Pixel size and the centre of pixel (0, 0) at full resolution, ``y`` then ``x``.
    units : mapping
        NGFF unit of ``y`` and ``x`` (None: no unit).
    """
    window = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0} if variable == "probabilities" \
        else {"min": -10.0, "max": 10.0, "start": -5.0, "end": 5.0}
    channels = [{"label": str(n), "color": _hex(_PALETTE[i % len(_PALETTE)]), "window": window,
                 "active": True} for i, n in enumerate(class_names)]
    write_multiscales(group, [var_path(variable, k) for k in range(levels)], scale,
                      translation, units, name=variable, channel_axis="class",
                      metadata={"omero": {"channels": channels, "rdefs": {"model": "color"}}})


def label_names(class_names: Sequence[str]) -> tuple[str, ...]:
    """The name of each class label value ``0, 1, ...``: the class names; for one class
    (``K = 1``, labels ``logit > 0``), ``("not <name>", "<name>")``."""
    names = tuple(str(n) for n in class_names)
    return (f"not {names[0]}", names[0]) if len(names) == 1 else names


def write_labels_metadata(labels: Any, name: str, levels: int, class_names: Sequence[str],
                          scale: Sequence[float], translation: Sequence[float],
                          units: Mapping[str, str | None]) -> None:
    """Write the NGFF 0.5 ``multiscales`` and ``image-label`` of a class label image, and list
    it in its ``labels`` group.

    Parameters
    ----------
    labels : zarr.Group
        The NGFF ``labels`` group (of an output, or of the source image with
        ``labels_into_source``); its ``<name>/<k>`` arrays exist and hold the stored values
        (:func:`encode_classes`).
    name : str
        The label image (``"classes"``).
    levels, class_names, scale, translation, units
        As :func:`write_image_metadata`. Stored value 0 (:data:`NO_PREDICTION`) has no colour
        and no name (viewers draw it transparent); class ``k`` (value ``k + 1``) the ``k``-th
        colour of tab10 and ``properties`` ``{"label-value": k + 1, "class": name}``.
        Other labels listed in the group are kept, ``name`` listed once.
    """
    writer, fmt = _ome()
    write_multiscales(labels[name], [str(k) for k in range(levels)], scale, translation, units,
                      name=name)
    names = label_names(class_names)
    colors = [{"label-value": k + 1, "rgba": list(_PALETTE[k % len(_PALETTE)]) + [255]}
              for k in range(len(names))]
    properties = [{"label-value": k + 1, "class": n} for k, n in enumerate(names)]
    _list_label(labels, name)
    writer.write_label_metadata(labels, name, colors=colors, properties=properties,
                                fmt=fmt, source={"image": "../../"})


def _list_label(labels: Any, name: str) -> None:
    """Before ``write_label_metadata`` (which appends ``name`` to the NGFF ``labels`` group's
    ``"labels"``): the list without ``name``, the others kept, so that it is listed once; and
    NGFF 0.5's ``"version"`` (ome-zarr-py 0.18 writes it in the label image only)."""
    writer, fmt = _ome()
    listed = [n for n in (labels.attrs.get("ome") or {}).get("labels", []) if n != name]
    writer.add_metadata(labels, {"labels": listed, "version": fmt.version}, fmt=fmt)


def stored_dtype(classes: int) -> np.dtype:
    """dtype of the NGFF class label image: the smallest unsigned integer holding the stored
    values ``0..max(classes, 2)`` (class ``k`` as ``k + 1``; ``K = 1`` has labels 0 and 1)."""
    return np.min_scalar_type(max(int(classes), 2))


def encode_classes(labels: np.ndarray, covered: np.ndarray | None, classes: int) -> np.ndarray:
    """Class indices -> the NGFF label image's stored values: ``k + 1``, and
    :data:`NO_PREDICTION` (0) where nothing was predicted.

    Parameters
    ----------
    labels : (y, x) integer ndarray
        Class indices ``0..max(K, 2) - 1`` (:func:`chunkseg.kernels.blend.labels_from_logits`).
    covered : (y, x) bool ndarray or None
        True where some tile ran (the weight sum is positive); None: everywhere.
    classes : int
        ``K``.

    Returns
    -------
    (y, x) ndarray of :func:`stored_dtype` ``(K)``
    """
    out = labels.astype(stored_dtype(classes))
    out += 1
    if covered is not None:
        out[~np.asarray(covered, bool)] = NO_PREDICTION
    return out


def decode_classes(stored: np.ndarray, dtype: Any = None, offset: int = 1) -> np.ndarray:
    """The NGFF label image's stored values -> class indices: ``v - offset``, and 0 where
    ``v`` is :data:`NO_PREDICTION` (as the plain layout's ``labels``, which hold class 0 there).

    The one stored -> class mapping: every chunkseg reader of ``labels/classes`` goes through
    it (:func:`class_labels`, :func:`open_classes`).

    Parameters
    ----------
    stored : integer ndarray
    dtype : numpy dtype, optional
        Of the result; default ``stored``'s.
    offset : int, default 1
        :data:`CLASS_OFFSET` of the array (0: returned as it is, cast to ``dtype``).
    """
    stored = np.asarray(stored)
    dtype = stored.dtype if dtype is None else np.dtype(dtype)
    if not offset:
        return stored.astype(dtype, copy=False)
    out = np.zeros(stored.shape, dtype)
    np.subtract(stored, offset, out=out, where=stored > NO_PREDICTION, casting="unsafe")
    return out


def class_offset(array: Any) -> int:
    """:data:`CLASS_OFFSET` of a class label array (0 for the plain layout's ``labels``, an
    older OME output's, or any other array)."""
    return int(array.attrs.get(CLASS_OFFSET, 0) or 0)


class ClassLabels:
    """Read-only view of a stored class label image as class indices (:func:`decode_classes`).

    Sliced like the zarr array (``view[y0:y1, x0:x1]`` returns an ndarray); ``shape``,
    ``ndim``, ``chunks``, ``attrs``, ``dtype`` (that of the plain layout's ``labels``,
    :func:`chunkseg.kernels.blend.labels_dtype`) as the array's. Picklable.

    Parameters
    ----------
    array : zarr.Array
        A level of ``labels/classes`` with :data:`CLASS_OFFSET`.
    """

    def __init__(self, array: Any):
        from .kernels.blend import labels_dtype

        self.array = array
        self.offset = class_offset(array)
        classes = array.attrs.get("classes")
        self.dtype = labels_dtype(int(classes)) if classes else array.dtype

    shape = property(lambda self: tuple(self.array.shape))
    ndim = property(lambda self: self.array.ndim)
    chunks = property(lambda self: self.array.chunks)
    attrs = property(lambda self: self.array.attrs)

    def __getitem__(self, key: Any) -> np.ndarray:
        return decode_classes(np.asarray(self.array[key]), self.dtype, self.offset)

    def __dask_tokenize__(self) -> tuple:
        return ("chunkseg-class-labels", str(self.array.store_path), self.shape, self.offset)


def class_labels(array: Any) -> Any:
    """A class label array as class indices: a :class:`ClassLabels` view of an NGFF class label
    image (:data:`CLASS_OFFSET` set), else ``array`` itself (plain layout, instance ids...)."""
    return ClassLabels(array) if class_offset(array) else array


def open_classes(array: Any) -> Any:
    """A class label array as a lazy :class:`dask.array.Array` of class indices, one task per
    stored shard (or chunk): :func:`class_labels` of ``array``."""
    import dask.array as da

    chunks = getattr(array, "shards", None) or array.chunks
    if not class_offset(array):
        return da.from_zarr(array, chunks=chunks)
    view = ClassLabels(array)
    return da.from_array(view, chunks=chunks, asarray=False,
                         meta=np.empty((0,) * array.ndim, view.dtype))


def find(group: Any, name: str) -> str | None:
    """Path of output variable ``name`` (``labels``, ``probabilities``, an instances array...)
    in an output group of either layout; None where it has none."""
    import zarr

    if group.attrs.get("layout") == LAYOUT:
        candidates = [var_path("labels")] if name == "labels" else [name, f"labels/{name}/0"]
    else:
        candidates = [name]
    for path in candidates:
        if path in group and isinstance(group[path], zarr.Array):
            return path
    return None


def write_instances_metadata(group: Any, name: str, levels: int) -> None:
    """Make ``labels/<name>`` (arrays ``0`` ... ``levels - 1``) an NGFF label image of the
    OME-layout output ``group``, in the image's coordinate system, and list it in ``labels``."""
    writer, fmt = _ome()
    image = (group.attrs.get("ome") or {}).get("multiscales", [{}])[0]
    axes = [a for a in image.get("axes", []) if a.get("type") == "space"] or \
        [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    first = image.get("datasets", [{}])[0].get("coordinateTransformations", [])
    drop = len(image.get("axes", [])) - len(axes)
    scale = next((t["scale"][drop:] for t in first if t.get("type") == "scale"), [1.0, 1.0])
    shift = next((t["translation"][drop:] for t in first if t.get("type") == "translation"),
                 [0.0, 0.0])
    labels = group["labels"]  # created (and stamped) by the writer of labels/<name>
    writer.write_multiscales_metadata(
        labels[name], _datasets([str(k) for k in range(levels)], 0, scale, shift), fmt=fmt,
        axes=axes, name=name)
    _list_label(labels, name)
    writer.write_label_metadata(labels, name, fmt=fmt, source={"image": "../../"})
