"""The five figures of a finished :func:`chunkseg.predict_to_zarr` output (``chunkseg figures
OUT``).

:func:`figures` writes them as PNGs: :func:`overview`, :func:`tile_decomposition`,
:func:`tile_predictions`, :func:`reconstruction` and :func:`seams`, each also usable alone (it
returns a matplotlib :class:`~matplotlib.figure.Figure`, drawn with the Agg backend). The arrays
they draw come from :mod:`chunkseg.viz.data` (:func:`~chunkseg.viz.read_overview`, crops) and
:mod:`chunkseg.viz.model_arrays` (:func:`~chunkseg.viz.tile_components`,
:func:`~chunkseg.viz.seam_arrays`). matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .._check import is_int, positive_int
from ..errors import InvalidTypeError, InvalidValueError
from ..outputs._lifecycle import replacing
from ..outputs._target import check_output_files
from ..progress import stage
from ._draw import (
    _CROP_COLOUR,
    _PATCH_COLOUR,
    _TILE_COLOURS,
    _box,
    _chunk_borders,
    _class_rgb,
    _display,
    _figure,
    _imshow,
    _instance_rgb,
    _no_ticks,
    _ordinal,
    _outlined,
    _scaler,
    _set_view,
)
from .data import _check_crop, _cls_index, _Image, _open, _open_image, _Output, crop_tiles
from .model_arrays import _predictor, _seam_arrays, _tile_components

__all__ = [
    "FIGURES",
    "figures",
    "overview",
    "tile_decomposition",
    "tile_predictions",
    "reconstruction",
    "seams",
]

FIGURES = ("overview", "tiles", "tile_predictions", "reconstruction", "seams")
"""Names of the figures :func:`figures` writes (``<name>.png`` each), in the order written."""


# -- 1. overview ------------------------------------------------------------------------------

def overview(store, *, image=None, crop=None, max_side: int = 2048,
             storage_options: dict | None = None):
    """The whole image with the computation chunks, beside the output's objects or labels.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A finished :func:`chunkseg.predict_to_zarr` output (``labels`` and/or ``probabilities``
        / ``logits``, maybe ``instances`` from :func:`chunkseg.label`).
    image : optional
        The input it was computed from: anything :func:`chunkseg.open_image` takes, or an
        array-like with ``shape`` ``(H, W[, C])`` and step slicing (h5py, ...). Without it only
        the output is drawn.
    crop : ((y0, y1), (x0, x1)), optional
        The region the other figures show, drawn as a yellow box (default
        :func:`~chunkseg.viz.default_crop`).
    max_side : int, default 2048
        Longer side of the overviews, pixels.
    storage_options : dict, optional
        fsspec options for a URL ``store`` or ``image``.

    Returns
    -------
    matplotlib.figure.Figure
        One or two panels: the image (grey, or RGB for 3-4 channels) and the ``instances``
        (ids in pseudo-random colours) or the argmax ``labels`` (class colours), both every
        ``step``-th pixel (``step = ceil(max(H, W) / max_side)``), with the chunk borders (red)
        and the crop (yellow).

    Notes
    -----
    Reads every ``step``-th pixel of the image and of ``instances`` (or ``labels``), one block
    (about one chunk) at a time with strided reads (:func:`~chunkseg.viz.read_overview`): never the
    full-resolution array in one piece. Memory: two overviews of at most ``max_side^2``
    pixels (RGB float32 for display) plus one block.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _overview(out, img, _check_crop(crop, out.plan), max_side)


