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
          0, 1, 2 ...          argmax class labels (y, x), level 0, 1, 2 ...
      chunkseg/done            completion manifest

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

from .errors import MissingDependencyError

__all__ = ["LAYOUT", "IMAGE_VARIABLES", "LABELS_GROUP", "image_variable", "var_path", "find",
           "ngff_unit", "write_image_metadata", "write_labels_metadata",
           "write_instances_metadata"]

LAYOUT = "ome-zarr-0.5"
"""``attrs["layout"]`` of an output written with ``ome=True``."""

IMAGE_VARIABLES = ("probabilities", "logits")
"""The variable that becomes the NGFF image: the first of these that is written."""

LABELS_GROUP = "labels/classes"
"""The NGFF label image of the argmax class labels."""

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


def _ome():
    try:
        with warnings.catch_warnings():
            # ome-zarr 0.18's writer builds a deprecated Scaler as a default argument at import
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr import format as ome_format
            from ome_zarr import writer
    except ImportError as err:
        raise MissingDependencyError(
            "`ome=True` writes its NGFF metadata with ome-zarr-py, which is not installed. "
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
    writer, fmt = _ome()
    paths = [var_path(variable, k) for k in range(levels)]
    axes = [{"name": "class", "type": "channel"}] + _space_axes(units)
    window = {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0} if variable == "probabilities" \
        else {"min": -10.0, "max": 10.0, "start": -5.0, "end": 5.0}
    channels = [{"label": str(n), "color": _hex(_PALETTE[i % len(_PALETTE)]), "window": window,
                 "active": True} for i, n in enumerate(class_names)]
    writer.write_multiscales_metadata(
        group, _datasets(paths, 1, scale, translation), fmt=fmt, axes=axes, name=variable,
        metadata={"omero": {"channels": channels, "rdefs": {"model": "color"}}})


def write_labels_metadata(group: Any, levels: int, class_names: Sequence[str],
                          scale: Sequence[float], translation: Sequence[float],
                          units: Mapping[str, str | None]) -> None:
    """Write the NGFF 0.5 ``labels`` list and the ``image-label`` of the class labels.

    Parameters
    ----------
    group : zarr.Group
        The output's root group (its ``labels/classes/<k>`` arrays exist).
    levels, class_names, scale, translation, units
        As :func:`write_image_metadata`. Label value ``i`` is class ``i``: its colour is the
        ``i``-th of tab10 and its ``properties`` hold ``{"label-value": i, "class": name}``.
    """
    writer, fmt = _ome()
    labels = group["labels"]
    image = labels["classes"]
    paths = [str(k) for k in range(levels)]
    writer.write_multiscales_metadata(
        image, _datasets(paths, 0, scale, translation), fmt=fmt, axes=_space_axes(units),
        name="classes")
    colors = [{"label-value": i, "rgba": list(_PALETTE[i % len(_PALETTE)]) + [255]}
              for i in range(len(class_names))]
    properties = [{"label-value": i, "class": str(n)} for i, n in enumerate(class_names)]
    writer.write_label_metadata(labels, "classes", colors=colors, properties=properties,
                                fmt=fmt, source={"image": "../../"})
    # NGFF 0.5 wants "version" in the labels group's "ome" too; write_label_metadata (0.18)
    # writes it in the label image only
    writer.add_metadata(labels, {"version": fmt.version}, fmt=fmt)


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
    listed = [n for n in (labels.attrs.get("ome") or {}).get("labels", []) if n != name]
    writer.add_metadata(labels, {"labels": listed, "version": fmt.version}, fmt=fmt)
    writer.write_label_metadata(labels, name, fmt=fmt, source={"image": "../../"})
