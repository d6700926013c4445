"""The arrays the model makes for the figures: each tile of a crop alone, and naive patches.

:func:`tile_components` runs the model on the tiles of a crop one by one (what
:func:`chunkseg.viz.tile_predictions` draws); :func:`naive_patches` on non-overlapping patches
laid edge to edge, and :func:`seam_arrays` compares them with the blended output (what
:func:`chunkseg.viz.seams` draws). Tiles go through the model with
:func:`chunkseg.kernels.blend.run_tiles`. numpy only: no matplotlib.
"""

from __future__ import annotations

import numpy as np

from .._check import int_pair, positive_int
from ..errors import InvalidValueError
from ..kernels import blend
from ..kernels.components import foreground_structure
from ..models.load import as_model
from ..plan import plan_tiles
from .data import _check_crop, _cls_index, _Image, _open, _open_image, _Output, crop_tiles

__all__ = ["MAX_TILE_PANELS", "tile_components", "naive_patches", "seam_arrays"]

MAX_TILE_PANELS = 64
"""Most tiles :func:`chunkseg.viz.tile_predictions` draws (one panel each)."""


# -- model resolution: the one place this module turns `model` into a predictor (only the
# callable: the figures need neither the model's defaults nor its description, which
# chunkseg.models.resolve.resolve_model would also ask for)

def _predictor(model, device: str, normalization):
    """The callable on float32 batches for ``model`` (:func:`chunkseg.as_model`)."""

    return as_model(model, device=device, normalization=normalization)


def _run_tiles(predictor, img: _Image, origins, tile: tuple[int, int], batch_size: int,
               classes: int | None = None):
    """Logits ``(K, T_y, T_x)`` float32 of each tile ``origins[i]`` (reflect padded)."""

    ty, tx = tile
    out = []
    for _, logits in blend.run_tiles(predictor, lambda y0, x0: img.tile((y0, y0 + ty),
                                                                        (x0, x0 + tx)),
                                     origins, batch_size):
        if classes is not None and logits.shape[1] != classes:
            raise InvalidValueError(
                f"`model` must be the output's model, returning its {classes} classes. Got a "
                f"model returning {logits.shape[1]}.")
        out.extend(logits)
    return out