def _overview(out: _Output, img: _Image | None, crop, max_side: int):
    max_side = positive_int(max_side, "max_side")
    plan = out.plan
    h, w = plan.image_shape
    full = ((0, h), (0, w))
    kind, seg, step = out.segmentation_overview(int(max_side))
    panels = []
    if img is not None:
        pixels, _ = img.overview(int(max_side))
        panels.append((_display(pixels), f"input {h} x {w}"))
    if kind == "instances":
        n = int(out.instances.attrs.get("objects", 0))
        panels.append((_instance_rgb(seg),
                       f"instances of class {out.default_cls()}: {n} objects (own colours)"))
    else:
        panels.append((_class_rgb(seg), f"labels (argmax of {out.classes} classes)"))
    aspect = h / w
    width = 6.5 * len(panels)
    fig = _figure((width, min(12.0, 6.5 * aspect + 1.0)))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (rgb, title) in zip(axes, panels):
        _imshow(ax, rgb, (0, 0), step)
        _set_view(ax, full)
        _chunk_borders(ax, plan, full, ls="-", lw=1.0)
        _box(ax, crop, fill=False, ec=_CROP_COLOUR, lw=2.0)
        ax.set_title(title, fontsize=11)
        _no_ticks(ax)
    sampled = "full resolution" if step == 1 else f"every {_ordinal(step)} pixel"
    fig.suptitle(f"{out.where}: {plan.n_chunks} chunks of {plan.chunks[0]} x {plan.chunks[1]} "
                 f"(red), the crop of the other figures (yellow); {sampled}", fontsize=11)
    return fig


# -- 2. tile decomposition --------------------------------------------------------------------

def tile_decomposition(store, *, image=None, crop=None, storage_options: dict | None = None):
    """The overlapping tiles of the global grid over a crop, each in its own colour.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output; the grid is
        ``plan_tiles(shape, tile, overlap, chunks)`` of its attrs
        (:func:`~chunkseg.viz.output_plan`).
    image : optional
        As :func:`overview`; the background (else the output's labels).
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`~chunkseg.viz.default_crop`: about 3 x 3 tiles around a chunk corner.
    storage_options : dict, optional

    Returns
    -------
    matplotlib.figure.Figure
        The crop with every tile that reaches into it: its extent outlined and its stride cell
        (the part of the image it is centred on, ``[k * stride, (k + 1) * stride)``) shaded in
        the tile's colour, labelled ``ky,kx``; chunk borders dashed red.

    Notes
    -----
    Reads the crop of the image (or of ``labels``) at full resolution, nothing else.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _tile_decomposition(out, img, _check_crop(crop, out.plan))


def _tile_decomposition(out: _Output, img: _Image | None, crop):
    from matplotlib.patches import Rectangle

    plan = out.plan
    (y0, y1), (x0, x1) = crop
    if img is not None:
        base = _display(img.crop(crop))
    else:
        base = _class_rgb(out.labels(crop), np.full((y1 - y0, x1 - x0, 3), 0.5, np.float32))
    fig = _figure((8.5, 8.5 * (y1 - y0) / (x1 - x0) + 0.9))
    ax = fig.subplots()
    _imshow(ax, 0.35 + 0.65 * base, (y0, x0))
    (ty, tx), (sy, sx) = plan.tile, plan.stride
    oy, ox = plan.tile_origins()
    kys = [k for k in range(len(oy)) if oy[k] < y1 and oy[k] + ty > y0]
    kxs = [k for k in range(len(ox)) if ox[k] < x1 and ox[k] + tx > x0]
    small = min(sy, sx) < 0.06 * max(y1 - y0, x1 - x0)
    inner_y, inner_x = crop_tiles(plan, crop)
    for ky in kys:
        for kx in kxs:
            colour = _TILE_COLOURS[(ky % 3) * 3 + kx % 3]
            inner = ky in inner_y and kx in inner_x  # the crop's own tiles: bold outlines
            ax.add_patch(Rectangle((kx * sx - 0.5, ky * sy - 0.5), sx, sy, fc=colour,
                                   alpha=0.28, ec="none"))
            ax.add_patch(Rectangle((ox[kx] - 0.5 + 0.7, oy[ky] - 0.5 + 0.7), tx - 1.4,
                                   ty - 1.4, fill=False, ec=colour, lw=2.4 if inner else 1.0,
                                   alpha=1.0 if inner else 0.6))
            if not small:
                cy, cx = ky * sy + sy / 2 - 0.5, kx * sx + sx / 2 - 0.5
                if y0 <= cy < y1 and x0 <= cx < x1:
                    ax.text(cx, cy, f"{ky},{kx}", ha="center", va="center", color="white",
                            fontsize=10, **_outlined())
    _chunk_borders(ax, plan, crop, lw=2.2)
    _set_view(ax, crop)
    ax.set_title(
        f"global tile grid on y {y0}..{y1}, x {x0}..{x1}: tile {ty} x {tx}, overlap "
        f"{plan.overlap[0]} x {plan.overlap[1]}, stride {sy} x {sx}\n"
        f"outline: a tile's extent (what the model sees); shaded: its stride cell; "
        f"red dashed: chunk borders", fontsize=10)
    return fig


# -- 3. per-tile predictions ------------------------------------------------------------------

def tile_predictions(store, image, model, *, crop=None, cls: int | str | None = None,
                     connectivity: int | None = None, batch_size: int = 8, device: str = "cpu",
                     normalization=None, storage_options: dict | None = None):
    """Each tile of a crop predicted alone: its objects in their own colours, one panel a tile.

    Parameters are those of :func:`~chunkseg.viz.tile_components`.

    Returns
    -------
    matplotlib.figure.Figure
        A grid of panels laid out like the tiles (row ``ky``, column ``kx``): the tile's pixels
        (grey) with the connected components of class ``cls`` of its own argmax, in colours
        drawn at random per tile (the same object gets a different colour in each tile, and
        is cut at the tile's edge); axes in image coordinates; the stride cell dashed white,
        the image border (beyond it: reflect padding) dotted yellow.

    Notes
    -----
    Runs the model on the crop's tiles (:func:`~chunkseg.viz.crop_tiles`, 9 for the default
    crop), nothing else; memory as :func:`~chunkseg.viz.tile_components`.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    crop_ = _check_crop(crop, out.plan)
    cls_ = _cls_index(cls, out)
    comps = _tile_components(out, img, _predictor(model, device, normalization), crop_, cls_,
                             connectivity, positive_int(batch_size, "batch_size"))
    return _tile_predictions(out, comps, crop_, cls_)


