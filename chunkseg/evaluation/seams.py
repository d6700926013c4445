"""Seam report: how tiling changes a model's output, on an image that fits in memory.

:func:`seam_report` runs a model once on the whole image (the *reference*) and then through
several tilings of it, and measures, per tiling, how far its logits and argmax labels are from
the reference, overall and binned by the distance of each pixel to the nearest tile edge:

- ``naive``: non-overlapping patches of the tile size laid edge to edge from the image origin,
  each pixel from the one patch that holds it (:func:`chunkseg.predict` with ``overlap=0`` and
  the ``uniform`` window, which is exactly that);
- ``crop-only``: the overlapping tiles of the global grid (:func:`chunkseg.plan_tiles`), each
  pixel from the tile whose centre is nearest, the margins discarded ("keep the centre"
  stitching, computed here in memory; :mod:`chunkseg.kernels.windows` has no such window, since its
  windows are strictly positive);
- one entry per blending window of :data:`chunkseg.kernels.windows.WINDOWS` (``uniform``, ``linear``,
  ``gaussian``, ``cosine``): :func:`chunkseg.predict` on the same grid.

:func:`format_seam_table` prints the numbers; :func:`chunkseg.viz.plot_seam_report` draws them
and :func:`chunkseg.viz.save_seam_report` writes the figure and the JSON (``chunkseg seams``),
after :func:`seam_report_paths` checked the files to write.

This module holds the whole image and several ``(K, H, W)`` float32 logit arrays in memory by
design; :func:`seam_report` refuses images above ``max_pixels``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._check import int_pair, is_int, positive_int
from ..engine.settings import tile_and_overlap
from ..errors import InvalidTypeError, InvalidValueError
from ..io import open_image
from ..kernels.blend import labels_from_logits
from ..kernels.windows import WINDOWS
from ..models.resolve import ResolvedModel, resolve_model
from ..outputs._target import check_output_files
from ..plan import plan_tiles
from ..progress import stage
from ._seam_methods import (
    bin_labels,
    crop_only_logits,
    edge_distance,
    engine_logits,
    grid_summary,
    measure,
    reference_logits,
)

__all__ = [
    "DEFAULT_BINS",
    "MAX_PIXELS",
    "SeamReport",
    "edge_distance",
    "format_seam_table",
    "seam_report_paths",
    "seam_report",
]

#: Default bin edges of the distance to the nearest tile edge, px: 0-4, 4-8, 8-16, 16-32, 32+.
DEFAULT_BINS: tuple[float, ...] = (0, 4, 8, 16, 32)

#: Default largest image (pixels, ``H * W``) :func:`seam_report` accepts: 4096 x 4096. The
#: whole-image reference pass holds the model's activations for every pixel at once (the
#: shipped U-Net about 0.5 kB per pixel, 8 GB at this size), and the report keeps several
#: ``(K, H, W)`` float32 arrays besides.
MAX_PIXELS: int = 4096 * 4096

#: Names of the two methods that are not blending windows.
NAIVE, CROP = "naive", "crop-only"

@dataclass(frozen=True)
class SeamReport:
    """What :func:`seam_report` measured. All lengths are pixels, all pairs ``(y, x)``.

    ``methods`` maps each method's name (``"naive"``, ``"crop-only"``, then the windows) to a
    dict with keys ``description`` (str), ``window`` (the blending window's name, or None),
    ``grid`` (the tile grid it ran on: ``tile``, ``overlap``, ``stride``, ``n_tiles`` and
    ``edges_y``/``edges_x``, every tile edge of the grid, those in the padding included, as
    the image coordinate of the first pixel after the edge), ``disagreement`` (fraction of pixels whose argmax label differs from
    the reference's, float in [0, 1]), ``mean_abs_logit_diff`` (mean over pixels and classes of
    ``|logits - reference|``, logit units), ``max_abs_logit_diff``, ``seconds`` (wall time of
    the method) and ``bins``: one dict per distance bin with ``range`` (``"0-4"``... ``"32+"``),
    ``lo``, ``hi`` (None for the last, open bin), ``pixels`` (count), ``disagreement`` and
    ``mean_abs_logit_diff`` (None for an empty bin).
    """

    image_shape: tuple[int, int]
    """Image size ``(H, W)``."""
    channels: int
    """Input channels ``C_in``."""
    classes: int
    """Logits per pixel ``K``."""
    tile: tuple[int, int]
    """Tile size of every method."""
    overlap: tuple[int, int]
    """Overlap of ``crop-only`` and the blending windows (``naive`` has none)."""
    bins: tuple[float, ...]
    """Bin edges of the distance to the nearest tile edge, px; the last bin is open."""
    reference: dict
    """How the reference was computed: ``method``, ``padding`` (in words), ``margin`` (reflect
    padding on every side), ``multiple``, ``extra`` (added after, to reach the multiple),
    ``padded_shape`` (what the model got), ``seconds``."""
    methods: dict
    """Per method, its numbers (see the class docstring)."""
    model: dict
    """:func:`chunkseg.models.describe_model` of the model."""
    maps: dict = field(default_factory=dict, repr=False, compare=False)
    """Per kept method, its ``(H, W)`` float32 map of ``|logits - reference|`` averaged over
    the classes (not in :meth:`to_dict`)."""

    @property
    def bin_labels(self) -> tuple[str, ...]:
        """``("0-4", "4-8", ..., "32+")``."""
        return bin_labels(self.bins)

    def to_dict(self) -> dict:
        """JSON-serialisable form (no maps; NaN never appears: empty bins are None)."""
        return {
            "image_shape": list(self.image_shape), "channels": self.channels,
            "classes": self.classes, "tile": list(self.tile), "overlap": list(self.overlap),
            "bins": list(self.bins), "bin_labels": list(self.bin_labels),
            "distance": "px between a pixel and the nearest tile edge of the method's own grid, "
                        "edges in the padding included (0: the pixel touches the edge)",
            "reference": _jsonable(self.reference), "methods": _jsonable(self.methods),
            "model": _jsonable(self.model),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- validation -------------------------------------------------------------------------------

def _check_bins(bins) -> tuple[float, ...]:
    if bins is None:
        return DEFAULT_BINS
    fix = "Give increasing bin edges in px starting at 0, e.g. bins=(0, 4, 8, 16, 32)."
    if isinstance(bins, (str, bytes)) or not isinstance(bins, Sequence):
        raise InvalidTypeError(f"`bins` must be a sequence of numbers. Got {bins!r}. {fix}")
    try:
        edges = tuple(float(b) for b in bins)
    except (TypeError, ValueError):
        raise InvalidTypeError(f"`bins` must be a sequence of numbers. Got {bins!r}. {fix}") from None
    if (not edges or edges[0] != 0 or not all(math.isfinite(b) for b in edges)
            or any(b <= a for a, b in zip(edges[:-1], edges[1:]))):
        raise InvalidValueError(
            f"`bins` must be strictly increasing finite edges starting at 0 (every distance "
            f"falls in a bin; the last is open-ended). Got {bins!r}. {fix}")
    return tuple(int(b) if b.is_integer() else b for b in edges)


def _check_windows(windows) -> tuple[str, ...]:
    if windows is None:
        return tuple(WINDOWS)
    names = windows.split(",") if isinstance(windows, str) else windows
    if not isinstance(names, Sequence):
        raise InvalidTypeError(
            f"`windows` must be a sequence of window names or a comma-separated str. Got "
            f"{windows!r}; e.g. windows=('gaussian', 'cosine').")
    out = []
    for name in names:
        name = name.strip() if isinstance(name, str) else name
        if name not in WINDOWS:
            raise InvalidValueError(
                f"`windows` must name windows from {sorted(WINDOWS)}. Got {name!r} in "
                f"{windows!r}; drop it or fix its spelling.")
        if name not in out:
            out.append(name)
    return tuple(out)


def _check_size(shape: tuple[int, int], max_pixels: int) -> None:
    h, w = shape
    if h * w > max_pixels:
        raise InvalidValueError(
            f"`image` must have at most `max_pixels` = {max_pixels} pixels for a seam report, "
            f"which holds the whole image, a whole-image forward pass and several logit arrays "
            f"in memory by design. Got {h} x {w} = {h * w} pixels. Report on a crop (e.g. "
            f"image[:{min(h, 4096)}, :{min(w, 4096)}]) or raise `max_pixels` (CLI "
            f"--max-pixels) if the machine has the memory.")


def _model_multiple(resolved: ResolvedModel) -> int:
    """What the model states its input size must divide by (a chunkseg ``UNet``'s
    ``multiple``, ``2**depth``), else 1."""
    adapter = resolved.loaded()
    m = getattr(getattr(adapter, "module", None), "multiple", None)
    return int(m) if is_int(m) and m >= 1 else 1


def seam_report(
    image: Any,
    model: Any,
    *,
    tile: int | tuple[int, int] | None = None,
    overlap: int | tuple[int, int] | None = None,
    windows: str | Sequence[str] | None = None,
    bins: Sequence[float] | None = None,
    normalization: Any = None,
    multiple: int | tuple[int, int] | None = None,
    margin: int | tuple[int, int] | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    chunks: int | tuple[int, int] | None = None,
    max_pixels: int = MAX_PIXELS,
    maps: Sequence[str] = (NAIVE, "gaussian"),
    storage_options: dict | None = None,
    array_name: str | None = None,
    isel: dict | None = None,
    progress: bool = False,
) -> SeamReport:
    """Measure how tiling changes a model's output against its whole-image forward pass.

    The *reference* is one model call on the whole normalised image, reflect-padded by
    ``margin`` on every side (the engine's border convention: the image continues as its mirror
    image, so the reference and the tilings treat the image border alike and what differs is the
    tiling), and after its last row and column up to a multiple of ``multiple``; its logits are
    cropped back to the image. Each method's logits
    are compared with it: the fraction of pixels whose argmax label differs, and the mean
    ``|logits - reference|`` over pixels and classes, overall and binned by the distance of the
    pixel to the nearest tile edge of the grid the method ran on (:func:`edge_distance`).

    Methods, in this order:

    ``naive``
        Patches of ``tile`` laid edge to edge from the image origin (grid
        ``plan_tiles(shape, tile, 0)``; the last ones reflect-padded past the image), each
        pixel from the one patch that holds it: :func:`chunkseg.predict` with ``overlap=0``,
        ``window="uniform"``.
    ``crop-only``
        The overlapping tiles of the global grid ``plan_tiles(shape, tile, overlap)``, each
        pixel from the tile whose centre is nearest (the tile whose stride cell holds it; with
        an odd overlap, ties go to the later tile): keep the centre, discard the margins.
        Computed here, in memory, on the same reflect-padded tiles the engine cuts.
    one per name in ``windows``
        :func:`chunkseg.predict` on that grid with that blending window
        (:mod:`chunkseg.kernels.windows`).

    Parameters
    ----------
    image : array_like, str or path
        ``(H, W)`` or ``(H, W, C)``, anything :func:`chunkseg.open_image` takes. Read whole.
    model : callable, torch.nn.Module, ModelSpec or str
        Anything :func:`chunkseg.as_model` takes (``"isbi2012-unet"``, a file, a
        ``package.module:factory`` spec...). It must also accept the whole (padded) image.
    tile : int or (int, int), optional
        Tile size, px. Default: the model's (a bioimage.io package's), else 256.
    overlap : int or (int, int), optional
        Overlap of ``crop-only`` and the windows, px, ``0 <= overlap < tile``. Default: the
        model's, else 64.
    windows : str or sequence of str, optional
        Blending windows to compare (a comma-separated str or names); default all of
        :data:`chunkseg.kernels.windows.WINDOWS`.
    bins : sequence of float, optional
        Bin edges of the distance to the nearest tile edge, px, strictly increasing from 0;
        bin ``i`` is ``[bins[i], bins[i + 1])``, the last is open. Default
        :data:`DEFAULT_BINS`, ``(0, 4, 8, 16, 32)``.
    normalization : Normalization, optional
        Input normalisation, as :func:`chunkseg.predict` (default: the model's own, e.g. the
        built-in U-Net's, else none); used by every method and the reference alike.
    multiple : int or (int, int), optional
        The reference pads the image (reflect) to a multiple of this. Default: the model's
        ``multiple`` attribute where its torch module has one (``2**depth`` for ``isbi2012-unet``: 16), else 1.
    margin : int or (int, int), optional
        Reflect padding on every side of the reference's image, px (at least ``overlap // 2``,
        the context the grid gives the image border, for a like-for-like border). Default half
        the tile: a pixel of a tile never sees more context than that on both sides. ``0``
        makes the reference the plain whole image, whose border is then an edge the tilings
        do not share.
    batch_size : int, default 8
        Tiles per model call.
    device : str, default "cpu"
        Device for torch and ONNX models.
    chunks : int or (int, int), optional
        Computation chunk of :func:`chunkseg.predict` (does not change its result).
    max_pixels : int, default :data:`MAX_PIXELS` (4096 * 4096)
        Largest ``H * W`` accepted.
    maps : sequence of str, default ("naive", "gaussian")
        Methods whose ``(H, W)`` map of ``|logits - reference|`` (mean over classes) is kept in
        :attr:`SeamReport.maps` (for :func:`chunkseg.viz.plot_seam_report`); names not compared
        are ignored.
    storage_options : dict, optional
        fsspec options for a URL ``image``.
    array_name : str, optional
        Array inside a Zarr group ``image``.
    isel : dict, optional
        One plane of a stack, e.g. ``{"z": 10}`` (CLI ``--planes z=10``), passed to
        :func:`chunkseg.open_image`.
    progress : bool, default False
        Show progress on stderr (:mod:`chunkseg.progress`): ``loading the model``, the
        whole-image reference pass, then one step per compared tiling. The CLI (``chunkseg
        seams``) shows it unless ``--no-progress``.

    Returns
    -------
    SeamReport
        The numbers per method (:meth:`SeamReport.to_dict` for JSON) and the kept maps.

    Raises
    ------
    chunkseg.InvalidValueError
        If ``H * W > max_pixels`` (report on a crop, or raise ``max_pixels``), or for a bad
        ``tile``, ``overlap``, ``windows``, ``bins``, ``multiple``, ``margin``, ``batch_size`` or
        ``max_pixels``.
    chunkseg.InvalidTypeError
        For arguments of the wrong type.
    chunkseg.ModelOutputError
        If the model fails on the whole image (pass ``multiple``), or returns logits of the
        wrong shape or non-finite values.

    Notes
    -----
    Memory: the image, the reference pass's activations (on ``(H + 2 margin) x
    (W + 2 margin)`` px, rounded up to ``multiple``), and three ``(K, H, W)`` float32
    arrays at a time (reference, one method, its difference) plus one ``(H, W)`` float32 map
    per kept method. Time: the model runs on the whole image once, on the naive patches once,
    and on the grid's tiles once per window plus once for ``crop-only``.
    """

    max_pixels = positive_int(max_pixels, "max_pixels", f"The default is {MAX_PIXELS}.")
    bins_ = _check_bins(bins)
    windows_ = _check_windows(windows)
    batch_size = positive_int(batch_size, "batch_size")
    if isinstance(maps, str):
        maps = tuple(m.strip() for m in maps.split(","))
    arr = open_image(image, storage_options=storage_options, array_name=array_name, isel=isel)
    h, w, c = arr.shape
    _check_size((h, w), max_pixels)
    with stage("loading the model", progress):
        resolved = resolve_model(model, device=device, normalization=normalization)
    predictor, description = resolved.model, resolved.description
    tile, overlap = tile_and_overlap(resolved, tile, overlap)
    plan = plan_tiles((h, w, c), tile, overlap, chunks)
    naive_plan = plan_tiles((h, w, c), plan.tile, 0, plan.chunks)
    if multiple is None:
        multiple_ = (_model_multiple(resolved),) * 2
    else:
        multiple_ = int_pair(multiple, "multiple", minimum=1,
                             fix="Use 1 for a model that takes any size.")
    if margin is None:
        margin_ = (plan.tile[0] // 2, plan.tile[1] // 2)
    else:
        margin_ = int_pair(margin, "margin", minimum=0,
                           fix="Use 0 (px) for no reflect padding.")
    raw = np.asarray(arr.data.compute())  # (H, W, C), checked small above

    with stage("seams: whole-image reference pass", progress):
        ref, ref_info = reference_logits(raw, predictor, multiple_, margin_)
    k = ref.shape[0]
    ref_labels = labels_from_logits(ref)
    dist_naive, dist_grid = edge_distance(naive_plan), edge_distance(plan)
    wanted = set(maps)
    methods: dict[str, dict] = {}
    kept: dict[str, np.ndarray] = {}
    runs = [(NAIVE, None), (CROP, None)] + [(name, name) for name in windows_]
    with stage(f"seams: {len(runs)} tilings", progress, total=len(runs)) as bar:
        for name, window in runs:
            t0 = time.perf_counter()
            if name == NAIVE:
                logits = engine_logits(raw, predictor, naive_plan, "uniform", batch_size)
                used, desc = naive_plan, ("non-overlapping patches edge to edge, each pixel "
                                          "from its patch (chunkseg.predict, overlap 0, "
                                          "uniform)")
            elif name == CROP:
                logits = crop_only_logits(raw, predictor, plan, batch_size, k)
                used, desc = plan, ("overlapping grid tiles, each pixel from the tile whose "
                                    "centre is nearest, margins discarded (in memory)")
            else:
                logits = engine_logits(raw, predictor, plan, window, batch_size)
                used, desc = plan, f"chunkseg.predict, {window} window"
            seconds = time.perf_counter() - t0
            stats, diff = measure(logits, ref, ref_labels,
                                   dist_naive if name == NAIVE else dist_grid, bins_)
            methods[name] = {"description": desc, "window": window, "grid": grid_summary(used),
                             **stats, "seconds": seconds}
            if name in wanted:
                kept[name] = diff
            del logits
            bar.update()
    return SeamReport(image_shape=(h, w), channels=int(c), classes=int(k), tile=plan.tile,
                      overlap=plan.overlap, bins=bins_, reference=ref_info, methods=methods,
                      model=description, maps=kept)


# -- output -----------------------------------------------------------------------------------

def _fmt(value: float | None, scale: float = 1.0, digits: int = 4) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def format_seam_table(report: SeamReport | dict) -> str:
    """The report as a plain-text table (what ``chunkseg seams`` prints).

    Parameters
    ----------
    report : SeamReport or dict
        A :func:`seam_report` result or its :meth:`SeamReport.to_dict` (as read from JSON).

    Returns
    -------
    str
        A header (image, grid, reference), then two tables with one row per method: mean
        ``|logit - reference|`` (logit units) and label disagreement (% of pixels), each
        overall and per distance bin; then the pixels per bin of each grid. No trailing newline.
    """
    d = report.to_dict() if isinstance(report, SeamReport) else report
    labels = d["bin_labels"]
    h, w = d["image_shape"]
    ref = d["reference"]
    (ty, tx), (oy, ox) = d["tile"], d["overlap"]
    tile = f"{ty}" if ty == tx else f"{ty}x{tx}"
    ov = f"{oy}" if oy == ox else f"{oy}x{ox}"
    (my, mx), (ey, ex), (py, px) = ref["margin"], ref["extra"], ref["padded_shape"]
    mult = ref["multiple"]
    lines = [
        f"seam report: {h} x {w} px, {d['channels']} channel(s), {d['classes']} classes; "
        f"tile {tile}, overlap {ov}",
        f"reference: whole-image forward pass on {py} x {px} px: the image reflect-padded by "
        f"{my}x{mx} px on every side" + (f" and {ey}x{ex} more after, to a multiple of "
                                         f"{mult[0]}x{mult[1]}" if ey or ex else "")
        + ", logits cropped back",
        "columns: all pixels, then by distance (px) to the nearest tile edge of the method's own "
        "grid",
        "",
    ]
    name_w = max(9, *(len(n) for n in d["methods"]))
    head = f"{'method':<{name_w}}  {'grid':>7}  {'all':>8}" + "".join(f"  {b:>8}" for b in labels)
    for title, key, scale, digits in (("mean |logit - reference|", "mean_abs_logit_diff", 1.0, 4),
                                      ("label disagreement, % of pixels", "disagreement", 100.0,
                                       3)):
        lines += [title, head]
        for name, m in d["methods"].items():
            g = m["grid"]
            grid = f"{g['tile'][0]}/{g['overlap'][0]}"
            cells = "".join(f"  {_fmt(b[key], scale, digits):>8}" for b in m["bins"])
            lines.append(f"{name:<{name_w}}  {grid:>7}  {_fmt(m[key], scale, digits):>8}{cells}")
        lines.append("")
    seen = {}
    for m in d["methods"].values():
        g = m["grid"]
        seen.setdefault((g["tile"][0], g["overlap"][0]), [b["pixels"] for b in m["bins"]])
    for (t, o), counts in seen.items():
        lines.append(f"pixels per bin, grid {t}/{o}: " + ", ".join(
            f"{b} {n}" for b, n in zip(labels, counts)))
    return "\n".join(lines)


def seam_report_paths(out_dir: str | os.PathLike = ".", *,
                      json_path: str | os.PathLike | None = None,
                      overwrite: bool = False, sources: Sequence[Any] = ()) -> dict[str, Path]:
    """The files :func:`chunkseg.viz.save_seam_report` writes, checked before anything is computed
    (:func:`chunkseg.outputs._target.check_output_files`; ``sources``: the inputs, never replaced).

    Returns
    -------
    dict of str to Path
        ``{"figure": out_dir/seam_report.png, "json": json_path}`` (``json`` only with
        ``json_path``).

    Raises
    ------
    chunkseg.OutputExistsError
        If one exists and ``overwrite`` is False.
    chunkseg.OutputOverlapError
        If one is an input in ``sources``.
    """
    paths = {"figure": Path(out_dir) / "seam_report.png"}
    if json_path is not None:
        paths["json"] = Path(json_path)
    check_output_files(paths.values(), overwrite=overwrite, sources=sources)
    return paths
