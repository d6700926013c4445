"""Training losses by name: cross-entropy, Dice, Focal, the U-Net weight-map loss and weighted
sums of them.

Cross-entropy is :class:`torch.nn.CrossEntropyLoss`; Dice and Focal are
segmentation-models-pytorch's ``DiceLoss`` and ``FocalLoss`` in ``"multiclass"`` mode (Milletari
et al. 2016, V-Net; Lin et al. 2017, *Focal loss for dense object detection*). ``unet_weighted``
is the pixel-wise weighted cross-entropy of the U-Net paper (Ronneberger et al. 2015, eq. 1-2):
torch's cross-entropy weighted by :func:`unet_weight_map`, whose distances are scipy's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import InvalidTypeError, InvalidValueError, MissingDependencyError

__all__ = ["LOSSES", "UNetWeightedLoss", "WeightedLoss", "build_loss", "unet_weight_map"]

LOSSES = ("ce", "dice", "focal", "unet_weighted")
"""Names :func:`build_loss` knows."""


def _term(name: str, ignore_index: int, options: Mapping[str, Any], object_class: int | None):
    import torch

    if name == "unet_weighted":
        return _unet_weighted(options, ignore_index, object_class)
    if name == "ce":
        return torch.nn.CrossEntropyLoss(ignore_index=ignore_index, **options)
    try:
        from segmentation_models_pytorch import losses
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"the {name!r} loss is segmentation-models-pytorch's ({err}); install it with "
            '`pip install "chunkseg[train]"`, or use the "ce" loss.') from None
    if name == "dice":
        return losses.DiceLoss("multiclass", ignore_index=ignore_index, **options)
    return losses.FocalLoss("multiclass", ignore_index=ignore_index, **options)


def unet_weight_map(target: np.ndarray, *, object_class: int, classes: int, w0: float = 10.0,
                    sigma: float = 5.0, balance: bool = True, ignore_index: int = -100
                    ) -> np.ndarray:
    """The U-Net paper's pixel weights ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``.

    Ronneberger, Fischer & Brox 2015, *U-Net: convolutional networks for biomedical image
    segmentation*, eq. 2. The cells are the 4-connected components
    (:func:`scipy.ndimage.label`) of ``target == object_class`` in each patch; ``d1`` and
    ``d2`` are the Euclidean distances, pixels, to the nearest and the second-nearest cell
    (0 inside a cell for its own cell), so the boundary term is 0 where a patch holds fewer
    than two cells.

    Parameters
    ----------
    target : (N, H, W) or (H, W) int array
        Class indices, ``ignore_index`` where no class counts.
    object_class : int
        The class whose components are the cells.
    classes : int
        ``K``, the number of classes (for ``w_c``).
    w0 : float, default 10
    sigma : float, default 5
        Pixels.
    balance : bool, default True
        ``w_c(x)``: the inverse frequency of the class of ``x`` among the counted pixels of the
        whole ``target`` (the batch), scaled so that it averages 1 over them:
        ``n / (k * n_c)`` for ``k`` classes present; False: ``w_c = 1``.
    ignore_index : int, default -100
        Its pixels get weight 0 (and are not cells).

    Returns
    -------
    float32 array, the shape of ``target``

    Notes
    -----
    One Euclidean distance transform (:func:`scipy.ndimage.distance_transform_edt`) per cell,
    on the cell's bounding box grown by ``D = sigma * sqrt(2 ln 1e6)`` (about ``5.3 sigma``):
    ``d1`` and ``d2`` are exact wherever ``d1 + d2 <= D``; elsewhere the boundary term is below
    ``w0 * 1e-6`` both in the exact map and here (it is 0 here).
    """
    from scipy import ndimage

    target = np.asarray(target)
    flat = target.reshape((-1, *target.shape[-2:]))
    valid = flat != ignore_index
    weights = np.ones(flat.shape, np.float32)
    if balance:
        counts = np.bincount(flat[valid].ravel().astype(np.int64), minlength=classes)
        present = np.count_nonzero(counts)
        wc = np.where(counts > 0, valid.sum() / (max(present, 1) * np.maximum(counts, 1)), 0.0)
        weights = wc.astype(np.float32)[np.where(valid, flat, 0)]
    reach = sigma * math.sqrt(2 * math.log(1e6))
    margin = int(math.ceil(reach))
    structure = ndimage.generate_binary_structure(2, 1)
    for n, patch in enumerate(flat):
        cells, count = ndimage.label(patch == object_class, structure=structure)
        if count < 2:
            continue
        h, w = patch.shape
        d1 = np.full(patch.shape, np.inf)
        d2 = np.full(patch.shape, np.inf)
        for i, box in enumerate(ndimage.find_objects(cells), start=1):
            ys = slice(max(box[0].start - margin, 0), min(box[0].stop + margin, h))
            xs = slice(max(box[1].start - margin, 0), min(box[1].stop + margin, w))
            d = ndimage.distance_transform_edt(cells[ys, xs] != i)
            a, b = d1[ys, xs], d2[ys, xs]
            b[...] = np.minimum(b, np.maximum(a, d))
            a[...] = np.minimum(a, d)
        term = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        weights[n] += np.where(d1 + d2 <= reach, term, 0.0).astype(np.float32)
    weights[~valid] = 0
    return weights.reshape(target.shape)


class UNetWeightedLoss:
    """Cross-entropy weighted per pixel by :func:`unet_weight_map` (U-Net, eq. 1-2).

    ``sum_x w(x) * CE(x) / n``, ``n`` the pixels not ``ignore_index`` (a mean over the counted
    pixels, as :class:`torch.nn.CrossEntropyLoss`, so its scale is that of plain
    cross-entropy when every weight is 1). The weights are computed on the CPU from the target
    of each batch.
    """

    def __init__(self, *, object_class: int, w0: float = 10.0, sigma: float = 5.0,
                 balance: bool = True, ignore_index: int = -100):
        self.object_class = object_class
        self.w0, self.sigma, self.balance = float(w0), float(sigma), bool(balance)
        self.ignore_index = ignore_index

    def __call__(self, logits, target):
        import torch

        weights = unet_weight_map(target.detach().cpu().numpy(), object_class=self.object_class,
                                  classes=logits.shape[1], w0=self.w0, sigma=self.sigma,
                                  balance=self.balance, ignore_index=self.ignore_index)
        weights = torch.from_numpy(weights).to(logits.device)
        ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=self.ignore_index,
                                               reduction="none")
        counted = (target != self.ignore_index).sum().clamp(min=1)
        return (ce * weights).sum() / counted


def _unet_weighted(options: Mapping[str, Any], ignore_index: int, object_class: int | None
                   ) -> UNetWeightedLoss:
    """The ``unet_weighted`` term from its options (``w0``, ``sigma``, ``balance``,
    ``object_class``), each checked."""
    options = dict(options)
    unknown = sorted(set(options) - {"w0", "sigma", "balance", "object_class"})
    if unknown:
        raise InvalidValueError(
            f"`loss` 'unet_weighted' takes the options w0, sigma, balance and object_class. "
            f"Got {unknown}.")
    for key, low in (("w0", 0.0), ("sigma", 0.0)):
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not (value > low if key == "sigma" else value >= low)):
            raise InvalidValueError(
                f"`loss` 'unet_weighted' option {key} must be a number "
                f"{'> 0' if key == 'sigma' else '>= 0'} (pixels for sigma). Got {value!r}; "
                f"the paper's are w0 = 10, sigma = 5.")
    balance = options.get("balance", True)
    if not isinstance(balance, bool):
        raise InvalidTypeError(
            f"`loss` 'unet_weighted' option balance must be true or false. Got {balance!r}.")
    cls = options.get("object_class", object_class)
    if cls is None:
        raise InvalidValueError(
            "`loss` 'unet_weighted' needs the class whose components are the cells. Got none "
            "(no class name is the objects'); set `object_class` in the config, or in the "
            "term: {name = \"unet_weighted\", object_class = 1}.")
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or cls < 0:
        raise InvalidValueError(
            f"`loss` 'unet_weighted' option object_class must be a class index >= 0. Got "
            f"{cls!r}; leave it out for the run's object class.")
    return UNetWeightedLoss(object_class=int(cls), w0=options.get("w0", 10.0),
                            sigma=options.get("sigma", 5.0), balance=balance,
                            ignore_index=ignore_index)


class WeightedLoss:
    """``sum_i weight_i * loss_i(logits, target)``.

    Parameters
    ----------
    terms : sequence of (str, float, callable)
        Name, weight and loss of each term.

    Notes
    -----
    ``last`` holds the value of each term at the last call (floats), for the metrics log.
    """

    def __init__(self, terms: Sequence[tuple[str, float, Any]]):
        self.terms = list(terms)
        self.last: dict[str, float] = {}

    def __call__(self, logits, target):
        total = 0.0
        for name, weight, loss in self.terms:
            value = loss(logits, target)
            self.last[name] = float(value.detach())
            total = total + weight * value
        return total

    def to(self, device) -> WeightedLoss:
        """Move the terms that hold tensors (torch modules) to ``device``; returns self."""
        for _, _, loss in self.terms:
            if hasattr(loss, "to"):
                loss.to(device)
        return self

    def __repr__(self) -> str:
        return " + ".join(f"{w:g} * {n}" for n, w, _ in self.terms)


def build_loss(terms: Sequence[Mapping[str, Any]] | str, *, ignore_index: int = -100,
               object_class: int | None = None) -> WeightedLoss:
    """A loss, or a weighted sum of losses, by name.

    Parameters
    ----------
    terms : str or sequence of mapping
        ``"ce"``, ``"dice"``, ``"focal"``, ``"ce+dice"``, or a list such as
        ``[{"name": "ce", "weight": 1.0}, {"name": "focal", "weight": 0.5, "gamma": 2.0}]``
        (keys other than ``name`` and ``weight`` are options of that loss's class;
        ``unet_weighted``'s are ``w0`` (10), ``sigma`` (5 px), ``balance`` (true) and
        ``object_class``, see :func:`unet_weight_map`).
    ignore_index : int, default -100
        Target value that no term counts (torch's default for cross-entropy).
    object_class : int, optional
        The class whose components are the cells of ``unet_weighted`` when its options do not
        name one (:func:`chunkseg.training.train.train` passes the run's ``object_class``);
        needed then.

    Returns
    -------
    WeightedLoss
        Called as ``loss(logits (N, K, H, W) float, target (N, H, W) int64)`` -> scalar tensor.

    Raises
    ------
    TypeError
        If ``terms`` is not a str or a sequence of mappings.
    ValueError
        For an unknown loss name, an empty list or a negative weight.
    chunkseg.errors.MissingDependencyError
        For Dice or Focal without segmentation-models-pytorch.
    """
    if isinstance(terms, str):
        terms = [{"name": n.strip()} for n in terms.split("+")]
    if not isinstance(terms, Sequence) or not all(isinstance(t, Mapping) for t in terms):
        raise InvalidTypeError(
            f"`loss` must be a name such as 'ce+dice' or a list of {{name, weight, ...}} "
            f"tables. Got {terms!r}.")
    if not terms:
        raise InvalidValueError("`loss` must have at least one term. Got []; use e.g. 'ce'.")
    built = []
    for term in terms:
        options = dict(term)
        name = options.pop("name", None)
        weight = options.pop("weight", 1.0)
        if name not in LOSSES:
            raise InvalidValueError(f"`loss` names must be in {LOSSES}. Got {name!r}.")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight < 0:
            raise InvalidValueError(
                f"`loss` weights must be numbers >= 0. Got weight {weight!r} for {name!r}.")
        built.append((name, float(weight), _term(name, ignore_index, options, object_class)))
    return WeightedLoss(built)