def _tile_predictions(out: _Output, comps: list[dict], crop, cls: int):
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator

    plan = out.plan
    rows = sorted({c["tile"][0] for c in comps})
    cols = sorted({c["tile"][1] for c in comps})
    (ty, tx), (sy, sx) = plan.tile, plan.stride
    h, w = plan.image_shape
    panel = 3.2
    fig = _figure((panel * len(cols) * tx / max(ty, tx) + 0.4,
                   panel * len(rows) * ty / max(ty, tx) + 1.0))
    # tiles of one row (column) share their y (x) extent: tick labels on the outer panels only
    axes = fig.subplots(len(rows), len(cols), squeeze=False, sharex="col", sharey="row")
    scale = _scaler(np.stack([c["pixels"] for c in comps]).transpose(0, 2, 3, 1))
    for c in comps:
        ky, kx = c["tile"]
        ax = axes[rows.index(ky)][cols.index(kx)]
        y0, x0 = c["origin"]
        base = 0.15 + 0.55 * _display(c["pixels"].transpose(1, 2, 0), scale)
        rgb = _instance_rgb(c["components"], base, alpha=0.85, salt=ky * 100_003 + kx)
        _imshow(ax, rgb, (y0, x0))
        ax.add_patch(Rectangle((kx * sx - 0.5, ky * sy - 0.5), sx, sy, fill=False, ec="white",
                               lw=1.2, ls="--"))
        if y0 < 0 or x0 < 0 or y0 + ty > h or x0 + tx > w:
            ax.add_patch(Rectangle((-0.5, -0.5), w, h, fill=False, ec=_CROP_COLOUR, lw=1.5,
                                   ls=":"))
        _set_view(ax, ((y0, y0 + ty), (x0, x0 + tx)))
        ax.set_title(f"tile {ky},{kx} at y {y0}, x {x0}: {c['objects']} objects", fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=8)
        ax.label_outer()
    fig.suptitle(
        f"each tile predicted alone (tile {ty} x {tx}, argmax; components of class {cls} in "
        f"random colours per tile)\nwhite dashed: the tile's stride cell; the tiles overlap by "
        f"{plan.overlap[0]} x {plan.overlap[1]} px and disagree near their edges", fontsize=10)
    return fig