def tile_components(store, image, model, *, crop=None, cls: int | str | None = None,
                    connectivity: int | None = None, batch_size: int = 8, device: str = "cpu",
                    normalization=None, storage_options: dict | None = None) -> list[dict]:
    """Run the model on each tile of a crop alone and label the objects of one class per tile.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output (its grid and class count).
    image
        The input it was computed from (as :func:`~chunkseg.viz.overview`).
    model
        Anything :func:`chunkseg.as_model` takes (``"isbi2012-unet"``, a callable, ...), the
        output's model.
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`~chunkseg.viz.default_crop`. Its tiles are
        :func:`~chunkseg.viz.crop_tiles` (at most :data:`MAX_TILE_PANELS`).
    cls : int or str, optional
        Class whose connected components are the objects, by index or by name (as
        :func:`chunkseg.label`); default the class of the output's ``instances``, else the
        object class (the first class whose name is not background-like; class 1 for
        unnamed classes).
    connectivity : {1, 2}, optional
        As :func:`chunkseg.label`; default the ``instances``' own (else 1).
    batch_size : int, default 8
        Tiles per model call.
    device, normalization
        As :func:`chunkseg.as_model`.
    storage_options : dict, optional

    Returns
    -------
    list of dict, row-major over the tiles
        ``tile`` ``(ky, kx)``; ``origin`` ``(y0, x0)`` (image coordinates, may be negative);
        ``pixels`` ``(C, T_y, T_x)`` the tile as the model saw it (image dtype, reflect padded
        at the image border, read with :class:`chunkseg.engine.BlockReader`); ``logits``
        ``(K, T_y, T_x)`` float32; ``labels`` ``(T_y, T_x)`` argmax; ``components``
        ``(T_y, T_x)`` int32, :func:`scipy.ndimage.label` of ``labels == cls`` (0 background);
        ``objects`` their number.

    Notes
    -----
    Memory: per tile ``(C + 2K + 2) * T_y * T_x`` numbers; reads each tile's pixels.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _tile_components(out, img, _predictor(model, device, normalization),
                            _check_crop(crop, out.plan), _cls_index(cls, out), connectivity,
                            positive_int(batch_size, "batch_size"))


def _tile_components(out: _Output, img: _Image, predictor, crop, cls: int, connectivity,
                     batch_size: int) -> list[dict]:
    from scipy import ndimage


    if connectivity is None:
        connectivity = out.connectivity()
    structure = foreground_structure(connectivity)  # checks it
    plan = out.plan
    kys, kxs = crop_tiles(plan, crop)
    if len(kys) * len(kxs) > MAX_TILE_PANELS:
        raise InvalidValueError(
            f"`crop` must hold at most {MAX_TILE_PANELS} tiles for the per-tile predictions "
            f"(one panel each). Got {crop!r}, which holds {len(kys)} x {len(kxs)}.")
    if not len(kys) or not len(kxs):
        raise InvalidValueError(
            f"`crop` must hold the centre of at least one tile's stride cell (stride "
            f"{plan.stride}). Got {crop!r}.")
    oy, ox = plan.tile_origins()
    keys = [(ky, kx) for ky in kys for kx in kxs]
    origins = [(int(oy[ky]), int(ox[kx])) for ky, kx in keys]
    logits = _run_tiles(predictor, img, origins, plan.tile, batch_size, out.classes)
    result = []
    for key, origin, z in zip(keys, origins, logits):
        labels = blend.labels_from_logits(z)
        comps, n = ndimage.label(labels == cls, structure=structure)
        ty, tx = plan.tile
        result.append({"tile": key, "origin": origin,
                       "pixels": img.tile((origin[0], origin[0] + ty), (origin[1], origin[1] + tx)),
                       "logits": z, "labels": labels, "components": comps.astype(np.int32),
                       "objects": int(n)})
    return result



def naive_patches(image, model, tile: int | tuple[int, int], crop=None, *, batch_size: int = 8,
                  device: str = "cpu", normalization=None,
                  storage_options: dict | None = None) -> np.ndarray:
    """Logits of the naive tiling: the model on patches laid edge to edge, no overlap, no blend.

    Patch ``(i, j)`` covers ``[i * T_y, (i + 1) * T_y) x [j * T_x, (j + 1) * T_x)``; the last
    ones reach past the image and are reflect-padded there (as the engine pads). Each pixel
    takes the logits of the one patch that holds it.

    Parameters
    ----------
    image
        Anything :func:`chunkseg.open_image` takes, or an array-like ``(H, W[, C])``.
    model
        Anything :func:`chunkseg.as_model` takes.
    tile : int or (int, int)
        Patch size ``(T_y, T_x)``.
    crop : ((y0, y1), (x0, x1)), optional
        Region to return; default the whole image (which must then be at most
        :data:`~chunkseg.viz.MAX_CROP_PIXELS`).
    batch_size : int, default 8
    device, normalization
        As :func:`chunkseg.as_model`.
    storage_options : dict, optional

    Returns
    -------
    (K, h, w) ndarray of float32
        The crop's logits, exactly as the model returned them for its patch.

    Notes
    -----
    Runs the model on the patches that meet the crop only. Memory: ``K`` float32 planes of the
    crop grown to whole patches.
    """

    tile_ = int_pair(tile, "tile", minimum=1)
    img = image if isinstance(image, _Image) else _Image(image, None, storage_options)

    plan = plan_tiles(img.shape, tile_, 0, img.shape)
    crop_ = _check_crop(((0, img.shape[0]), (0, img.shape[1])) if crop is None else crop, plan)
    return _naive_patches(img, _predictor(model, device, normalization), tile_, crop_,
                          positive_int(batch_size, "batch_size"))


def _naive_patches(img: _Image, predictor, tile: tuple[int, int], crop, batch_size: int,
                   classes: int | None = None) -> np.ndarray:
    (y0, y1), (x0, x1) = crop
    ty, tx = tile
    ky0, ky1 = y0 // ty, -(-y1 // ty)
    kx0, kx1 = x0 // tx, -(-x1 // tx)
    keys = [(ky, kx) for ky in range(ky0, ky1) for kx in range(kx0, kx1)]
    logits = _run_tiles(predictor, img, [(ky * ty, kx * tx) for ky, kx in keys], tile,
                        batch_size, classes)
    k = logits[0].shape[0]
    full = np.empty((k, (ky1 - ky0) * ty, (kx1 - kx0) * tx), np.float32)
    for (ky, kx), z in zip(keys, logits):
        full[:, (ky - ky0) * ty:(ky - ky0 + 1) * ty, (kx - kx0) * tx:(kx - kx0 + 1) * tx] = z
    oy, ox = ky0 * ty, kx0 * tx
    return full[:, y0 - oy:y1 - oy, x0 - ox:x1 - ox].copy()


def seam_arrays(store, image, model, *, crop=None, cls: int | str | None = None, batch_size: int = 8,
                device: str = "cpu", normalization=None,
                storage_options: dict | None = None) -> dict:
    """What :func:`~chunkseg.viz.seams` draws: naive patches vs the blended output on a crop.

    Parameters
    ----------
    store : str, os.PathLike or zarr.Group
        A :func:`chunkseg.predict_to_zarr` output; the naive patches use its tile size.
    image, model
        The input and the model the output was computed with (as :func:`tile_components`).
    crop : ((y0, y1), (x0, x1)), optional
        Default :func:`~chunkseg.viz.default_crop`.
    cls : int or str, optional
        Class whose probability is compared, by index or by name; default as
        :func:`tile_components`.
    batch_size, device, normalization, storage_options
        As :func:`tile_components`.

    Returns
    -------
    dict
        ``crop``; ``tile`` ``(T_y, T_x)``; ``cls``; ``naive_logits`` ``(K, h, w)`` float32
        (:func:`naive_patches`); ``naive_probability`` ``(h, w)`` float32 (softmax, class
        ``cls``); ``naive_labels`` ``(h, w)`` (argmax); ``labels`` ``(h, w)`` the output's;
        ``probability`` ``(h, w)`` float32 the output's blended probability of ``cls``
        (from ``probabilities``, else softmax of ``logits``; None if it holds labels only);
        ``difference`` ``(h, w)`` float32 ``|naive_probability - probability|`` (None without
        a probability); ``disagree`` ``(h, w)`` bool ``naive_labels != labels``;
        ``patch_edges`` ``(ys, xs)``: image coordinates of the naive patch borders inside the
        crop (multiples of the tile).

    Notes
    -----
    Runs the model on the naive patches meeting the crop and reads the crop of the output.
    """
    out = _open(store, storage_options)
    img = _open_image(image, out, storage_options)
    return _seam_arrays(out, img, _predictor(model, device, normalization),
                        _check_crop(crop, out.plan), _cls_index(cls, out),
                        positive_int(batch_size, "batch_size"))


def _seam_arrays(out: _Output, img: _Image, predictor, crop, cls: int, batch_size: int) -> dict:

    tile = out.plan.tile
    naive = _naive_patches(img, predictor, tile, crop, batch_size, out.classes)
    naive_p = blend.probabilities_from_logits(naive)[cls]
    naive_labels = blend.labels_from_logits(naive)
    labels = out.labels(crop)
    prob = out.probability(cls, crop)
    (y0, y1), (x0, x1) = crop
    edges = tuple(tuple(range((a // t + 1) * t, b, t)) for (a, b), t in zip(crop, tile))
    return {"crop": crop, "tile": tile, "cls": cls, "naive_logits": naive,
            "naive_probability": naive_p, "naive_labels": naive_labels, "labels": labels,
            "probability": prob,
            "difference": None if prob is None else np.abs(naive_p - prob).astype(np.float32),
            "disagree": naive_labels != labels, "patch_edges": edges}