# -- 4. reconstruction ------------------------------------------------------------------------

def reconstruction(store, *, image=None, crop=None, storage_options: dict | None = None):
    """The final result on a crop: the written instances (else labels) over the image.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A finished :func:`chunkseg.predict_to_zarr` output; its ``instances`` are shown if
        :func:`chunkseg.label` wrote them, else its argmax labels.
    image : optional
        As :func:`overview`; the background.
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`~chunkseg.viz.default_crop`.
    storage_options : dict, optional

    Returns
    -------
    matplotlib.figure.Figure
        Two panels on the crop: the objects over the image (or class colours over it), and the
        objects alone; each global id in one colour (the same colour in every figure), chunk
        borders dashed red: an object crossing them keeps its id.

    Notes
    -----
    Reads the crop of ``instances`` (or ``labels``) and of the image at full resolution.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _reconstruction(out, img, _check_crop(crop, out.plan))


def _reconstruction(out: _Output, img: _Image | None, crop):
    plan = out.plan
    (y0, y1), (x0, x1) = crop
    base = _display(img.crop(crop)) if img is not None else None
    if out.instances is not None:
        ids = np.asarray(out.instances[y0:y1, x0:x1])
        n_crop = int(np.unique(ids[ids > 0]).size)
        over = _instance_rgb(ids, None if base is None else 0.15 + 0.6 * base, alpha=0.85)
        alone = _instance_rgb(ids)
        what = (f"instances of class {out.default_cls()}: {n_crop} objects in the crop, "
                f"{int(out.instances.attrs.get('objects', 0))} in all")
    else:
        labels = out.labels(crop)
        over = _class_rgb(labels, base) if base is not None else _class_rgb(labels)
        alone = _class_rgb(labels)
        what = f"labels (argmax of {out.classes} classes; run chunkseg.instances for objects)"
    fig = _figure((13.0, 6.5 * (y1 - y0) / (x1 - x0) + 1.2))
    axes = fig.subplots(1, 2)
    for ax, rgb, title in ((axes[0], over, "over the image" if base is not None else ""),
                           (axes[1], alone, "alone")):
        _imshow(ax, rgb, (y0, x0))
        _chunk_borders(ax, plan, crop, lw=1.8)
        _set_view(ax, crop)
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"final result on y {y0}..{y1}, x {x0}..{x1}: {what}\nred dashed: chunk "
                 "borders (objects cross them with one id)", fontsize=11)
    return fig


def seams(store, image, model, *, crop=None, cls: int | str | None = None, batch_size: int = 8,
          device: str = "cpu", normalization=None, storage_options: dict | None = None):
    """Naive non-overlapping patches vs the blended output, with the patch borders marked.

    Parameters are those of :func:`~chunkseg.viz.seam_arrays`.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels on the crop: the argmax of the naive patches (tile ``T``, stride ``T``,
        no blending), the output's labels (the same tile, overlapping and blended), and
        ``|p_naive - p_blended|`` of class ``cls`` (or, for an output with labels only, where
        the labels disagree); the naive patch borders dashed cyan on all three.

    Notes
    -----
    As :func:`~chunkseg.viz.seam_arrays`.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    arrays = _seam_arrays(out, img, _predictor(model, device, normalization),
                          _check_crop(crop, out.plan), _cls_index(cls, out),
                          positive_int(batch_size, "batch_size"))
    return _seams(out, arrays)


def _seams(out: _Output, a: dict):
    plan = out.plan
    crop = a["crop"]
    (y0, y1), (x0, x1) = crop
    fig = _figure((19.0, 6.2 * (y1 - y0) / (x1 - x0) + 1.3))
    axes = fig.subplots(1, 3)
    _imshow(axes[0], _class_rgb(a["naive_labels"]), (y0, x0))
    axes[0].set_title(f"naive: patches {plan.tile[0]} x {plan.tile[1]} edge to edge, "
                      "argmax", fontsize=10)
    _imshow(axes[1], _class_rgb(a["labels"]), (y0, x0))
    axes[1].set_title(f"chunkseg: overlap {plan.overlap[0]}, {out.attrs.get('window', '?')} "
                      "blending, argmax", fontsize=10)
    if a["difference"] is not None:
        diff = a["difference"]  # NaN where a mask kept the model off
        top = float(np.nanmax(diff)) if np.isfinite(diff).any() else 0.0
        im = _imshow(axes[2], diff, (y0, x0), cmap="magma", vmin=0, vmax=max(top, 1e-6))
        fig.colorbar(im, ax=axes[2], shrink=0.8)
        axes[2].set_title(f"|p naive - p blended| of class {a['cls']} (max {top:.3f})",
                          fontsize=10)
    else:
        _imshow(axes[2], a["disagree"].astype(np.float32), (y0, x0), cmap="magma", vmin=0,
                vmax=1)
        axes[2].set_title(f"labels disagree ({int(a['disagree'].sum())} px)", fontsize=10)
    ys, xs = a["patch_edges"]
    for ax in axes:
        for e in ys:
            ax.plot([x0 - 0.5, x1 - 0.5], [e - 0.5, e - 0.5], color=_PATCH_COLOUR, lw=1.0,
                    ls="--")
        for e in xs:
            ax.plot([e - 0.5, e - 0.5], [y0 - 0.5, y1 - 0.5], color=_PATCH_COLOUR, lw=1.0,
                    ls="--")
        _set_view(ax, crop)
    fig.suptitle(f"seams on y {y0}..{y1}, x {x0}..{x1}: naive patch borders dashed cyan "
                 f"(class colours: 0 dark, 1 light)", fontsize=11)
    return fig


# -- all of them ------------------------------------------------------------------------------

def figures(store, out_dir: str | os.PathLike, *, image=None, model=None, crop=None,
            cls: int | str | None = None, max_side: int = 2048, batch_size: int = 8,
            device: str = "cpu", normalization=None, storage_options: dict | None = None,
            dpi: int = 110, overwrite: bool = False, progress: bool = False) -> dict[str, Path]:
    """Write the figures of a finished output as PNG files (``chunkseg figures OUT``).

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A finished :func:`chunkseg.predict_to_zarr` output: a Zarr v3 group with ``labels``
        ``(y, x)`` and/or ``probabilities`` / ``logits`` ``(class, y, x)``, the attrs ``tile``,
        ``overlap``, ``chunks``, ``window``, ``classes``; maybe ``instances`` ``(y, x)`` uint32
        (:func:`chunkseg.label`).
    out_dir : str or os.PathLike
        Folder for the PNGs (created if missing).
    image : optional
        The input the output was computed from: anything :func:`chunkseg.open_image` takes (or
        an array-like with step slicing). Needed by the tile predictions and the seams, drawn
        under the others.
    model : optional
        Anything :func:`chunkseg.as_model` takes: the output's model. With ``image``, the tile
        predictions and the seams are drawn too. It is never taken from the output's attrs
        (they are data, not code to import).
    crop : ((y0, y1), (x0, x1)), optional
        Full-resolution region of figures 2-5 (at most :data:`~chunkseg.viz.MAX_CROP_PIXELS`);
        default :func:`~chunkseg.viz.default_crop`: about 3 x 3 tiles around a chunk corner.
    cls : int or str, optional
        Class of the objects, by index or by name (as :func:`chunkseg.label`); default the
        class of ``instances``, else the object class (the first class whose name is not
        background-like; class 1 for unnamed classes).
    max_side : int, default 2048
        Longer side of the overview, pixels.
    batch_size : int, default 8
        Tiles per model call.
    device, normalization
        As :func:`chunkseg.as_model`.
    storage_options : dict, optional
        fsspec options for a URL ``store`` or ``image``.
    dpi : int, default 110
        Resolution of the PNGs.
    overwrite : bool, default False
        Replace PNGs of an earlier call.
    progress : bool, default False
        Show progress on stderr (:mod:`chunkseg.progress`): ``loading the model`` (with
        ``model``), then ``drawing N figures``, one step per figure. The CLI shows it unless
        ``--no-progress``.

    Returns
    -------
    dict of str to Path
        The files written, keyed by figure: ``overview`` (``overview.png``, :func:`overview`),
        ``tiles`` (``tiles.png``, :func:`tile_decomposition`), ``reconstruction``
        (``reconstruction.png``, :func:`reconstruction`) always; ``tile_predictions``
        (``tile_predictions.png``, :func:`tile_predictions`) and ``seams`` (``seams.png``,
        :func:`seams`) with ``model`` and ``image``. In the order of :data:`FIGURES`.

    Raises
    ------
    chunkseg.errors.OutputExistsError
        If one of the PNGs to write exists and ``overwrite`` is False (checked before any is
        written).
    chunkseg.errors.InvalidValueError
        For a bad argument (``model`` without ``image``, a crop outside the image, an image
        of another shape, a class the output lacks, ...).
    chunkseg.errors.InvalidTypeError
        If ``max_side`` is not an int or ``out_dir`` not a path.
    chunkseg.errors.NotFoundError
        If ``store`` holds no Zarr group.

    Notes
    -----
    Reads every ``step``-th pixel of the image and the output for the overview, block by block
    (:func:`~chunkseg.viz.read_overview`), and the crop at full resolution; runs the model on the
    crop's tiles (9 by default) and on the naive patches that meet it. Memory: the overview (at most
    ``max_side^2`` pixels) and a few full-resolution planes of the crop.
    """

    if not isinstance(out_dir, str | os.PathLike):
        raise InvalidTypeError(f"`out_dir` must be a folder path. Got {type(out_dir).__name__}.")
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InvalidValueError(f"`out_dir` must be a folder. Got {str(folder)!r}, a file.")
    if model is not None and image is None:
        raise InvalidValueError(
            "`image` must be given with `model` (the tile predictions and the seams run the "
            "model on the image). Got image=None.")
    if not is_int(dpi) or not 10 <= dpi <= 600:
        raise InvalidValueError(f"`dpi` must be an int from 10 to 600. Got {dpi!r}.")
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    crop_ = _check_crop(crop, out.plan)
    cls_ = _cls_index(cls, out)
    bs = positive_int(batch_size, "batch_size")
    names = [n for n in FIGURES if model is not None or n not in ("tile_predictions", "seams")]
    paths = {n: folder / f"{n}.png" for n in names}
    # never over an input, under any name (the image, the output store)
    check_output_files(paths.values(), overwrite=overwrite, sources=(store, image))
    predictor = None
    if model is not None:
        with stage("loading the model", progress):
            predictor = _predictor(model, device, normalization)
    makers = {
        "overview": lambda: _overview(out, img, crop_, max_side),
        "tiles": lambda: _tile_decomposition(out, img, crop_),
        "tile_predictions": lambda: _tile_predictions(
            out, _tile_components(out, img, predictor, crop_, cls_, None, bs), crop_, cls_),
        "reconstruction": lambda: _reconstruction(out, img, crop_),
        "seams": lambda: _seams(out, _seam_arrays(out, img, predictor, crop_, cls_, bs)),
    }
    max_side = positive_int(max_side, "max_side")
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    with stage(f"drawing {len(names)} figures", progress, total=len(names)) as bar:
        for name in names:
            fig = makers[name]()
            with replacing(paths[name]) as part:  # an earlier figure stays until it is whole
                fig.savefig(part, dpi=int(dpi))
            written[name] = paths[name]
            bar.update()
    return written
